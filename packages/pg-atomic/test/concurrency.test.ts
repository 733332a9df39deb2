/**
 * AsyncLocalStorage isolation and the serialization of work inside one transaction: concurrent
 * chains stay apart, late timers do not join ended blocks, Promise.all of nested blocks and of
 * queries is serialized in entry order, un-awaited work settles before the block exits.
 */
import { AsyncResource } from 'node:async_hooks'
import { EventEmitter } from 'node:events'
import vm from 'node:vm'
import { TransactionManagementError, atomic, currentTransaction, inAtomicBlock } from 'pg-atomic'
import type { TransactionHandle, TransactionInfo } from 'pg-atomic'
import { rejection, setupHarness } from './support/harness'
import type { Harness } from './support/harness'
import { Boom } from './support/errors'
import { sleep } from './support/wait'

/** jest's `process` is a copy with its own listeners; pg's DeprecationWarning goes to the real one. */
const realProcess = vm.runInThisContext('process') as NodeJS.Process

let h: Harness

beforeAll(async () => {
  h = await setupHarness('concurrency')
  await h.admin.query('create table t (x int not null)')
  await h.admin.query('create table log (id serial primary key, x int not null)')
})
afterAll(() => h.close())
beforeEach(async () => {
  await h.admin.query('truncate t; truncate log restart identity')
  h.reset()
})
afterEach(() => {
  expect(h.pool.idleCount).toBe(h.pool.totalCount)
})

const INSERT = 'insert into t (x) values ($1)'
const insert = (x: number) => h.db.query(INSERT, [x])
const visible = async () => (await h.db.query<{ x: number }>('select x from t order by x')).rows.map((r) => r.x)
const turn = () => new Promise<void>((resolve) => setImmediate(resolve))

/** Resolves once `n` callers are waiting (each call returns the shared promise). */
function barrier(n: number): () => Promise<void> {
  let arrived = 0
  let open!: () => void
  const all = new Promise<void>((resolve) => {
    open = resolve
  })
  return () => {
    if (++arrived === n) open()
    return all
  }
}

/** A gate opened by hand. */
function gate(): { wait: Promise<void>; open: () => void } {
  let open!: () => void
  const wait = new Promise<void>((resolve) => {
    open = resolve
  })
  return { wait, open }
}

/** Fails fast instead of waiting for jest's timeout when `promise` never settles (a deadlock). */
function within<T>(promise: Promise<T>, ms = 5000): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const bound = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`did not settle within ${ms} ms (deadlock?)`)), ms)
  })
  return Promise.race([promise, bound]).finally(() => clearTimeout(timer))
}

