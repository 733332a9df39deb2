/**
 * The deliberate differences from Django (issue 2 §3: 1 doom on any query error, 2 no silent loss,
 * 3 COMMIT answered with ROLLBACK / COMMIT errors; 4 and 5 are in hooks.test.ts), PostgreSQL errors
 * rethrown untouched, the SQLSTATE helpers on real errors, and transaction control refused inside a block.
 */
import pg from 'pg'
import {
  AtomicError,
  TransactionManagementError,
  atomic,
  getRollback,
  isDeadlock,
  isLockNotAvailable,
  isRetryable,
  isSerializationFailure,
  onCommit,
  onRollback,
  setRollback,
} from 'pg-atomic'
import type { TransactionHandle } from 'pg-atomic'
import { rejection, setupHarness } from './support/harness'
import type { Harness } from './support/harness'
import { parseBuilderControl } from '../src/sql/builder-control'

let h: Harness
let superuser = false

beforeAll(async () => {
  h = await setupHarness('differences')
  await h.admin.query(`
    create table t (x int not null);
    create table notes (s text not null);
    create table u (id int constraint u_pkey primary key, email text);
    create table parent (id int primary key);
    create table child (
      id int primary key,
      parent_id int constraint child_parent_fk references parent (id) deferrable initially deferred
    );
    create table acct (id int primary key, v int not null);
  `)
  superuser = (await h.column<boolean>('select rolsuper from pg_roles where rolname = current_user'))[0] === true
})
afterAll(() => h.close())
beforeEach(async () => {
  await h.admin.query('truncate t, notes, u, child, parent, acct; insert into acct values (1, 0), (2, 0)')
  h.reset()
})

const DOOMED =
  "An error occurred in the current transaction. You can't execute queries until the end of the 'atomic' block."
const FORBIDDEN = "This is forbidden when an 'atomic' block is active."
const FLAG_OUTSIDE = "The rollback flag doesn't work outside of an 'atomic' block."
const SWALLOWED = new RegExp(
  "^The 'atomic' block finished normally, but an error inside it was caught and not re-raised, " +
    'so its work was rolled back\\.',
)
const INSERT = 'insert into t (x) values ($1)'
const insert = (x: number) => h.db.query(INSERT, [x])
const committed = () => h.column<number>('select x from t order by x')

function expectDoomed(error: unknown, cause: unknown): void {
  expect(error).toBeInstanceOf(TransactionManagementError)
  expect(error).toMatchObject({ name: 'TransactionManagementError', message: DOOMED })
  expect((error as Error).cause).toBe(cause)
  expect((error as { code?: unknown }).code).toBeUndefined()
}

function expectSwallowed(error: unknown, cause: unknown): void {
  expect(error).toBeInstanceOf(TransactionManagementError)
  expect((error as Error).message).toMatch(SWALLOWED)
  expect((error as Error).cause).toBe(cause)
}

async function idleInTransaction(): Promise<number> {
  const [n] = await h.column<number>(
    "select count(*)::int from pg_stat_activity where application_name = $1 and state like 'idle in transaction%'",
    [h.testDb.applicationName],
  )
  return n ?? -1
}

function expectPoolIdle(): void {
  expect(h.pool.waitingCount).toBe(0)
  expect(h.pool.idleCount).toBe(h.pool.totalCount)
}

