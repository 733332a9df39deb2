/**
 * Automatic retry of whole transactions (`retry` option): real serialization failures raised by a
 * statement and by COMMIT, real deadlocks, a fresh transaction per attempt, hooks of failed
 * attempts, the final error, retry events and backoff bounds, custom `retryOn`, what is never
 * retried, nested blocks, and the database-level default.
 *
 * Every conflict is orchestrated step by step (a second session driven from inside the body of the
 * first attempt), so attempt 1 fails and attempt 2 succeeds on every run.
 */
import diagnostics_channel from 'node:diagnostics_channel'
import pg from 'pg'
import {
  CommitOutcomeUnknownError,
  RETRY_CHANNEL,
  STATEMENT_CHANNEL,
  TransactionManagementError,
  atomic,
  createDatabase,
  isRetryable,
  onCommit,
  onRollback,
} from 'pg-atomic'
import type { Database, RetryEvent, RetryOptions, StatementEvent } from 'pg-atomic'
import { startFaultProxy, targetOf } from './support/fault-proxy'
import type { FaultProxy } from './support/fault-proxy'
import { rejection, setupHarness } from './support/harness'
import type { Harness } from './support/harness'
import { Boom } from './support/errors'
import { sleep } from './support/wait'

let h: Harness
const retries: RetryEvent[] = []
const statementEvents: StatementEvent[] = []
const onRetry = (message: unknown): void => {
  retries.push(message as RetryEvent)
}
const onStatement = (message: unknown): void => {
  statementEvents.push(message as StatementEvent)
}

beforeAll(async () => {
  h = await setupHarness('retry')
  await h.admin.query(`
    create table accounts (id int primary key, balance int not null);
    create table doctors (name text primary key, on_call boolean not null);
    create table t (x int primary key);
    -- Raises a real server error with the given SQLSTATE (for cases where the cause does not matter).
    create function raise_sqlstate(code text) returns void language plpgsql as
      $$ begin raise exception 'raised %', code using errcode = code; end $$;
  `)
  diagnostics_channel.subscribe(RETRY_CHANNEL, onRetry)
  diagnostics_channel.subscribe(STATEMENT_CHANNEL, onStatement)
})
afterAll(async () => {
  diagnostics_channel.unsubscribe(RETRY_CHANNEL, onRetry)
  diagnostics_channel.unsubscribe(STATEMENT_CHANNEL, onStatement)
  await h.close()
})
beforeEach(async () => {
  await h.admin.query(`
    truncate accounts, doctors, t;
    insert into accounts values (1, 100), (2, 100);
    insert into doctors values ('alice', true), ('bob', true);
  `)
  h.reset()
  retries.length = 0
  statementEvents.length = 0
})
afterEach(() => {
  expect(h.pool.idleCount).toBe(h.pool.totalCount)
})

/** No waiting between attempts: the cases below are about what is retried, not when. */
const NOW: RetryOptions = { maxAttempts: 3, baseDelayMs: 0 }

const SELECT_1 = 'select balance from accounts where id = 1'
const UPDATE_1 = 'update accounts set balance = $1 where id = 1'
const BEGIN_RR = 'BEGIN ISOLATION LEVEL REPEATABLE READ'
const BEGIN_SER = 'BEGIN ISOLATION LEVEL SERIALIZABLE'

/** Polls `predicate` every 10 ms; fails after `timeoutMs` (a bound, not a timing assertion). */
async function waitUntil(predicate: () => boolean | Promise<boolean>, what: string, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!(await predicate())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)
    await sleep(10)
  }
}

const balances = () => h.column<number>('select balance from accounts order by id')

/**
 * In a repeatable-read (or serializable) block: reads account 1, lets another session change it and
 * commit, then writes it from the value read. The write fails with a real 40001 ("could not
 * serialize access due to concurrent update"), which is returned after the block saw it.
 */
async function readModifyWriteAfterConcurrentUpdate(): Promise<unknown> {
  const { rows } = await h.db.query<{ balance: number }>(SELECT_1)
  await h.admin.query('update accounts set balance = balance + 1 where id = 1')
  return rejection(h.db.query(UPDATE_1, [(rows[0] as { balance: number }).balance - 10]))
}