describe('two chains on one pool stay apart', () => {
  test('each sees only its own uncommitted rows, on its own connection and transaction', async () => {
    const bothInserted = barrier(2)
    const bothNested = barrier(2)
    const bothRead = barrier(2)
    const chain = (x: number) =>
      atomic(async (tx) => {
        await insert(x)
        await bothInserted()
        await atomic(async () => {
          await insert(x * 10)
          await turn()
          expect(currentTransaction()?.id).toBe(tx.id)
        })
        await bothNested()
        const seen = await visible()
        const { rows } = await h.db.query<{ txid: string; pid: number }>(
          'select txid_current()::text as txid, pg_backend_pid() as pid',
        )
        await bothRead() // neither commits (nor frees its connection) before both have read
        return { seen, id: tx.id, info: currentTransaction(), txid: rows[0]?.txid, pid: rows[0]?.pid }
      })
    const [a, b] = await Promise.all([chain(1), chain(2)])
    expect(a.seen).toEqual([1, 10])
    expect(b.seen).toEqual([2, 20])
    expect(a.info).toMatchObject({ id: a.id, depth: 1, savepointNames: [] })
    expect(b.info).toMatchObject({ id: b.id, depth: 1, savepointNames: [] })
    expect(a.id).not.toBe(b.id)
    expect(a.txid).not.toBe(b.txid)
    expect(a.pid).not.toBe(b.pid)
    expect(await h.column('select x from t order by x')).toEqual([1, 2, 10, 20])
    // The savepoint counter is per transaction: each chain's nested block is "pga_1".
    const sorted = [...h.statements].sort()
    expect(sorted.filter((s) => s === 'BEGIN')).toHaveLength(2)
    expect(sorted.filter((s) => s === 'SAVEPOINT "pga_1"')).toHaveLength(2)
    expect(sorted.filter((s) => s === 'COMMIT')).toHaveLength(2)
    expect(sorted.filter((s) => s.includes('pga_2'))).toEqual([])
  })

  test('one chain rolling back does not touch the other', async () => {
    const bothInserted = barrier(2)
    const committed = atomic(async () => {
      await insert(1)
      await bothInserted()
      await insert(2)
    })
    const failed = atomic(async () => {
      await insert(3)
      await bothInserted()
      await insert(4)
      throw new Boom('second chain')
    })
    const [ok, ko] = await Promise.allSettled([committed, failed])
    expect(ok.status).toBe('fulfilled')
    expect(ko).toMatchObject({ status: 'rejected', reason: expect.any(Boom) })
    expect(await h.column('select x from t order by x')).toEqual([1, 2])
  })

  test('four interleaved chains keep their context across timers, turns and nested blocks', async () => {
    const allInserted = barrier(4)
    const allRead = barrier(4)
    // REPEATABLE READ: under READ COMMITTED a chain released by the barrier could see the rows of
    // chains that committed before its SELECT started, which says nothing about context isolation.
    const chain = (n: number) =>
      atomic({ isolationLevel: 'repeatable read' }, async (outer) => {
        const ids: number[] = []
        for (let i = 0; i < 3; i++) {
          await atomic(async (inner) => {
            ids.push(currentTransaction()?.id ?? -1)
            expect(inner.id).toBe(outer.id)
            await insert(n * 100 + i)
            await (i % 2 === 0 ? sleep(n) : turn())
            ids.push(currentTransaction()?.id ?? -1)
            expect(currentTransaction()).toMatchObject({ depth: 2, savepointNames: [`pga_${i + 1}`] })
          })
        }
        // Read while nobody has committed yet (read committed would show committed rows of others).
        await allInserted()
        const seen = await visible()
        await allRead()
        return { id: outer.id, ids, seen }
      })
    const results = await Promise.all([1, 2, 3, 4].map(chain))
    for (const [index, r] of results.entries()) {
      const n = index + 1
      expect(r.ids).toEqual(Array(6).fill(r.id))
      expect(r.seen).toEqual([n * 100, n * 100 + 1, n * 100 + 2])
    }
    expect(new Set(results.map((r) => r.id)).size).toBe(4)
    expect(await h.column('select count(*)::int from t')).toEqual([12])
  })
})

