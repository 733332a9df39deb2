/**
 * db.cursor(): batches on the block's connection inside a block (in its snapshot), one pooled
 * connection held for the iteration outside, cleanup on break and on error, and statements issued
 * while a cursor is open refused instead of deadlocking.
 */
import { InvalidOptionError, TransactionManagementError, atomic } from 'pg-atomic'
import { rejection, setupHarness } from './support/harness'
import type { Harness } from './support/harness'

let h: Harness

beforeAll(async () => {
  h = await setupHarness('cursor')
  await h.admin.query('create table t (x int not null)')
  await h.admin.query('create sequence s')
})
afterAll(() => h.close())
beforeEach(async () => {
  await h.admin.query('truncate t')
  await h.admin.query('alter sequence s restart')
  h.reset()
})
afterEach(() => {
  expect(h.pool.idleCount).toBe(h.pool.totalCount)
})

const INSERT = 'insert into t (x) values ($1)'
const insert = (x: number) => h.db.query(INSERT, [x])
const checkedOut = () => h.pool.totalCount - h.pool.idleCount
/** nextval() is not transactional: another session sees how many rows the server has produced. */
const produced = async () => Number((await h.column<string>('select last_value from s'))[0])
const SEQUENCE_ROWS = "select nextval('s')::int as v from generate_series(1, 7)"
const FAILING = 'select 1/(n-3) as v from generate_series(1, 5) n'
const CURSOR_OPEN =
  "A cursor is open on this transaction's connection: read it to the end or break " +
  'out of its loop before running other statements in the same transaction.'

/** Fails fast instead of waiting for jest's timeout when `promise` never settles (a deadlock). */
function within<T>(promise: Promise<T>, ms = 5000): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const bound = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`did not settle within ${ms} ms (deadlock?)`)), ms)
  })
  return Promise.race([promise, bound]).finally(() => clearTimeout(timer))
}