describe('a real serialization failure is retried in a fresh transaction', () => {
  test(
    '40001 raised by a statement (repeatable read): attempt 1 rolls back, attempt 2 ' +
      'runs the whole function again and commits',
    async () => {
      const acquired = jest.fn()
      h.pool.on('acquire', acquired)
      const seen: Array<{ id: number; txid: string; balance: number }> = []
      let failure: unknown
      try {
        const result = await atomic({ isolationLevel: 'repeatable read', retry: NOW, name: 'debit' }, async (tx) => {
          const { rows } = await h.db.query<{ balance: number; txid: string }>(
            'select balance, txid_current()::text as txid from accounts where id = 1',
          )
          const { balance, txid } = rows[0] as { balance: number; txid: string }
          seen.push({ id: tx.id, txid, balance })
          if (seen.length === 1) await h.admin.query('update accounts set balance = balance + 1 where id = 1')
          try {
            await h.db.query(UPDATE_1, [balance - 10])
          } catch (error) {
            failure = error
            throw error
          }
          return balance
        })
        expect(result).toBe(101)
      } finally {
        h.pool.off('acquire', acquired)
      }
      expect(failure).toBeInstanceOf(pg.DatabaseError)
      expect(failure).toMatchObject({ code: '40001', message: 'could not serialize access due to concurrent update' })
      // The second attempt saw the concurrent update: a new snapshot, a new transaction.
      expect(seen.map((s) => s.balance)).toEqual([100, 101])
      expect(seen[0]?.id).not.toBe(seen[1]?.id)
      expect(seen[0]?.txid).not.toBe(seen[1]?.txid)
      expect(acquired).toHaveBeenCalledTimes(2)
      expect(await balances()).toEqual([91, 100])
      const SELECT = 'select balance, txid_current()::text as txid from accounts where id = 1'
      expect(h.statements).toEqual([BEGIN_RR, SELECT, UPDATE_1, 'ROLLBACK', BEGIN_RR, SELECT, UPDATE_1, 'COMMIT'])
      expect(retries).toEqual([
        { attempt: 1, maxAttempts: 3, code: '40001', error: failure, delayMs: 0, database: 'default', name: 'debit' },
      ])
    },
  )

  test(
    '40001 raised by COMMIT (SSI write skew, "during commit attempt"): no ROLLBACK ' + 'is sent, the retry commits',
    async () => {
      const other = await h.admin.connect()
      const calls: string[] = []
      let attempt = 0
      try {
        await other.query('begin isolation level serializable')
        await other.query('select count(*) from doctors where on_call')
        const onCall = await atomic({ isolationLevel: 'serializable', retry: NOW }, async () => {
          const n = ++attempt
          calls.push(`attempt ${n}`)
          onCommit(() => void calls.push(`onCommit ${n}`))
          onRollback(() => void calls.push(`onRollback ${n}`))
          const { rows } = await h.db.query<{ n: number }>('select count(*)::int as n from doctors where on_call')
          const count = (rows[0] as { n: number }).n
          if (n === 1) await other.query("update doctors set on_call = false where name = 'alice'")
          if (count >= 2) await h.db.query("update doctors set on_call = false where name = 'bob'")
          if (n === 1) await other.query('commit') // the other transaction commits first
          return count
        })
        expect(onCall).toBe(1)
      } finally {
        other.release()
      }
      const SELECT = 'select count(*)::int as n from doctors where on_call'
      const UPDATE = "update doctors set on_call = false where name = 'bob'"
      // The first COMMIT failed; the server had already rolled back, so no ROLLBACK follows it.
      expect(h.statements).toEqual([BEGIN_SER, SELECT, UPDATE, 'COMMIT', BEGIN_SER, SELECT, 'COMMIT'])
      const commits = statementEvents.filter((e) => e.kind === 'commit')
      expect(commits).toHaveLength(2)
      expect(commits[0]?.error).toBeInstanceOf(pg.DatabaseError)
      expect(commits[0]?.error).toMatchObject({
        code: '40001',
        message: 'could not serialize access due to read/write dependencies among transactions',
        detail: 'Reason code: Canceled on identification as a pivot, during commit attempt.',
      })
      expect(commits[1]?.error).toBeUndefined()
      expect(commits[0]?.transactionId).not.toBe(commits[1]?.transactionId)
      expect(retries).toEqual([expect.objectContaining({ attempt: 1, code: '40001', error: commits[0]?.error })])
      // Attempt 1's onCommit hook was dropped and its onRollback hook ran before attempt 2 started.
      expect(calls).toEqual(['attempt 1', 'onRollback 1', 'attempt 2', 'onCommit 2'])
      expect(await h.rows('select name, on_call from doctors order by name')).toEqual([
        { name: 'alice', on_call: false },
        { name: 'bob', on_call: true },
      ])
    },
  )

  test('40P01: the deadlock victim is retried and commits', async () => {
    const other = await h.admin.connect()
    const otherPid = (other as unknown as { processID: number }).processID
    let attempt = 0
    let otherWaiting: Promise<unknown> | undefined
    let failure: unknown
    try {
      await atomic({ retry: NOW }, async () => {
        attempt++
        if (attempt === 2) {
          // The other session got its lock when attempt 1 rolled back; let it finish.
          await otherWaiting
          await other.query('commit')
        }
        // This session detects the deadlock (and is its victim) long before the other one would.
        await h.db.query("select set_config('deadlock_timeout', '50ms', true)")
        await h.db.query('update accounts set balance = balance - 1 where id = 1')
        if (attempt === 1) {
          await other.query('begin')
          await other.query("set local deadlock_timeout = '60s'")
          await other.query('update accounts set balance = balance - 2 where id = 2')
          otherWaiting = other.query('update accounts set balance = balance + 2 where id = 1')
          await waitUntil(
            async () =>
              (await h.rows("select 1 from pg_stat_activity where pid = $1 and wait_event_type = 'Lock'", [otherPid]))
                .length === 1,
            'the other session to wait for row 1',
          )
        }
        try {
          await h.db.query('update accounts set balance = balance + 1 where id = 2')
        } catch (error) {
          failure = error
          throw error
        }
      })
    } finally {
      other.release()
    }
    expect(failure).toBeInstanceOf(pg.DatabaseError)
    expect(failure).toMatchObject({ code: '40P01', message: 'deadlock detected' })
    expect(attempt).toBe(2)
    expect(await balances()).toEqual([101, 99])
    expect(retries).toEqual([expect.objectContaining({ attempt: 1, code: '40P01', error: failure, delayMs: 0 })])
    expect(h.statements.filter((s) => s === 'BEGIN' || s === 'COMMIT' || s === 'ROLLBACK')).toEqual([
      'BEGIN',
      'ROLLBACK',
      'BEGIN',
      'COMMIT',
    ])
  })

  test(
    'a 40001 inside a nested block retries the whole transaction from the outermost ' +
      'block, never the savepoint alone',
    async () => {
      const calls: string[] = []
      let attempt = 0
      await atomic({ isolationLevel: 'repeatable read', retry: NOW }, async () => {
        const n = ++attempt
        await h.db.query('insert into t (x) values ($1)', [n])
        onRollback(() => void calls.push(`outer onRollback ${n}`))
        await atomic(async () => {
          onCommit(() => void calls.push(`nested onCommit ${n}`))
          onRollback(() => void calls.push(`nested onRollback ${n}`))
          if (n === 1) throw await readModifyWriteAfterConcurrentUpdate()
          await h.db.query('update accounts set balance = balance - 10 where id = 1')
        })
      })
      expect(attempt).toBe(2)
      expect(calls).toEqual(['nested onRollback 1', 'outer onRollback 1', 'nested onCommit 2'])
      expect(await h.column('select x from t')).toEqual([2])
      expect(await balances()).toEqual([91, 100])
      const INSERT = 'insert into t (x) values ($1)'
      expect(h.statements).toEqual([
        BEGIN_RR,
        INSERT,
        'SAVEPOINT "pga_1"',
        SELECT_1,
        UPDATE_1,
        // The nested block's savepoint is rolled back and released (on the next turn), then the whole transaction.
        'ROLLBACK TO SAVEPOINT "pga_1"; RELEASE SAVEPOINT "pga_1"',
        'ROLLBACK',
        BEGIN_RR,
        INSERT,
        'SAVEPOINT "pga_1"',
        'update accounts set balance = balance - 10 where id = 1',
        'COMMIT',
      ])
    },
  )

  test(
    'a swallowed 40001 (the block rejects with TransactionManagementError, cause ' + '40001) is retried too',
    async () => {
      let attempt = 0
      let swallowed: unknown
      const result = await atomic({ isolationLevel: 'repeatable read', retry: NOW }, async () => {
        attempt++
        if (attempt === 1) {
          swallowed = await readModifyWriteAfterConcurrentUpdate() // caught, not re-raised
          return 'first'
        }
        await h.db.query('update accounts set balance = balance - 10 where id = 1')
        return 'second'
      })
      expect(result).toBe('second')
      expect(swallowed).toMatchObject({ code: '40001' })
      expect(retries).toHaveLength(1)
      const event = retries[0] as RetryEvent
      expect(event).toMatchObject({ attempt: 1, code: '40001' })
      expect(event.error).toBeInstanceOf(TransactionManagementError)
      expect((event.error as Error).message).toMatch(
        /^The 'atomic' block finished normally, but an error inside it was caught and not re-raised/,
      )
      expect((event.error as Error).cause).toBe(swallowed)
      expect(await balances()).toEqual([91, 100])
    },
  )
})