describe('a block entered after its parent ended does not join it', () => {
  const cases: Array<[string, (after: Promise<void>, enter: () => void) => void]> = [
    [
      'a setTimeout callback',
      (after, enter) => {
        setTimeout(() => void after.then(enter), 0)
      },
    ],
    [
      'an event handler bound to the block context',
      (after, enter) => {
        const emitter = new EventEmitter()
        emitter.on(
          'done',
          AsyncResource.bind(() => void after.then(enter)),
        )
        setImmediate(() => emitter.emit('done'))
      },
    ],
  ]

  describe.each(cases)('from %s', (_label, schedule) => {
    test.each([
      ['committed', false],
      ['rolled back', true],
    ])(
      'after the parent %s: a new outermost transaction with its own BEGIN and COMMIT',
      async (_state, parentFails) => {
        const parentEnded = gate()
        let parentId = 0
        let child:
          | Promise<{ id: number; depth: number; savepointName: string | undefined; info: TransactionInfo | undefined }>
          | undefined
        const parent = atomic(async (tx) => {
          parentId = tx.id
          await insert(1)
          child = new Promise((resolve, reject) => {
            schedule(parentEnded.wait, () => {
              atomic(async (inner) => {
                await insert(2)
                return {
                  id: inner.id,
                  depth: inner.depth,
                  savepointName: inner.savepointName,
                  info: currentTransaction(),
                }
              }).then(resolve, reject)
            })
          })
          if (parentFails) throw new Boom('parent')
        })
        if (parentFails) await expect(parent).rejects.toThrow(Boom)
        else await parent
        parentEnded.open()
        const result = await (child as NonNullable<typeof child>)
        expect(result.depth).toBe(1)
        expect(result.savepointName).toBeUndefined()
        expect(result.id).not.toBe(parentId)
        expect(result.info).toMatchObject({ id: result.id, depth: 1, savepointNames: [] })
        expect(h.statements).toEqual(['BEGIN', INSERT, parentFails ? 'ROLLBACK' : 'COMMIT', 'BEGIN', INSERT, 'COMMIT'])
        expect(await h.column('select x from t order by x')).toEqual(parentFails ? [2] : [1, 2])
      },
    )
  })

  test('inAtomicBlock() is false in a late callback of an ended block', async () => {
    const ended = gate()
    let late: Promise<[boolean, TransactionInfo | undefined]> | undefined
    await atomic(async () => {
      late = new Promise((resolve) => {
        setTimeout(() => void ended.wait.then(() => resolve([inAtomicBlock(), currentTransaction()])), 0)
      })
    })
    ended.open()
    expect(await late).toEqual([false, undefined])
  })
})