describe('inside a block', () => {
  test('rows stream in batches of batchSize on the block connection', async () => {
    const seen: Array<[number, number]> = []
    await atomic(async (tx) => {
      await h.db.query('select 1')
      expect(checkedOut()).toBe(1)
      const total = h.pool.totalCount
      for await (const row of tx.cursor<{ v: number }>(SEQUENCE_ROWS, [], { batchSize: 3 })) {
        seen.push([row.v, await produced()])
        expect(checkedOut()).toBe(1)
        expect(h.pool.totalCount).toBe(total)
      }
    })
    // Each batch of 3 is produced by the server only when the previous one has been consumed.
    expect(seen).toEqual([
      [1, 3],
      [2, 3],
      [3, 3],
      [4, 6],
      [5, 6],
      [6, 6],
      [7, 7],
    ])
    expect(h.statements).toEqual(['BEGIN', 'select 1', SEQUENCE_ROWS, 'COMMIT'])
  })

  test("it reads in the block's snapshot: uncommitted rows of the block are seen", async () => {
    const rows: number[] = []
    await atomic(async () => {
      for (const x of [3, 1, 2]) await insert(x)
      expect(await h.column('select count(*)::int from t')).toEqual([0])
      for await (const row of h.db.cursor<{ x: number }>('select x from t order by x', [], { batchSize: 2 }))
        rows.push(row.x)
    })
    expect(rows).toEqual([1, 2, 3])
    expect(h.statements).toEqual(['BEGIN', INSERT, INSERT, INSERT, 'select x from t order by x', 'COMMIT'])
  })

  test('repeatable read: rows committed by others after the snapshot are not seen', async () => {
    await h.admin.query('insert into t (x) values (1)')
    const rows: number[] = []
    await atomic({ isolationLevel: 'repeatable read' }, async () => {
      await h.db.query('select 1')
      await h.admin.query('insert into t (x) values (2)')
      for await (const row of h.db.cursor<{ x: number }>('select x from t order by x', [], { batchSize: 1 }))
        rows.push(row.x)
    })
    expect(rows).toEqual([1])
  })

  test('breaking out of the loop closes the cursor and later statements work', async () => {
    for (const x of [1, 2, 3, 4, 5]) await h.admin.query(INSERT, [x])
    const rows: number[] = []
    const cursors = await atomic(async () => {
      for await (const row of h.db.cursor<{ x: number }>('select x from t order by x', [], { batchSize: 2 })) {
        rows.push(row.x)
        if (row.x === 3) break
      }
      await insert(6)
      return (await h.db.query<{ n: number }>('select count(*)::int as n from pg_cursors')).rows[0]?.n
    })
    expect(rows).toEqual([1, 2, 3])
    expect(cursors).toBe(0)
    expect(await h.column('select x from t order by x')).toEqual([1, 2, 3, 4, 5, 6])
    expect(h.statements).toEqual([
      'BEGIN',
      'select x from t order by x',
      INSERT,
      'select count(*)::int as n from pg_cursors',
      'COMMIT',
    ])
  })

  test('a cursor still open when the body returns is closed before COMMIT', async () => {
    for (const x of [1, 2, 3]) await h.admin.query(INSERT, [x])
    await atomic(async () => {
      const rows = h.db.cursor<{ x: number }>('select x from t order by x', [], { batchSize: 1 })
      const iterator = rows[Symbol.asyncIterator]()
      expect(await iterator.next()).toEqual({ done: false, value: { x: 1 } })
      expect(await rejection(insert(9))).toBeInstanceOf(TransactionManagementError)
    })
    expect(h.statements).toEqual(['BEGIN', 'select x from t order by x', 'COMMIT'])
    expect(await h.column('select x from t order by x')).toEqual([1, 2, 3])
  })

  test('iterating a cursor after its block ended is refused', async () => {
    for (const x of [1, 2, 3]) await h.admin.query(INSERT, [x])
    let iterator: AsyncIterator<{ x: number }> | undefined
    await atomic(async () => {
      iterator = h.db.cursor<{ x: number }>('select x from t order by x', [], { batchSize: 1 })[Symbol.asyncIterator]()
      expect(await iterator.next()).toEqual({ done: false, value: { x: 1 } })
    })
    h.reset()
    const error = await rejection((iterator as AsyncIterator<{ x: number }>).next())
    expect(error).toBeInstanceOf(TransactionManagementError)
    expect((error as Error).message).toMatch(/^This 'atomic' block has already ended/)
    expect(h.statements).toEqual([])
  })

  test('an error while reading dooms the block; it rolls back', async () => {
    const seen: number[] = []
    let failure: unknown
    let refused: unknown
    const error = await rejection(
      atomic(async () => {
        await insert(1)
        failure = await rejection(
          (async () => {
            for await (const row of h.db.cursor<{ v: number }>(FAILING, [], { batchSize: 1 })) seen.push(row.v)
          })(),
        )
        refused = await rejection(h.db.query('select 1'))
      }),
    )
    expect(seen).toEqual([0, -1])
    expect(failure).toMatchObject({ code: '22012', message: 'division by zero' })
    expect(refused).toBeInstanceOf(TransactionManagementError)
    expect(refused).toMatchObject({
      message:
        "An error occurred in the current transaction. You can't execute queries until the end of the 'atomic' block.",
      cause: failure,
    })
    expect(error).toBeInstanceOf(TransactionManagementError)
    expect((error as Error).cause).toBe(failure)
    expect(h.statements).toEqual(['BEGIN', INSERT, FAILING, 'ROLLBACK'])
    expect(await h.column('select count(*)::int from t')).toEqual([0])
  })

  test('an error while reading inside a nested block rolls back only that block', async () => {
    await atomic(async () => {
      await insert(1)
      const failure = await rejection(
        atomic(async () => {
          await insert(2)
          for await (const row of h.db.cursor(FAILING, [], { batchSize: 1 })) void row
        }),
      )
      expect(failure).toMatchObject({ code: '22012' })
      await insert(3)
    })
    expect(await h.column('select x from t order by x')).toEqual([1, 3])
    expect(h.statements).toEqual([
      'BEGIN',
      INSERT,
      'SAVEPOINT "pga_1"',
      INSERT,
      FAILING,
      'ROLLBACK TO SAVEPOINT "pga_1"',
      'RELEASE SAVEPOINT "pga_1"',
      INSERT,
      'COMMIT',
    ])
  })

  test(
    'a statement issued while the cursor is open is refused, not deadlocked, and ' + 'does not doom the block',
    async () => {
      for (const x of [1, 2, 3]) await h.admin.query(INSERT, [x])
      const rows: number[] = []
      await within(
        atomic(async (tx) => {
          for await (const row of h.db.cursor<{ x: number }>('select x from t order by x', [], { batchSize: 1 })) {
            rows.push(row.x)
            for (const attempt of [
              () => h.db.query('select 1'),
              () => tx.query('select 2'),
              () => h.db.pool.query('select 3'),
              () => atomic(() => h.db.query('select 4')),
              async () => {
                for await (const inner of h.db.cursor('select 5')) void inner
              },
            ]) {
              const error = await rejection(attempt())
              expect(error).toBeInstanceOf(TransactionManagementError)
              expect((error as Error).message).toBe(CURSOR_OPEN)
            }
          }
          await h.db.query(INSERT, [4])
        }),
      )
      expect(rows).toEqual([1, 2, 3])
      expect(await h.column('select x from t order by x')).toEqual([1, 2, 3, 4])
      expect(h.statements).toEqual(['BEGIN', 'select x from t order by x', INSERT, 'COMMIT'])
    },
  )

  test('transaction control in a cursor is refused', async () => {
    await atomic(async () => {
      const error = await rejection(
        (async () => {
          for await (const row of h.db.cursor('commit')) void row
        })(),
      )
      expect(error).toBeInstanceOf(TransactionManagementError)
      expect((error as Error).message).toMatch(
        /^This is forbidden when an 'atomic' block is active\. COMMIT cannot be sent/,
      )
    })
    expect(h.statements).toEqual([])
  })
})