describe('after the last attempt', () => {
  test('the caller gets the pg DatabaseError itself (code 40001) with attempts === maxAttempts', async () => {
    const failures: unknown[] = []
    const body = jest.fn(async () => {
      const error = await readModifyWriteAfterConcurrentUpdate()
      failures.push(error)
      throw error
    })
    const error = await rejection(atomic({ isolationLevel: 'repeatable read', retry: NOW }, body))
    expect(body).toHaveBeenCalledTimes(3)
    expect(error).toBeInstanceOf(pg.DatabaseError)
    expect(error).toBe(failures[2])
    expect(error).toMatchObject({
      code: '40001',
      attempts: 3,
      message: 'could not serialize access due to concurrent update',
    })
    expect(isRetryable(error)).toBe(true)
    expect(retries.map((r) => [r.attempt, r.maxAttempts, r.code, r.error])).toEqual([
      [1, 3, '40001', failures[0]],
      [2, 3, '40001', failures[1]],
    ])
    expect(h.statements.filter((s) => s.startsWith('BEGIN') || s === 'ROLLBACK' || s === 'COMMIT')).toEqual([
      BEGIN_RR,
      'ROLLBACK',
      BEGIN_RR,
      'ROLLBACK',
      BEGIN_RR,
      'ROLLBACK',
    ])
    // Each attempt read the value the previous concurrent update left.
    expect(await balances()).toEqual([103, 100])
  })

  test('a swallowed 40001 on every attempt: TransactionManagementError (cause 40001) with attempts', async () => {
    const error = await rejection(
      atomic({ isolationLevel: 'repeatable read', retry: { maxAttempts: 2, baseDelayMs: 0 } }, async () => {
        await readModifyWriteAfterConcurrentUpdate()
      }),
    )
    expect(error).toBeInstanceOf(TransactionManagementError)
    expect(error).toMatchObject({ attempts: 2, cause: expect.objectContaining({ code: '40001' }) })
    expect(retries).toHaveLength(1)
  })

  test('retry: n is the number of attempts, with the default backoff', async () => {
    const body = jest.fn(() => h.db.query("select raise_sqlstate('40001')"))
    const error = await rejection(atomic({ retry: 2 }, body))
    expect(body).toHaveBeenCalledTimes(2)
    expect(error).toMatchObject({ code: '40001', attempts: 2 })
    expect(retries).toHaveLength(1)
    // Default baseDelayMs is 20: the first wait is at most 20 ms.
    expect(retries[0]?.delayMs).toBeGreaterThanOrEqual(0)
    expect(retries[0]?.delayMs).toBeLessThanOrEqual(20)
  })
})