describe('Promise.all inside a block', () => {
  test('sibling nested blocks run one after another in entry order; a failing one keeps the others', async () => {
    const events: string[] = []
    await atomic(async () => {
      await insert(0)
      const results = await Promise.allSettled([
        atomic(async () => {
          events.push('A start')
          await insert(1)
          await sleep(10) // B must not enter meanwhile
          await insert(11)
          events.push('A end')
          return 'a'
        }),
        atomic(async () => {
          events.push('B start')
          await insert(2)
          await h.db.query('select 1/0')
          events.push('B end')
        }),
        atomic(async () => {
          events.push('C start')
          await insert(3)
          events.push('C end')
          return 'c'
        }),
      ])
      expect(results).toEqual([
        { status: 'fulfilled', value: 'a' },
        { status: 'rejected', reason: expect.objectContaining({ code: '22012' }) },
        { status: 'fulfilled', value: 'c' },
      ])
      expect(await visible()).toEqual([0, 1, 3, 11])
    })
    expect(events).toEqual(['A start', 'A end', 'B start', 'C start', 'C end'])
    expect(await h.column('select x from t order by x')).toEqual([0, 1, 3, 11])
    expect(h.statements).toEqual([
      'BEGIN',
      INSERT,
      'SAVEPOINT "pga_1"',
      INSERT,
      INSERT,
      'RELEASE SAVEPOINT "pga_1"',
      'SAVEPOINT "pga_2"',
      INSERT,
      'select 1/0',
      'ROLLBACK TO SAVEPOINT "pga_2"',
      'RELEASE SAVEPOINT "pga_2"',
      'SAVEPOINT "pga_3"',
      INSERT,
      'select x from t order by x',
      'COMMIT',
    ])
  })

  test(
    'when Promise.all rejects early, the remaining siblings still run before the ' + 'next statement and the COMMIT',
    async () => {
      const boom = new Boom('B')
      await atomic(async () => {
        const all = Promise.all([
          atomic(() => insert(1)),
          atomic(async () => {
            await insert(2)
            throw boom
          }),
          atomic(() => insert(3)),
        ])
        await expect(all).rejects.toBe(boom)
        await insert(4)
      })
      expect(await h.column('select x from t order by x')).toEqual([1, 3, 4])
      expect(h.statements).toEqual([
        'BEGIN',
        'SAVEPOINT "pga_1"',
        INSERT,
        'RELEASE SAVEPOINT "pga_1"',
        'SAVEPOINT "pga_2"',
        INSERT,
        'ROLLBACK TO SAVEPOINT "pga_2"',
        'RELEASE SAVEPOINT "pga_2"',
        'SAVEPOINT "pga_3"',
        INSERT,
        // Sibling C ran before insert(4), which was queued after it.
        INSERT,
        'COMMIT',
      ])
    },
  )

  test('plain queries keep their order and pg never sees concurrent client.query calls', async () => {
    const warnings: Error[] = []
    const onWarning = (warning: Error) => warnings.push(warning)
    realProcess.on('warning', onWarning)
    try {
      const ids = await atomic(async (tx) => {
        const results = await Promise.all(
          Array.from({ length: 8 }, (_unused, i) =>
            // Three ways to reach the block's connection, interleaved.
            i % 3 === 0
              ? h.db.query<{ id: number }>(`insert into log (x) values (${i}) returning id`)
              : i % 3 === 1
                ? tx.query<{ id: number }>(`insert into log (x) values (${i}) returning id`)
                : (h.db.pool.query(`insert into log (x) values (${i}) returning id`) as Promise<{
                    rows: Array<{ id: number }>
                  }>),
          ),
        )
        return results.map((r) => r.rows[0]?.id)
      })
      expect(ids).toEqual([1, 2, 3, 4, 5, 6, 7, 8])
      expect(h.statements).toEqual([
        'BEGIN',
        ...Array.from({ length: 8 }, (_unused, i) => `insert into log (x) values (${i}) returning id`),
        'COMMIT',
      ])
      await turn()
      expect(warnings.map((w) => `${w.name}: ${w.message}`)).toEqual([])
    } finally {
      realProcess.off('warning', onWarning)
    }
  })

  test('a nested block among plain queries is serialized in entry order too', async () => {
    await atomic(async () => {
      await Promise.all([h.db.query('select 1'), atomic(() => h.db.query('select 2')), h.db.query('select 3')])
    })
    // RELEASE of the nested block is deferred, then dropped by COMMIT.
    expect(h.statements).toEqual(['BEGIN', 'select 1', 'SAVEPOINT "pga_1"', 'select 2', 'select 3', 'COMMIT'])
  })
})

describe('the enclosing block while a nested block runs', () => {
  test(
    'a query of the enclosing block issued while a nested block runs waits until the ' + 'nested block ends',
    async () => {
      const events: string[] = []
      await atomic(async () => {
        await insert(0)
        const nested = atomic(async () => {
          await insert(1)
          await sleep(10)
          await insert(2)
          events.push('nested end')
        })
        // Issued from the enclosing block's context while the nested block holds the connection.
        const outer = insert(3).then(() => events.push('outer query done'))
        await Promise.all([nested, outer])
      })
      expect(events).toEqual(['nested end', 'outer query done'])
      expect(h.statements).toEqual(['BEGIN', INSERT, 'SAVEPOINT "pga_1"', INSERT, INSERT, INSERT, 'COMMIT'])
      expect(await h.column('select x from t order by x')).toEqual([0, 1, 2, 3])
    },
  )

  test('a query of the enclosing block queued behind a failed nested block is not rolled back with it', async () => {
    const boom = new Boom('nested')
    await atomic(async () => {
      await insert(0)
      const nested = atomic(async () => {
        await insert(1)
        throw boom
      })
      const outer = insert(3)
      await expect(nested).rejects.toBe(boom)
      await outer
    })
    expect(await h.column('select x from t order by x')).toEqual([0, 3])
    expect(h.statements).toEqual([
      'BEGIN',
      INSERT,
      'SAVEPOINT "pga_1"',
      INSERT,
      'ROLLBACK TO SAVEPOINT "pga_1"',
      'RELEASE SAVEPOINT "pga_1"',
      INSERT,
      'COMMIT',
    ])
  })

  test('the outer handle used inside a nested block runs in the nested block (no deadlock)', async () => {
    const boom = new Boom('nested')
    await within(
      atomic(async (outer: TransactionHandle) => {
        await outer.query(INSERT, [1])
        await expect(
          atomic(async () => {
            await outer.query(INSERT, [2])
            expect((await outer.query<{ x: number }>('select x from t order by x')).rows).toEqual([{ x: 1 }, { x: 2 }])
            throw boom
          }),
        ).rejects.toBe(boom)
        await atomic(async () => {
          await outer.query(INSERT, [3])
        })
      }),
    )
    // Row 2 went away with the nested block's savepoint: it ran inside that block.
    expect(await h.column('select x from t order by x')).toEqual([1, 3])
    expect(h.statements).toEqual([
      'BEGIN',
      INSERT,
      'SAVEPOINT "pga_1"',
      INSERT,
      'select x from t order by x',
      'ROLLBACK TO SAVEPOINT "pga_1"',
      'RELEASE SAVEPOINT "pga_1"',
      'SAVEPOINT "pga_2"',
      INSERT,
      'COMMIT',
    ])
  })
})