describe('outside a block', () => {
  test('one pooled connection is held during the iteration and freed after, without BEGIN', async () => {
    for (const x of [1, 2, 3]) await h.admin.query(INSERT, [x])
    const rows: number[] = []
    expect(checkedOut()).toBe(0)
    for await (const row of h.db.cursor<{ x: number }>('select x from t order by x', [], { batchSize: 2 })) {
      rows.push(row.x)
      expect(checkedOut()).toBe(1)
    }
    expect(rows).toEqual([1, 2, 3])
    expect(checkedOut()).toBe(0)
    expect(h.statements).toEqual(['select x from t order by x'])
  })

  test('rows stream in batches', async () => {
    const seen: Array<[number, number]> = []
    for await (const row of h.db.cursor<{ v: number }>(SEQUENCE_ROWS, [], { batchSize: 4 }))
      seen.push([row.v, await produced()])
    expect(seen).toEqual([
      [1, 4],
      [2, 4],
      [3, 4],
      [4, 4],
      [5, 7],
      [6, 7],
      [7, 7],
    ])
    expect(checkedOut()).toBe(0)
  })

  test('breaking out of the loop frees the connection', async () => {
    for (const x of [1, 2, 3, 4]) await h.admin.query(INSERT, [x])
    for await (const row of h.db.cursor<{ x: number }>('select x from t order by x', [], { batchSize: 1 })) {
      expect(checkedOut()).toBe(1)
      if (row.x === 2) break
    }
    expect(checkedOut()).toBe(0)
    // The connection that was returned is clean.
    const client = await h.pool.connect()
    try {
      expect(client.getTransactionStatus()).toBe('I')
      expect((await client.query('select count(*)::int as n from pg_cursors')).rows).toEqual([{ n: 0 }])
    } finally {
      client.release()
    }
  })

  test('an error while reading rejects with the pg error and frees the connection', async () => {
    const seen: number[] = []
    const error = await rejection(
      (async () => {
        for await (const row of h.db.cursor<{ v: number }>(FAILING, [], { batchSize: 1 })) {
          seen.push(row.v)
          expect(checkedOut()).toBe(1)
        }
      })(),
    )
    expect(seen).toEqual([0, -1])
    expect(error).toMatchObject({ code: '22012', message: 'division by zero' })
    expect(checkedOut()).toBe(0)
    await expect(h.db.query('select 1 as one')).resolves.toMatchObject({ rows: [{ one: 1 }] })
  })

  test('an error thrown by the loop body frees the connection', async () => {
    for (const x of [1, 2, 3]) await h.admin.query(INSERT, [x])
    const boom = new Error('consumer failed')
    const error = await rejection(
      (async () => {
        for await (const row of h.db.cursor<{ x: number }>('select x from t order by x', [], { batchSize: 1 })) {
          if (row.x === 2) throw boom
        }
      })(),
    )
    expect(error).toBe(boom)
    expect(checkedOut()).toBe(0)
  })

  test('other statements meanwhile use another pooled connection', async () => {
    for (const x of [1, 2]) await h.admin.query(INSERT, [x])
    const rows: number[] = []
    for await (const row of h.db.cursor<{ x: number }>('select x from t order by x', [], { batchSize: 1 })) {
      await h.db.query(INSERT, [row.x * 10])
      rows.push(row.x)
    }
    expect(rows).toEqual([1, 2])
    expect(await h.column('select x from t order by x')).toEqual([1, 2, 10, 20])
    expect(checkedOut()).toBe(0)
  })

  test('transaction control and an invalid batchSize are refused before a connection is taken', () => {
    expect(() => h.db.cursor('begin')).toThrow(TransactionManagementError)
    expect(() => h.db.cursor('select 1', [], { batchSize: 0 })).toThrow(InvalidOptionError)
    expect(() => h.db.cursor('select 1', [], { batchSize: 1.5 })).toThrow(
      expect.objectContaining({ field: 'batchSize' }),
    )
    expect(checkedOut()).toBe(0)
    expect(h.statements).toEqual([])
  })
})