describe('retry events and backoff', () => {
  /** Fails every attempt with a 40001 (raised on the server) and returns the events. */
  async function failEveryAttempt(retry: RetryOptions): Promise<RetryEvent[]> {
    const error = await rejection(
      atomic({ retry, name: 'backoff' }, () => h.db.query("select raise_sqlstate('40001')")),
    )
    expect(error).toMatchObject({ code: '40001', attempts: retry.maxAttempts })
    return retries.slice()
  }

  test(
    'one event per retry, with attempt, code, error, and a whole-number delay in [0, ' +
      'min(maxDelayMs, baseDelayMs·2^(attempt−1))]',
    async () => {
      const events = await failEveryAttempt({ maxAttempts: 6, baseDelayMs: 3, maxDelayMs: 10 })
      expect(events.map((e) => e.attempt)).toEqual([1, 2, 3, 4, 5])
      const ceilings = [3, 6, 10, 10, 10]
      for (const [i, e] of events.entries()) {
        expect(e).toMatchObject({ maxAttempts: 6, code: '40001', database: 'default', name: 'backoff' })
        expect(e.error).toBeInstanceOf(pg.DatabaseError)
        expect(Number.isInteger(e.delayMs)).toBe(true)
        expect(e.delayMs).toBeGreaterThanOrEqual(0)
        expect(e.delayMs).toBeLessThanOrEqual(ceilings[i] as number)
      }
    },
  )

  test('maxDelayMs bounds every delay, however large baseDelayMs is', async () => {
    const events = await failEveryAttempt({ maxAttempts: 5, baseDelayMs: 60_000, maxDelayMs: 5 })
    expect(events).toHaveLength(4)
    for (const e of events) expect(e.delayMs).toBeLessThanOrEqual(5)
  })

  test('the ceiling doubles per attempt (Math.random pinned just below 1 so each delay is its ceiling)', async () => {
    // The only way to observe the exponential formula exactly; the bounds tests above use real randomness.
    const random = jest.spyOn(Math, 'random').mockReturnValue(0.999999)
    try {
      const events = await failEveryAttempt({ maxAttempts: 5, baseDelayMs: 1, maxDelayMs: 6 })
      expect(events.map((e) => e.delayMs)).toEqual([1, 2, 4, 6])
    } finally {
      random.mockRestore()
    }
  })
})