describe('un-awaited work at the end of the body', () => {
  test('an un-awaited query is settled before COMMIT', async () => {
    let pending: Promise<unknown> | undefined
    await atomic(async () => {
      await insert(1)
      pending = insert(2)
    })
    await expect(pending).resolves.toMatchObject({ rowCount: 1 })
    expect(h.statements).toEqual(['BEGIN', INSERT, INSERT, 'COMMIT'])
    expect(await h.column('select x from t order by x')).toEqual([1, 2])
  })

  test('a synchronous body that only starts queries commits them', async () => {
    let pending: Array<Promise<unknown>> = []
    await atomic(() => {
      pending = [insert(1), insert(2)]
    })
    await expect(Promise.all(pending)).resolves.toHaveLength(2)
    expect(h.statements).toEqual(['BEGIN', INSERT, INSERT, 'COMMIT'])
    expect(await h.column('select x from t order by x')).toEqual([1, 2])
  })

  test('an un-awaited nested block is settled before COMMIT', async () => {
    let nested: Promise<unknown> | undefined
    await atomic(async () => {
      await insert(1)
      nested = atomic(() => insert(2))
    })
    await expect(nested).resolves.toMatchObject({ rowCount: 1 })
    expect(h.statements).toEqual(['BEGIN', INSERT, 'SAVEPOINT "pga_1"', INSERT, 'COMMIT'])
  })

  test(
    'an un-awaited failing query rolls the block back; it rejects with ' +
      'TransactionManagementError (cause = pg error)',
    async () => {
      let failed: Promise<unknown> | undefined
      const error = await rejection(
        atomic(async () => {
          await insert(1)
          failed = rejection(h.db.query('select 1/0'))
        }),
      )
      const pgError = await failed
      expect(pgError).toMatchObject({ code: '22012' })
      expect(error).toBeInstanceOf(TransactionManagementError)
      expect((error as Error).message).toMatch(
        new RegExp(
          "^The 'atomic' block finished normally, but an error inside it was caught and not re-raised, " +
            'so its work was rolled back\\.',
        ),
      )
      expect((error as Error).cause).toBe(pgError)
      expect(h.statements).toEqual(['BEGIN', INSERT, 'select 1/0', 'ROLLBACK'])
      expect(await h.column('select count(*)::int from t')).toEqual([0])
    },
  )
})