/** Polls until backend `pid` waits for a lock (bounded). */
async function waitUntilLockWait(pid: number): Promise<void> {
  for (let i = 0; i < 250; i++) {
    const [type] = await h.column<string | null>('select wait_event_type from pg_stat_activity where pid = $1', [pid])
    if (type === 'Lock') return
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
  throw new Error(`backend ${pid} did not start waiting for a lock within 5 s`)
}

describe('difference 1: any query error dooms the block', () => {
  test(
    "the next query gets TransactionManagementError (Django's message, cause = the " +
      'real error), not 25P02, and is not sent',
    async () => {
      let divisionError: unknown
      let refused: unknown
      const error = await rejection(
        atomic(async () => {
          await insert(1)
          divisionError = await rejection(h.db.query('select 1/0'))
          refused = await rejection(insert(2))
        }),
      )
      expect(divisionError).toBeInstanceOf(pg.DatabaseError)
      expect(divisionError).toMatchObject({ code: '22012', message: 'division by zero' })
      expectDoomed(refused, divisionError)
      // The block then rolls back and says why (difference 2).
      expectSwallowed(error, divisionError)
      expect(h.statements).toEqual(['BEGIN', INSERT, 'select 1/0', 'ROLLBACK'])
      expect(await committed()).toEqual([])
    },
  )

  test("plain node-postgres, for contrast, gets PostgreSQL's 25P02 for the next statement", async () => {
    const client = await h.admin.connect()
    try {
      await client.query('begin')
      await expect(client.query('select 1/0')).rejects.toMatchObject({ code: '22012' })
      await expect(client.query('select 1')).rejects.toMatchObject({ code: '25P02' })
    } finally {
      await client.query('rollback')
      client.release()
    }
  })

  test(
    'every route to the connection is refused once doomed: tx.query, db.query, ' +
      'db.pool.query, a db.pool client, db.cursor',
    async () => {
      const refusals: unknown[] = []
      let cause: unknown
      await rejection(
        atomic(async (tx) => {
          cause = await rejection(tx.query('select 1/0'))
          refusals.push(await rejection(tx.query('select 1')))
          refusals.push(await rejection(h.db.query('select 1')))
          refusals.push(await rejection(h.db.pool.query('select 1')))
          const client = await h.db.pool.connect()
          try {
            refusals.push(await rejection(client.query('select 1')))
          } finally {
            client.release()
          }
          refusals.push(
            await rejection(
              (async () => {
                for await (const row of h.db.cursor('select 1')) void row
              })(),
            ),
          )
        }),
      )
      expect(cause).toMatchObject({ code: '22012' })
      expect(refusals).toHaveLength(5)
      for (const refusal of refusals) expectDoomed(refusal, cause)
      expect(h.statements).toEqual(['BEGIN', 'select 1/0', 'ROLLBACK'])
    },
  )

  test('getRollback() is true after a query error; blocks entered while doomed get no savepoint', async () => {
    const error = await rejection(
      atomic(async () => {
        expect(getRollback()).toBe(false)
        await expect(h.db.query('select 1/0')).rejects.toMatchObject({ code: '22012' })
        expect(getRollback()).toBe(true)
        const nested = await rejection(
          atomic(async (tx) => {
            expect(tx.savepointName).toBeUndefined()
            await h.db.query('select 1')
          }),
        )
        expect(nested).toBeInstanceOf(TransactionManagementError)
        expect((nested as Error).message).toBe(DOOMED)
      }),
    )
    expect(error).toBeInstanceOf(TransactionManagementError)
    expect(h.statements).toEqual(['BEGIN', 'select 1/0', 'ROLLBACK'])
  })

  test('an error caught by PL/pgSQL inside a DO block does not abort the transaction: the block commits', async () => {
    await atomic(async () => {
      await insert(1)
      await h.db.query('do $$ begin perform 1/0; exception when division_by_zero then null; end $$')
      expect(getRollback()).toBe(false)
      await insert(2)
    })
    expect(await committed()).toEqual([1, 2])
  })
})

describe('difference 2: no silent loss', () => {
  test(
    'outermost block: a swallowed query error rolls back and rejects with ' +
      'TransactionManagementError (cause = that error)',
    async () => {
      const log: string[] = []
      let swallowed: unknown
      const error = await rejection(
        atomic(async () => {
          onCommit(() => log.push('commit'))
          onRollback(() => log.push('rollback'))
          await insert(1)
          try {
            await h.db.query('insert into u (id) values (1), (1)')
          } catch (e) {
            swallowed = e
          }
          return 'never returned'
        }),
      )
      expect(swallowed).toMatchObject({ code: '23505' })
      expectSwallowed(error, swallowed)
      expect(log).toEqual(['rollback'])
      expect(await committed()).toEqual([])
      expect(h.statements).toEqual(['BEGIN', INSERT, 'insert into u (id) values (1), (1)', 'ROLLBACK'])
      expectPoolIdle()
    },
  )

  test('nested savepoint: the inner block rejects, the outer block catches it and commits its own work', async () => {
    let swallowed: unknown
    await atomic(async () => {
      await insert(1)
      const error = await rejection(
        atomic(async () => {
          await insert(2)
          swallowed = await rejection(h.db.query('select 1/0'))
          expectDoomed(await rejection(insert(3)), swallowed)
        }),
      )
      expectSwallowed(error, swallowed)
      expect(getRollback()).toBe(false)
      await insert(4)
    })
    expect(swallowed).toMatchObject({ code: '22012' })
    expect(await committed()).toEqual([1, 4])
    expect(h.statements).toEqual([
      'BEGIN',
      INSERT,
      'SAVEPOINT "pga_1"',
      INSERT,
      'select 1/0',
      'ROLLBACK TO SAVEPOINT "pga_1"',
      'RELEASE SAVEPOINT "pga_1"',
      INSERT,
      'COMMIT',
    ])
  })

  test('nested savepoint with nothing after it: ROLLBACK TO, RELEASE and COMMIT share one round trip', async () => {
    let swallowed: unknown
    await atomic(async () => {
      await insert(1)
      const error = await rejection(
        atomic(async () => {
          swallowed = await rejection(h.db.query('select 1/0'))
        }),
      )
      expectSwallowed(error, swallowed)
    })
    expect(await committed()).toEqual([1])
    expect(h.statements).toEqual([
      'BEGIN',
      INSERT,
      'SAVEPOINT "pga_1"',
      'select 1/0',
      'ROLLBACK TO SAVEPOINT "pga_1"; RELEASE SAVEPOINT "pga_1"; COMMIT',
    ])
  })

  test('setRollback(true) is a silent rollback: the value is returned', async () => {
    const value = await atomic(async () => {
      await insert(1)
      setRollback(true)
      expect(getRollback()).toBe(true)
      return 'value'
    })
    expect(value).toBe('value')
    expect(await committed()).toEqual([])
    expect(h.statements).toEqual(['BEGIN', INSERT, 'ROLLBACK'])
  })

  test('setRollback(true) in a nested block rolls back only its savepoint, silently', async () => {
    await atomic(async () => {
      await insert(1)
      await expect(
        atomic(async () => {
          await insert(2)
          setRollback(true)
          return 'inner value'
        }),
      ).resolves.toBe('inner value')
      expect(getRollback()).toBe(false)
    })
    expect(await committed()).toEqual([1])
    expect(h.statements).toEqual([
      'BEGIN',
      INSERT,
      'SAVEPOINT "pga_1"',
      INSERT,
      'ROLLBACK TO SAVEPOINT "pga_1"; RELEASE SAVEPOINT "pga_1"; COMMIT',
    ])
  })

  test('setRollback(false) after setRollback(true) commits', async () => {
    await atomic(async () => {
      await insert(1)
      setRollback(true)
      setRollback(false)
      expect(getRollback()).toBe(false)
      await insert(2)
    })
    expect(await committed()).toEqual([1, 2])
    expect(h.statements).toEqual(['BEGIN', INSERT, INSERT, 'COMMIT'])
  })

  test('setRollback(true) after a swallowed error makes the rollback intentional and silent', async () => {
    const value = await atomic(async () => {
      await insert(1)
      await expect(h.db.query('select 1/0')).rejects.toMatchObject({ code: '22012' })
      setRollback(true)
      return 'value'
    })
    expect(value).toBe('value')
    expect(await committed()).toEqual([])
  })

  test.each([
    ['getRollback()', () => getRollback()],
    ['setRollback(true)', () => setRollback(true)],
    ['setRollback(false)', () => setRollback(false)],
  ])('%s outside a block: TransactionManagementError', (_label, call) => {
    let error: unknown
    try {
      call()
    } catch (e) {
      error = e
    }
    expect(error).toBeInstanceOf(TransactionManagementError)
    expect(error).toMatchObject({ name: 'TransactionManagementError', message: FLAG_OUTSIDE })
    expect(h.statements).toEqual([])
  })

  test('getRollback() inside an onCommit hook (outside the transaction) is refused', async () => {
    let error: unknown
    await atomic(async () => {
      await insert(1)
      onCommit(() => {
        try {
          getRollback()
        } catch (e) {
          error = e
        }
      })
    })
    expect(error).toBeInstanceOf(TransactionManagementError)
    expect((error as Error).message).toBe(FLAG_OUTSIDE)
  })
})

describe('difference 3: a COMMIT that does not commit is a failure', () => {
  test(
    'COMMIT answered with ROLLBACK (setRollback(false) after a query error) rejects; ' + 'nothing is committed',
    async () => {
      const log: string[] = []
      const error = await rejection(
        atomic(async () => {
          onCommit(() => log.push('commit'))
          onRollback(() => log.push('rollback'))
          await insert(1)
          await expect(h.db.query('select 1/0')).rejects.toMatchObject({ code: '22012' })
          // Wrongly cancels the doom: PostgreSQL still has the transaction aborted and answers COMMIT with ROLLBACK.
          setRollback(false)
          return 'not committed'
        }),
      )
      expect(error).toBeInstanceOf(TransactionManagementError)
      expect((error as Error).message).toMatch(/^COMMIT was answered with ROLLBACK/)
      expect(log).toEqual(['rollback'])
      expect(await committed()).toEqual([])
      expect(h.statements).toEqual(['BEGIN', INSERT, 'select 1/0', 'COMMIT'])
      expectPoolIdle()
      expect(await idleInTransaction()).toBe(0)
      await atomic(() => insert(2))
      expect(await committed()).toEqual([2])
    },
  )

  test(
    'a deferred foreign key violated at COMMIT: atomic() rejects with the pg error ' +
      'itself, hooks follow the rollback, the connection is clean',
    async () => {
      const log: string[] = []
      const error = await rejection(
        atomic(async () => {
          onCommit(() => log.push('commit'))
          onRollback(() => log.push('rollback'))
          await h.db.query('insert into child (id, parent_id) values (1, 42)')
          await atomic(async () => {
            onRollback(() => log.push('nested rollback'))
            await h.db.query('insert into child (id, parent_id) values (2, 43)')
          })
          return 'not committed'
        }),
      )
      expect(error).toBeInstanceOf(pg.DatabaseError)
      expect(error).not.toBeInstanceOf(AtomicError)
      expect(error).toMatchObject({
        code: '23503',
        constraint: 'child_parent_fk',
        table: 'child',
        detail: 'Key (parent_id)=(42) is not present in table "parent".',
      })
      expect(log).toEqual(['rollback', 'nested rollback'])
      // A failed COMMIT has already ended the transaction on the server: no ROLLBACK is needed after it.
      expect(h.statements).toEqual([
        'BEGIN',
        'insert into child (id, parent_id) values (1, 42)',
        'SAVEPOINT "pga_1"',
        'insert into child (id, parent_id) values (2, 43)',
        'COMMIT',
      ])
      expect(await h.column('select id from child')).toEqual([])
      expectPoolIdle()
      expect(await idleInTransaction()).toBe(0)
      // A following block works (on the same pooled connection).
      h.reset()
      await atomic(async () => {
        await h.db.query('insert into parent (id) values (42)')
        await h.db.query('insert into child (id, parent_id) values (1, 42)')
      })
      expect(h.statements).toEqual([
        'BEGIN',
        'insert into parent (id) values (42)',
        'insert into child (id, parent_id) values (1, 42)',
        'COMMIT',
      ])
      expect(await h.column('select id from child')).toEqual([1])
    },
  )
})

describe('PostgreSQL errors from user queries are rethrown untouched', () => {
  test('a unique violation comes out of atomic() as the same pg DatabaseError with its fields', async () => {
    let queryError: unknown
    const error = await rejection(
      atomic(async () => {
        await h.db.query("insert into u (id, email) values (1, 'a@example.com')")
        try {
          await h.db.query("insert into u (id, email) values (1, 'b@example.com')")
        } catch (e) {
          queryError = e
          throw e
        }
      }),
    )
    expect(error).toBe(queryError)
    expect(error).toBeInstanceOf(pg.DatabaseError)
    expect(error).not.toBeInstanceOf(AtomicError)
    expect(error).toMatchObject({
      code: '23505',
      constraint: 'u_pkey',
      table: 'u',
      schema: 'public',
      detail: 'Key (id)=(1) already exists.',
      message: 'duplicate key value violates unique constraint "u_pkey"',
    })
    expect(await h.column('select id from u')).toEqual([])
  })

  test('the same object comes out of a nested block, and the outer block can catch it and commit', async () => {
    let queryError: unknown
    await atomic(async () => {
      await h.db.query('insert into u (id) values (1)')
      const error = await rejection(
        atomic(async () => {
          await h.db.query('insert into u (id) values (1)').catch((e: unknown) => {
            queryError = e
            throw e
          })
        }),
      )
      expect(error).toBe(queryError)
      await h.db.query('insert into u (id) values (2)')
    })
    expect(queryError).toMatchObject({ code: '23505', constraint: 'u_pkey' })
    expect(await h.column('select id from u order by id')).toEqual([1, 2])
  })

  test('the same object comes out of an uncaught query error (no wrapping at exit)', async () => {
    const seen: unknown[] = []
    const error = await rejection(
      atomic(async (tx: TransactionHandle) => {
        const p = tx.query('select * from no_such_table')
        p.then(undefined, (e: unknown) => seen.push(e))
        await p
      }),
    )
    expect(seen).toHaveLength(1)
    expect(error).toBe(seen[0])
    expect(error).toMatchObject({ code: '42P01', message: 'relation "no_such_table" does not exist' })
  })
})

describe('SQLSTATE helpers on real errors', () => {
  function classify(error: unknown) {
    return {
      serialization: isSerializationFailure(error),
      deadlock: isDeadlock(error),
      lockNotAvailable: isLockNotAvailable(error),
      retryable: isRetryable(error),
    }
  }

  test('55P03 from NOWAIT while another session holds the lock', async () => {
    const other = await h.admin.connect()
    try {
      await other.query('begin')
      await other.query('lock table acct in access exclusive mode')
      const error = await rejection(atomic(() => h.db.query('lock table acct in access exclusive mode nowait')))
      expect(error).toBeInstanceOf(pg.DatabaseError)
      expect(error).toMatchObject({ code: '55P03' })
      expect(classify(error)).toEqual({
        serialization: false,
        deadlock: false,
        lockNotAvailable: true,
        retryable: false,
      })
    } finally {
      await other.query('rollback')
      other.release()
    }
    expectPoolIdle()
  })

  test('55P03 from the lockTimeout option', async () => {
    const other = await h.admin.connect()
    try {
      await other.query('begin')
      await other.query('select v from acct where id = 1 for update')
      const error = await rejection(
        atomic({ lockTimeout: 100 }, () => h.db.query('select v from acct where id = 1 for update')),
      )
      expect(error).toMatchObject({ code: '55P03', message: 'canceling statement due to lock timeout' })
      expect(classify(error)).toEqual({
        serialization: false,
        deadlock: false,
        lockNotAvailable: true,
        retryable: false,
      })
      expect(h.statements).toEqual([
        'BEGIN',
        'SET LOCAL lock_timeout = 100',
        'select v from acct where id = 1 for update',
        'ROLLBACK',
      ])
    } finally {
      await other.query('rollback')
      other.release()
    }
  })

  test('40001 from two REPEATABLE READ transactions updating the same row', async () => {
    let signalRead!: () => void
    const firstRead = new Promise<void>((resolve) => {
      signalRead = resolve
    })
    const secondDone = (async () => {
      await firstRead
      await atomic({ isolationLevel: 'repeatable read' }, async () => {
        await h.db.query('update acct set v = v + 10 where id = 1')
      })
    })()
    const first = atomic({ isolationLevel: 'repeatable read' }, async () => {
      await h.db.query('select v from acct where id = 1') // takes the snapshot
      signalRead()
      await secondDone
      await h.db.query('update acct set v = v + 1 where id = 1')
    })
    const error = await rejection(first)
    await secondDone
    expect(error).toBeInstanceOf(pg.DatabaseError)
    expect(error).toMatchObject({ code: '40001', message: 'could not serialize access due to concurrent update' })
    expect(classify(error)).toEqual({ serialization: true, deadlock: false, lockNotAvailable: false, retryable: true })
    expect(await h.column('select v from acct where id = 1')).toEqual([10])
  })

  test('40P01 from two transactions locking two rows in opposite order', async () => {
    const other = await h.admin.connect()
    let otherOutcome: Promise<unknown> | undefined
    try {
      await other.query('begin')
      // Bounded: the other session gives up after 5 s and never runs the deadlock check first.
      await other.query("set local lock_timeout = '5s'")
      if (superuser) await other.query("set local deadlock_timeout = '10s'")
      await other.query('select v from acct where id = 1 for update')
      const [pid] = (await other.query<{ pid: number }>('select pg_backend_pid() as pid')).rows.map((r) => r.pid)
      const error = await rejection(
        atomic({ lockTimeout: 5000 }, async () => {
          if (superuser) await h.db.query("set local deadlock_timeout = '100ms'")
          await h.db.query('select v from acct where id = 2 for update')
          otherOutcome = other.query('select v from acct where id = 2 for update').then(
            () => 'locked',
            (e: unknown) => e,
          )
          await waitUntilLockWait(pid as number)
          await h.db.query('select v from acct where id = 1 for update')
        }),
      )
      expect(error).toBeInstanceOf(pg.DatabaseError)
      expect(error).toMatchObject({ code: '40P01', message: 'deadlock detected' })
      expect(classify(error)).toEqual({
        serialization: false,
        deadlock: true,
        lockNotAvailable: false,
        retryable: true,
      })
      // Our ROLLBACK released row 2, so the other session got it.
      expect(await otherOutcome).toBe('locked')
    } finally {
      await other.query('rollback')
      other.release()
    }
    expectPoolIdle()
  })

  test('the helpers are false for values without a SQLSTATE', () => {
    for (const value of [undefined, null, 'x', 42, new Error('40001'), new TransactionManagementError(DOOMED)]) {
      expect(classify(value)).toEqual({
        serialization: false,
        deadlock: false,
        lockNotAvailable: false,
        retryable: false,
      })
    }
  })
})

describe('transaction control inside a block', () => {
  const refused = [
    'begin',
    'COMMIT',
    '  savepoint x',
    'release savepoint x',
    'rollback',
    'select 1; commit',
    'start transaction',
    'end',
    'abort',
    'rollback to savepoint x',
    '/* c */ commit',
    '-- c\ncommit',
    'Begin; select 1',
    "prepare transaction 'x'",
    'set transaction isolation level serializable',
    'set session characteristics as transaction read only',
  ]

  // On a client of db.pool, a query builder's BEGIN / COMMIT / SAVEPOINT ... maps onto nested blocks
  // instead (query-builders.test.ts); the other forms are refused there too.
  test.each(refused)('%j is refused on every route with nothing sent, and the block carries on', async (sql) => {
    const errors: unknown[] = []
    const builderControl = parseBuilderControl(sql) !== undefined
    await atomic(async (tx) => {
      errors.push(await rejection(h.db.query(sql)))
      errors.push(await rejection(tx.query(sql)))
      errors.push(await rejection(h.db.query({ text: sql })))
      errors.push(await rejection(h.db.pool.query(sql)))
      if (!builderControl) {
        const client = await h.db.pool.connect()
        try {
          errors.push(await rejection(client.query(sql)))
        } finally {
          client.release()
        }
      }
      expect(h.statements).toEqual([])
      expect(getRollback()).toBe(false)
      await insert(1)
      errors.push(await rejection(h.db.query(sql)))
      await insert(2)
    })
    expect(errors).toHaveLength(builderControl ? 5 : 6)
    for (const error of errors) {
      expect(error).toBeInstanceOf(TransactionManagementError)
      expect((error as Error).message.startsWith(FORBIDDEN)).toBe(true)
    }
    expect(h.statements).toEqual(['BEGIN', INSERT, INSERT, 'COMMIT'])
    expect(await committed()).toEqual([1, 2])
  })

  test.each([
    "insert into notes (s) values ('; commit')",
    'select 1 -- commit',
    'select 1 /* ; commit */',
    'select $$; commit$$',
    'select $tag$; rollback $tag$',
    'select 1 as "; begin"',
    "insert into notes (s) values ('it''s; end')",
    'select 1; select 2',
    'do $$ begin perform 1; end $$',
    'select 1 as committed',
  ])('%j is allowed', async (sql) => {
    await atomic(async () => {
      await h.db.query(sql)
    })
    expect(h.statements).toEqual(['BEGIN', sql, 'COMMIT'])
  })

  test('outside a block transaction control is refused too, and nothing is sent', async () => {
    const error = await rejection(h.db.query('begin'))
    expect(error).toBeInstanceOf(TransactionManagementError)
    expect((error as Error).message).toMatch(/Use atomic\(\)/)
    expect(h.statements).toEqual([])
    expectPoolIdle()
  })
})