describe('retryOn', () => {
  test('custom SQLSTATEs: a 55P03 (NOWAIT) is retried when listed', async () => {
    const holder = await h.admin.connect()
    let attempt = 0
    try {
      await holder.query('begin')
      await holder.query('select 1 from accounts where id = 1 for update')
      await atomic({ retry: { maxAttempts: 2, baseDelayMs: 0, retryOn: ['55P03'] } }, async () => {
        if (++attempt === 2) await holder.query('rollback')
        await h.db.query('select balance from accounts where id = 1 for update nowait')
        await h.db.query('update accounts set balance = 0 where id = 1')
      })
    } finally {
      holder.release()
    }
    expect(attempt).toBe(2)
    expect(retries).toEqual([expect.objectContaining({ attempt: 1, code: '55P03' })])
    expect(await balances()).toEqual([0, 100])
  })

  test('custom SQLSTATEs replace the defaults: 40001 is then not retried', async () => {
    const body = jest.fn(() => h.db.query("select raise_sqlstate('40001')"))
    const error = await rejection(atomic({ retry: { maxAttempts: 3, baseDelayMs: 0, retryOn: ['55P03'] } }, body))
    expect(body).toHaveBeenCalledTimes(1)
    expect(error).toMatchObject({ code: '40001' })
    expect(error).not.toHaveProperty('attempts')
    expect(retries).toEqual([])
  })

  test('a predicate decides from the error itself (here: retry a thrown Boom, not a 40001)', async () => {
    const seen: unknown[] = []
    const retryOn = (error: unknown) => {
      seen.push(error)
      return error instanceof Boom
    }
    const boom = new Boom('transient')
    let attempt = 0
    const result = await atomic({ retry: { maxAttempts: 3, baseDelayMs: 0, retryOn } }, async () => {
      await h.db.query('insert into t (x) values ($1)', [++attempt])
      if (attempt === 1) throw boom
      return attempt
    })
    expect(result).toBe(2)
    expect(seen).toEqual([boom])
    expect(retries).toEqual([expect.objectContaining({ attempt: 1, code: undefined, error: boom })])
    expect(await h.column('select x from t')).toEqual([2])

    seen.length = 0
    const error = await rejection(
      atomic({ retry: { maxAttempts: 3, baseDelayMs: 0, retryOn } }, () =>
        h.db.query("select raise_sqlstate('40001')"),
      ),
    )
    expect(error).toMatchObject({ code: '40001' })
    expect(seen).toEqual([error])
    expect(error).not.toHaveProperty('attempts')
  })
})