describe('inAtomicBlock() and currentTransaction()', () => {
  test('outside any block', () => {
    expect(inAtomicBlock()).toBe(false)
    expect(currentTransaction()).toBeUndefined()
    expect(h.db.inAtomicBlock()).toBe(false)
    expect(h.db.currentTransaction()).toBeUndefined()
    expect(inAtomicBlock({ using: 'no-such-alias' })).toBe(false)
    expect(currentTransaction({ using: 'no-such-alias' })).toBeUndefined()
  })

  test('depth, savepoint names, isolation, id, name, begun and rollback, level by level', async () => {
    const seen: Record<string, TransactionInfo | undefined> = {}
    let id = 0
    await atomic({ isolationLevel: 'repeatable read', readOnly: false, name: 'outer' }, async (tx) => {
      id = tx.id
      expect(inAtomicBlock()).toBe(true)
      expect(h.db.inAtomicBlock()).toBe(true)
      seen['outer before query'] = currentTransaction()
      await h.db.query('select 1')
      seen['outer after query'] = h.db.currentTransaction()
      await atomic({ name: 'second' }, async () => {
        seen['second'] = currentTransaction()
        await atomic({ savepoint: false }, async () => {
          seen['merged'] = currentTransaction()
          await atomic({ isolationLevel: 'repeatable read' }, async (inner) => {
            seen['fourth'] = currentTransaction()
            expect(inner).toMatchObject({
              depth: 4,
              savepointName: 'pga_2',
              isolationLevel: 'repeatable read',
              id: tx.id,
            })
          })
        })
        await atomic(async (tx3) => {
          tx3.setRollback(true)
          seen['doomed'] = currentTransaction()
        })
      })
      seen['outer again'] = currentTransaction()
    })
    const common = {
      id,
      database: 'default',
      isolationLevel: 'repeatable read',
      readOnly: false,
      deferrable: undefined,
    }
    expect(seen).toEqual({
      'outer before query': { ...common, depth: 1, savepointNames: [], begun: false, rollback: false, name: 'outer' },
      'outer after query': { ...common, depth: 1, savepointNames: [], begun: true, rollback: false, name: 'outer' },
      second: { ...common, depth: 2, savepointNames: ['pga_1'], begun: true, rollback: false, name: 'second' },
      merged: { ...common, depth: 3, savepointNames: ['pga_1'], begun: true, rollback: false, name: undefined },
      fourth: {
        ...common,
        depth: 4,
        savepointNames: ['pga_1', 'pga_2'],
        begun: true,
        rollback: false,
        name: undefined,
      },
      doomed: { ...common, depth: 3, savepointNames: ['pga_1', 'pga_3'], begun: true, rollback: true, name: undefined },
      'outer again': { ...common, depth: 1, savepointNames: [], begun: true, rollback: false, name: 'outer' },
    })
    expect(Object.isFrozen(seen['second'])).toBe(true)
    expect(inAtomicBlock()).toBe(false)
  })

  test('ids are unique per transaction and shared by its nested blocks', async () => {
    const ids: number[] = []
    await atomic(async (tx) => {
      ids.push(tx.id)
      await atomic(async (inner) => {
        ids.push(inner.id, currentTransaction()?.id ?? -1)
      })
    })
    await atomic(async (tx) => {
      ids.push(tx.id)
    })
    expect(ids[0]).toBe(ids[1])
    expect(ids[1]).toBe(ids[2])
    expect(ids[3]).not.toBe(ids[0])
  })
})

describe('the DeprecationWarning listener works (control)', () => {
  // Runs last: pg warns once per process load, so this control consumes the warning.
  test('three concurrent client.query calls on one raw client do emit it', async () => {
    const warnings: Error[] = []
    const onWarning = (warning: Error) => warnings.push(warning)
    realProcess.on('warning', onWarning)
    const client = await h.pool.connect()
    try {
      await Promise.all([client.query('select 1'), client.query('select 2'), client.query('select 3')])
      await turn()
    } finally {
      client.release()
      realProcess.off('warning', onWarning)
    }
    expect(warnings.map((w) => w.name)).toEqual(['DeprecationWarning'])
    expect(warnings[0]?.message).toMatch(
      /^Calling client\.query\(\) when the client is already executing a query is deprecated/,
    )
  })
})