describe('what is not retried', () => {
  test('a unique violation (23505) is not retried: one attempt, no attempts property', async () => {
    await h.admin.query('insert into t (x) values (1)')
    const body = jest.fn(() => h.db.query('insert into t (x) values (1)'))
    const error = await rejection(atomic({ retry: 5 }, body))
    expect(body).toHaveBeenCalledTimes(1)
    expect(error).toBeInstanceOf(pg.DatabaseError)
    expect(error).toMatchObject({ code: '23505', constraint: 't_pkey' })
    expect(error).not.toHaveProperty('attempts')
    expect(retries).toEqual([])
    expect(h.statements).toEqual(['BEGIN', 'insert into t (x) values (1)', 'ROLLBACK'])
  })

  test('a thrown Error is rethrown unchanged after one attempt', async () => {
    const boom = new Boom('no')
    const body = jest.fn(async () => {
      await h.db.query('insert into t (x) values (1)')
      throw boom
    })
    const error = await rejection(atomic({ retry: 5 }, body))
    expect(error).toBe(boom)
    expect(body).toHaveBeenCalledTimes(1)
    expect(error).not.toHaveProperty('attempts')
    expect(retries).toEqual([])
  })

  test('a non-retryable error on a later attempt ends the retries and carries the attempts made', async () => {
    const boom = new Boom('second attempt')
    let attempt = 0
    const error = await rejection(
      atomic({ retry: { maxAttempts: 5, baseDelayMs: 0 } }, async () => {
        if (++attempt === 1) await h.db.query("select raise_sqlstate('40001')")
        throw boom
      }),
    )
    expect(error).toBe(boom)
    expect(error).toMatchObject({ attempts: 2 })
    expect(retries).toHaveLength(1)
  })

  test('a thrown primitive on a later attempt is rethrown as it is (nothing can be attached to it)', async () => {
    let attempt = 0
    const error = await rejection(
      atomic({ retry: { maxAttempts: 5, baseDelayMs: 0 } }, async () => {
        if (++attempt === 1) await h.db.query("select raise_sqlstate('40P01')")
        throw 'plain string'
      }),
    )
    expect(error).toBe('plain string')
    expect(attempt).toBe(2)
  })
})

describe('retry and nesting', () => {
  test.each<[string, number | RetryOptions]>([
    ['retry: 3', 3],
    ['retry: 1', 1],
    ['retry: { maxAttempts: 2 }', { maxAttempts: 2 }],
  ])(
    '%s on a nested block is a TransactionManagementError at entry; nothing is sent and the outer block goes on',
    async (_label, retry) => {
      const body = jest.fn()
      await atomic(async () => {
        await h.db.query('insert into t (x) values (1)')
        h.reset()
        const error = await rejection(atomic({ retry, name: 'inner' }, body))
        expect(error).toBeInstanceOf(TransactionManagementError)
        expect((error as Error).message).toBe(
          'The retry option is only allowed on the outermost atomic() block, but this ' +
            'block is nested: PostgreSQL can only retry whole transactions (a savepoint ' +
            'retry keeps the old snapshot and its locks). Put retry on the outermost block. ' +
            '(block "inner")',
        )
        expect(h.statements).toEqual([])
        await h.db.query('insert into t (x) values (2)')
      })
      expect(body).not.toHaveBeenCalled()
      expect(await h.column('select x from t order by x')).toEqual([1, 2])
    },
  )

  describe('a database-level default', () => {
    let db: Database
    beforeAll(() => {
      db = createDatabase({ pool: h.pool, alias: 'retry_default', retry: { maxAttempts: 3, baseDelayMs: 0 } })
    })
    afterAll(() => db.close())

    test(
      'applies to outermost blocks; a nested block inside is fine and the whole ' + 'transaction is retried',
      async () => {
        let attempt = 0
        const depths: number[] = []
        await atomic({ using: 'retry_default' }, async () => {
          const n = ++attempt
          await db.query('insert into t (x) values ($1)', [n])
          await atomic({ using: 'retry_default' }, async (inner) => {
            depths.push(inner.depth)
            if (n === 1) await db.query("select raise_sqlstate('40001')")
          })
        })
        expect(attempt).toBe(2)
        expect(depths).toEqual([2, 2])
        expect(retries).toEqual([
          expect.objectContaining({ attempt: 1, maxAttempts: 3, code: '40001', database: 'retry_default' }),
        ])
        expect(await h.column('select x from t')).toEqual([2])
      },
    )

    test('the exhausted default carries attempts like an explicit retry', async () => {
      const body = jest.fn(() => db.query("select raise_sqlstate('40P01')"))
      const error = await rejection(db.atomic(body))
      expect(body).toHaveBeenCalledTimes(3)
      expect(error).toMatchObject({ code: '40P01', attempts: 3 })
    })

    test('retry: 1 on a block turns the default off', async () => {
      const body = jest.fn(() => db.query("select raise_sqlstate('40001')"))
      const error = await rejection(db.atomic({ retry: 1 }, body))
      expect(body).toHaveBeenCalledTimes(1)
      expect(error).not.toHaveProperty('attempts')
      expect(retries).toEqual([])
    })

    test('a database without a default does not retry', async () => {
      const body = jest.fn(() => h.db.query("select raise_sqlstate('40001')"))
      await expect(atomic(body)).rejects.toMatchObject({ code: '40001' })
      expect(body).toHaveBeenCalledTimes(1)
    })
  })
})

describe('an ambiguous COMMIT is never retried', () => {
  let proxy: FaultProxy
  let db: Database
  const logged: string[] = []
  beforeAll(async () => {
    // Between pg-atomic and the server itself, also in CI's PgBouncer run.
    proxy = await startFaultProxy(targetOf(h.testDb.directUrl))
    db = createDatabase({
      connectionString: proxy.urlFor(h.testDb.directUrl),
      alias: 'retry_proxied',
      max: 2,
      logger: { error: (message) => logged.push(message) },
    })
  })
  afterAll(async () => {
    await db.close()
    await proxy.close()
  })

  test(
    'CommitOutcomeUnknownError, even with retry: 5 and a retryOn that accepts ' + 'everything; the data is committed',
    async () => {
      const body = jest.fn(async () => {
        await db.query('insert into t (x) values (7)')
      })
      const lost = proxy.armCommitFault('response-lost')
      const error = await rejection(db.atomic({ retry: { maxAttempts: 5, baseDelayMs: 0, retryOn: () => true } }, body))
      expect(await lost).toBe('COMMIT')
      expect(error).toBeInstanceOf(CommitOutcomeUnknownError)
      expect(error).not.toHaveProperty('attempts')
      expect(body).toHaveBeenCalledTimes(1)
      expect(retries).toEqual([])
      expect(isRetryable(error)).toBe(false)
      // The COMMIT reached the server before the answer was lost: the work is there.
      expect(await h.column('select x from t')).toEqual([7])
      await waitUntil(() => db.pool.totalCount === db.pool.idleCount, 'the proxied pool to be idle')
      expect(logged).toEqual([])
    },
  )
})
