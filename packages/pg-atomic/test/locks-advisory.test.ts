/**
 * Advisory locks: advisoryKey() hashing, advisoryLock() (transaction level) and withAdvisoryLock()
 * (session level, dedicated connection), with a second real session; the block advisoryLock()
 * acts on when several databases are registered; what is logged when the unlock fails.
 */
import pg from 'pg'
import {
  ADVISORY_KEY_SQL,
  ConnectionLostError,
  InvalidOptionError,
  LockNotAvailableError,
  TransactionManagementError,
  advisoryKey,
  advisoryLock,
  atomic,
  createDatabase,
  withAdvisoryLock,
} from 'pg-atomic'
import type { AdvisoryLockContext } from 'pg-atomic'
import { Boom, rejection, thrown } from './support/errors'
import { setupHarness, testDirect } from './support/harness'
import type { Harness } from './support/harness'
import { openSession, recordedDatabase, waitFor, waitForWaiters } from './support/locks'

let h: Harness
let other: pg.Client
let superuser = false

beforeAll(async () => {
  h = await setupHarness('locks_advisory')
  await h.admin.query('create table events (n int not null)')
  other = await openSession(h)
  superuser = (await h.column<string>("select current_setting('is_superuser')"))[0] === 'on'
})
afterAll(async () => {
  await other.end()
  await h.close()
})
beforeEach(async () => {
  await other.query('ROLLBACK')
  await h.admin.query('truncate events')
  h.reset()
})

/**
 * Whether the other session can take the (transaction-level, exclusive unless `shared`) lock right now; always
 * rolled back.
 */
async function otherCanTake(key: bigint | readonly [number, number], shared = false): Promise<boolean> {
  const fn = shared ? 'pg_try_advisory_xact_lock_shared' : 'pg_try_advisory_xact_lock'
  await other.query('BEGIN')
  try {
    const { rows } =
      typeof key === 'bigint'
        ? await other.query<{ ok: boolean }>(`select ${fn}($1::bigint) as ok`, [key.toString()])
        : await other.query<{ ok: boolean }>(`select ${fn}($1::int, $2::int) as ok`, [key[0], key[1]])
    return rows[0]?.ok === true
  } finally {
    await other.query('ROLLBACK')
  }
}

/** The other session takes the (transaction-level, exclusive) lock, waiting at most its lock_timeout; rolled back. */
async function otherTakesWaiting(key: bigint): Promise<void> {
  await other.query('BEGIN')
  try {
    await other.query('select pg_advisory_xact_lock($1::bigint)', [key.toString()])
  } finally {
    await other.query('ROLLBACK')
  }
}

function poolIsIdle(): boolean {
  return h.pool.totalCount === h.pool.idleCount && h.pool.waitingCount === 0
}

const AFTER_FAILURE =
  ' The statement failed, so the enclosing atomic() block must roll back; try again later, or ' +
  'catch the error outside a nested atomic() block to let the rest of the transaction continue.'

describe('advisoryKey()', () => {
  test('is stable: fixed expected values', () => {
    expect(advisoryKey('orders:42')).toBe(-7365440854769472009n)
    expect(advisoryKey('')).toBe(7976458461030331577n)
    expect(advisoryKey('café')).toBe(-7858512465847603783n)
    expect(advisoryKey('invoice:7', 'billing')).toBe(2594599933033496492n)
    expect(advisoryKey('orders:42', 'pg-atomic')).toBe(advisoryKey('orders:42'))
  })

  test('ADVISORY_KEY_SQL (built-in sha256) computes the same keys on the server', async () => {
    const cases: Array<[string, string]> = [
      ['orders:42', 'pg-atomic'],
      ['', 'pg-atomic'],
      ['café', 'pg-atomic'],
      ['invoice:7', 'billing'],
      ['日本語 ✓', 'ns'],
    ]
    for (const [text, namespace] of cases) {
      const [key] = await h.column<string>(`select ${ADVISORY_KEY_SQL}::text`, [text, namespace])
      expect(BigInt(key as string)).toBe(advisoryKey(text, namespace))
    }
  })

  test('the pgcrypto form computes the same keys (skipped if pgcrypto is not installed on the server)', async () => {
    const available = await h.column<string>("select name from pg_available_extensions where name = 'pgcrypto'")
    if (available.length === 0) return // pgcrypto is not installed on this server: nothing to compare
    await h.admin.query('create extension if not exists pgcrypto')
    for (const text of ['orders:42', 'café', '']) {
      const [key] = await h.column<string>(
        "select (('x' || encode(substr(digest(convert_to('pg-atomic' || ':' || $1::text, 'UTF8'), 'sha256'), " +
          "1, 8), 'hex'))::bit(64)::bigint)::text",
        [text],
      )
      expect(BigInt(key as string)).toBe(advisoryKey(text))
    }
  })

  test('a namespace containing ":" or non-string input is an InvalidOptionError', () => {
    expect(thrown(() => advisoryKey('x', 'a:b'))).toMatchObject({
      name: 'InvalidOptionError',
      field: 'namespace',
      message:
        'Invalid option "namespace" for advisoryKey(): it must be a string without \':\' (the separator ' +
        'between namespace and text).',
    })
    expect(thrown(() => advisoryKey(42 as never))).toMatchObject({
      name: 'InvalidOptionError',
      field: 'text',
      message: 'Invalid option "text" for advisoryKey(): it must be the text to hash (a string).',
    })
  })
})

describe('advisoryLock()', () => {
  test('bigint, number, string and pair keys are sent as parameters', async () => {
    await atomic(async () => {
      expect(await advisoryLock(4294967303n)).toBe(true)
      expect(await advisoryLock(7)).toBe(true)
      expect(await advisoryLock('orders:42')).toBe(true)
      expect(await advisoryLock([-5, 2], { shared: true })).toBe(true)
      const locks = (
        await h.rows<{ classid: string; objid: string; objsubid: number; mode: string }>(
          `select classid::text, objid::text, objsubid, mode from pg_locks
            where locktype = 'advisory'
              and database = (select oid from pg_database where datname = current_database())`,
        )
      ).map((l) => `${l.classid}/${l.objid}/${l.objsubid} ${l.mode}`)
      // bigint keys: classid = high 32 bits, objid = low 32 bits, objsubid 1; pairs: objsubid 2.
      const hashed = BigInt.asUintN(64, advisoryKey('orders:42'))
      expect(locks.sort()).toEqual(
        [
          '0/7/1 ExclusiveLock',
          '1/7/1 ExclusiveLock',
          `${hashed >> 32n}/${hashed & 0xffffffffn}/1 ExclusiveLock`,
          '4294967291/2/2 ShareLock',
        ].sort(),
      )
    })
    expect(h.statements).toEqual([
      'BEGIN',
      'SELECT pg_advisory_xact_lock($1::bigint)',
      'SELECT pg_advisory_xact_lock($1::bigint)',
      'SELECT pg_advisory_xact_lock($1::bigint)',
      'SELECT pg_advisory_xact_lock_shared($1::int, $2::int)',
      'COMMIT',
    ])
  })

  test.each<[string, unknown, unknown, string]>([
    ['a bigint above 2^63-1', 2n ** 63n, undefined, 'key'],
    ['a bigint below -2^63', -(2n ** 63n) - 1n, undefined, 'key'],
    ['an unsafe number', 2 ** 53, undefined, 'key'],
    ['a fractional number', 1.5, undefined, 'key'],
    ['an empty string', '', undefined, 'key'],
    ['a pair outside int32', [2 ** 31, 0], undefined, 'key'],
    ['a pair of non-integers', [1, 0.5], undefined, 'key'],
    ['three numbers', [1, 2, 3], undefined, 'key'],
    ['an object', { key: 1 }, undefined, 'key'],
    ['a non-boolean shared', 1, { shared: 'yes' }, 'shared'],
    ['a non-boolean wait', 1, { wait: 0 }, 'wait'],
    ['a negative timeoutMs', 1, { timeoutMs: -5 }, 'timeoutMs'],
    ['timeoutMs with wait: false', 1, { wait: false, timeoutMs: 10 }, 'timeoutMs'],
    ['the old name timeout', 1, { timeout: 10 }, 'timeout'],
    ['an unknown option', 1, { nowait: true }, 'nowait'],
    ['an empty using', 1, { using: '' }, 'using'],
  ])('%s is an InvalidOptionError and nothing is sent', async (_name, key, options, field) => {
    await atomic(async () => {
      const error = await rejection(advisoryLock(key as bigint, options as never))
      expect(error).toBeInstanceOf(InvalidOptionError)
      expect(error).toMatchObject({ name: 'InvalidOptionError', field })
    })
    expect(h.statements).toEqual([])
  })

  test('the messages name the field and what is allowed', async () => {
    const invalid = async (key: unknown, options: unknown, field: string, message: string): Promise<void> => {
      const error = await rejection(advisoryLock(key as bigint, options as never))
      expect(error).toBeInstanceOf(InvalidOptionError)
      expect(error).toMatchObject({ name: 'InvalidOptionError', field, message })
    }
    await invalid(
      1.5,
      undefined,
      'key',
      'Invalid option "key" for advisoryLock(): it must be a bigint from -2^63 to 2^63-1, a safe ' +
        'integer number, a pair [a, b] of 32-bit signed integers, or a non-empty string (hashed with ' +
        'advisoryKey()).',
    )
    await invalid(
      1,
      { wait: false, timeoutMs: 10 },
      'timeoutMs',
      'Invalid option "timeoutMs" for advisoryLock(): it applies only when waiting, so it cannot ' +
        'be combined with "wait: false". Remove one of them.',
    )
    await invalid(
      1,
      { timeoutMs: -5 },
      'timeoutMs',
      'Invalid option "timeoutMs" for advisoryLock(): it must be a whole number of milliseconds from ' +
        '0 to 2147483647 (0 waits without limit).',
    )
    await invalid(
      1,
      { timeout: 5 },
      'timeout',
      'Unknown option "timeout" for advisoryLock(). The accepted options are: shared, wait, timeoutMs, using.',
    )
  })

  test(
    "regression (issue 7, defect 6): inside a block of a database registered only as 'reports', " +
      'advisoryLock() locks in that block',
    async () => {
      const reports = recordedDatabase(h, 'reports')
      const key = advisoryKey('reports')
      try {
        await atomic({ using: 'reports' }, async () => {
          expect(await advisoryLock(key)).toBe(true)
          expect(await otherCanTake(key)).toBe(false)
        })
        expect(await otherCanTake(key)).toBe(true)
        expect(reports.statements).toEqual(['BEGIN', 'SELECT pg_advisory_xact_lock($1::bigint)', 'COMMIT'])
        expect(h.statements).toEqual([])
        // Nested in a block of 'default': the innermost block (reports) without using, 'default' with it.
        await atomic(async () => {
          await atomic({ using: 'reports' }, async () => {
            await advisoryLock([1, 1])
            await advisoryLock([2, 2], { using: 'default' })
          })
        })
        expect(reports.statements.slice(3)).toEqual([
          'BEGIN',
          'SELECT pg_advisory_xact_lock($1::int, $2::int)',
          'COMMIT',
        ])
        expect(h.statements).toEqual(['BEGIN', 'SELECT pg_advisory_xact_lock($1::int, $2::int)', 'COMMIT'])
      } finally {
        await reports.close()
      }
    },
  )

  test('outside a block: TransactionManagementError before any SQL', async () => {
    const error = await rejection(advisoryLock('job'))
    expect(error).toBeInstanceOf(TransactionManagementError)
    expect(error).toMatchObject({
      message:
        'advisoryLock() cannot be used outside of a transaction: call it inside an atomic() block (a ' +
        'transaction-level advisory lock taken in autocommit mode is released as soon as the statement ' +
        'ends). For a lock that spans several transactions, use withAdvisoryLock().',
    })
    expect(h.statements).toEqual([])
  })

  test('mutual exclusion: held until COMMIT, never before; a second block waits for it', async () => {
    const key = advisoryKey('exclusion')
    const order: string[] = []
    let releaseFirst!: () => void
    const gate = new Promise<void>((resolve) => (releaseFirst = resolve))
    const first = atomic(async () => {
      await advisoryLock(key)
      order.push('first locked')
      await h.db.query('insert into events values (1)')
      expect(await otherCanTake(key)).toBe(false)
      await gate
      expect(await otherCanTake(key)).toBe(false) // still held after more statements
      order.push('first commits')
    })
    await waitFor(async () => order.length > 0, 'the first block to take the lock')
    const second = atomic({ lockTimeout: 10_000 }, async () => {
      await advisoryLock(key)
      order.push('second locked')
      // The first block's work is committed before the second one gets the lock.
      expect(await h.db.query('select n from events').then((r) => r.rows)).toEqual([{ n: 1 }])
    })
    await waitForWaiters(h, 1, 'advisory')
    expect(order).toEqual(['first locked'])
    releaseFirst()
    await Promise.all([first, second])
    expect(order).toEqual(['first locked', 'first commits', 'second locked'])
    expect(await otherCanTake(key)).toBe(true)
  })

  test('released at rollback, and at the rollback of the nested block that took it', async () => {
    const key = advisoryKey('rollback')
    const error = await rejection(
      atomic(async () => {
        await advisoryLock(key)
        expect(await otherCanTake(key)).toBe(false)
        throw new Boom()
      }),
    )
    expect(error).toBeInstanceOf(Boom)
    expect(await otherCanTake(key)).toBe(true)

    await atomic(async () => {
      await h.db.query('select 1')
      await rejection(
        atomic(async () => {
          await advisoryLock(key)
          throw new Boom()
        }),
      )
      // Released at ROLLBACK TO SAVEPOINT (sent within a tick): the other session gets it, waiting at
      // most its lock_timeout for that to arrive, while this transaction is still open.
      await otherTakesWaiting(key)
      await h.db.query('insert into events values (2)')
    })
    expect(await h.column('select n from events')).toEqual([2])
  })

  test('shared locks coexist; an exclusive one is refused while they are held', async () => {
    const key = advisoryKey('shared')
    await atomic(async () => {
      await advisoryLock(key, { shared: true })
      expect(await otherCanTake(key, true)).toBe(true)
      expect(await otherCanTake(key)).toBe(false)
    })
    await atomic(async () => {
      await advisoryLock(key)
      expect(await otherCanTake(key, true)).toBe(false)
    })
  })

  test('wait: false returns false when another session holds the lock, and the block goes on', async () => {
    const key: readonly [number, number] = [11, 22]
    await other.query('BEGIN')
    await other.query('select pg_advisory_xact_lock($1::int, $2::int)', [11, 22])
    const result = await atomic(async () => {
      const got = await advisoryLock(key, { wait: false })
      await h.db.query('insert into events values (3)')
      return got
    })
    expect(result).toBe(false)
    await other.query('ROLLBACK')
    expect(await atomic(() => advisoryLock(key, { wait: false }))).toBe(true)
    expect(h.statements.filter((s) => s.includes('advisory'))).toEqual([
      'SELECT pg_try_advisory_xact_lock($1::int, $2::int) AS acquired',
      'SELECT pg_try_advisory_xact_lock($1::int, $2::int) AS acquired',
    ])
    expect(await h.column('select n from events')).toEqual([3])
  })

  test('timeoutMs: LockNotAvailableError, and the previous lock_timeout is restored after a success', async () => {
    const key = advisoryKey('timeout')
    await other.query('BEGIN')
    await other.query('select pg_advisory_xact_lock($1::bigint)', [key.toString()])
    await atomic({ lockTimeout: 4000 }, async () => {
      const error = await rejection(atomic(() => advisoryLock(key, { timeoutMs: 50 })))
      expect(error).toBeInstanceOf(LockNotAvailableError)
      expect(error).toMatchObject({
        code: '55P03',
        relation: undefined,
        reason: 'lock_timeout',
        message:
          `Gave up waiting for an advisory lock when lock_timeout expired: another transaction holds ` +
          `a conflicting lock.${AFTER_FAILURE}`,
      })
      expect((await h.db.query('SHOW lock_timeout')).rows).toEqual([{ lock_timeout: '4s' }])
      await other.query('ROLLBACK')
      expect(await advisoryLock(key, { timeoutMs: 1000 })).toBe(true)
      expect((await h.db.query('SHOW lock_timeout')).rows).toEqual([{ lock_timeout: '4s' }])
    })
    expect(h.statements).toEqual([
      'BEGIN; SET LOCAL lock_timeout = 4000; SAVEPOINT "pga_1"',
      "SELECT set_config('pga.saved_lock_timeout', current_setting('lock_timeout'), true); SET LOCAL lock_timeout = 50",
      'SELECT pg_advisory_xact_lock($1::bigint)',
      'ROLLBACK TO SAVEPOINT "pga_1"',
      'RELEASE SAVEPOINT "pga_1"',
      'SHOW lock_timeout',
      "SELECT set_config('pga.saved_lock_timeout', current_setting('lock_timeout'), true); SET LOCAL " +
        'lock_timeout = 1000',
      'SELECT pg_advisory_xact_lock($1::bigint)',
      "SELECT set_config('lock_timeout', current_setting('pga.saved_lock_timeout'), true)",
      'SHOW lock_timeout',
      'COMMIT',
    ])
  })

  test('two transactions taking two locks in opposite orders: one gets 40P01 (deadlock detected)', async () => {
    const [k1, k2] = [advisoryKey('deadlock-1'), advisoryKey('deadlock-2')]
    await other.query('BEGIN')
    // The other session must not be the victim: it checks for deadlocks much later than this one.
    if (superuser) await other.query("SET LOCAL deadlock_timeout = '5s'")
    await other.query('select pg_advisory_xact_lock($1::bigint)', [k2.toString()])
    let otherWait: Promise<unknown> | undefined
    const error = await rejection(
      atomic({ lockTimeout: 10_000 }, async () => {
        if (superuser) await h.db.query("SET LOCAL deadlock_timeout = '50ms'")
        await advisoryLock(k1)
        const waiting = advisoryLock(k2)
        await waitForWaiters(h, 1, 'advisory')
        otherWait = other.query('select pg_advisory_xact_lock($1::bigint)', [k1.toString()])
        await waiting
      }),
    )
    expect(error).toBeInstanceOf(pg.DatabaseError)
    expect(error).toMatchObject({ code: '40P01', message: 'deadlock detected' })
    await otherWait // the survivor gets k1 once the victim's transaction is rolled back
    await other.query('ROLLBACK')
  })
})

describe('withAdvisoryLock()', () => {
  test('holds a session lock on its own connection while fn runs, and releases it afterwards', async () => {
    const key = advisoryKey('job')
    let seen: AdvisoryLockContext | undefined
    const result = await withAdvisoryLock('job', async (lock) => {
      seen = lock
      expect(await otherCanTake(key)).toBe(false)
      await atomic(() => h.db.query('insert into events values (4)'))
      expect(await otherCanTake(key)).toBe(false) // a session lock outlives the transaction
      return 'done'
    })
    expect(result).toBe('done')
    expect(seen?.key).toBe(key)
    expect(seen?.signal.aborted).toBe(false)
    expect(Object.isFrozen(seen)).toBe(true)
    expect(await otherCanTake(key)).toBe(true)
    expect(poolIsIdle()).toBe(true)
    expect(h.statements).toEqual([
      'SELECT pg_advisory_lock($1::bigint)',
      'BEGIN',
      'insert into events values (4)',
      'COMMIT',
      'SELECT pg_advisory_unlock($1::bigint) AS released',
    ])
  })

  test('released when fn throws; the error is rethrown unchanged and no connection leaks', async () => {
    const boom = new Boom()
    const error = await rejection(
      withAdvisoryLock([1, 2], async () => {
        expect(await otherCanTake([1, 2])).toBe(false)
        throw boom
      }),
    )
    expect(error).toBe(boom)
    expect(await otherCanTake([1, 2])).toBe(true)
    expect(poolIsIdle()).toBe(true)
    expect(h.statements).toEqual([
      'SELECT pg_advisory_lock($1::int, $2::int)',
      'SELECT pg_advisory_unlock($1::int, $2::int) AS released',
    ])
  })

  test('mutual exclusion between two callers; shared callers run together', async () => {
    const order: string[] = []
    let releaseFirst!: () => void
    const gate = new Promise<void>((resolve) => (releaseFirst = resolve))
    const first = withAdvisoryLock(99n, async () => {
      order.push('first in')
      await gate
      order.push('first out')
    })
    await waitFor(async () => order.length > 0, 'the first caller to hold the lock')
    const second = withAdvisoryLock(
      99n,
      () => {
        order.push('second in')
      },
      { timeoutMs: 10_000 },
    )
    await waitForWaiters(h, 1, 'advisory')
    releaseFirst()
    await Promise.all([first, second])
    expect(order).toEqual(['first in', 'first out', 'second in'])

    const both = await withAdvisoryLock(99n, () => withAdvisoryLockInOtherContext(), { shared: true })
    expect(both).toBe(true)
    expect(poolIsIdle()).toBe(true)
  })

  /** A shared lock of the same key from an unrelated async context (not nested: no self-deadlock check). */
  function withAdvisoryLockInOtherContext(): Promise<boolean> {
    return new Promise((resolve, reject) => {
      setImmediate(() => {
        withAdvisoryLock(99n, () => true, { shared: true, wait: false }).then(resolve, reject)
      })
    })
  }

  test('wait: false when another session holds the lock: LockNotAvailableError, fn not run', async () => {
    await other.query('BEGIN')
    await other.query('select pg_advisory_xact_lock($1::bigint)', ['5'])
    let ran = false
    const error = await rejection(
      withAdvisoryLock(
        5,
        () => {
          ran = true
        },
        { wait: false },
      ),
    )
    expect(ran).toBe(false)
    expect(error).toBeInstanceOf(LockNotAvailableError)
    expect(error).toMatchObject({
      code: '55P03',
      reason: 'nowait',
      relation: undefined,
      message:
        'Could not obtain the advisory lock of withAdvisoryLock() without waiting (wait: false): another ' +
        'session holds it in a conflicting mode. fn was not run.',
    })
    expect(h.statements).toEqual(['SELECT pg_try_advisory_lock($1::bigint) AS acquired'])
    expect(poolIsIdle()).toBe(true)
  })

  test('timeoutMs: LockNotAvailableError after lock_timeout, set only inside a transaction of its own', async () => {
    await other.query('BEGIN')
    await other.query('select pg_advisory_xact_lock($1::bigint)', ['6'])
    const error = await rejection(withAdvisoryLock(6, () => undefined, { timeoutMs: 50 }))
    expect(error).toMatchObject({ name: 'LockNotAvailableError', reason: 'lock_timeout', relation: undefined })
    expect(poolIsIdle()).toBe(true)
    await other.query('ROLLBACK')
    await withAdvisoryLock(6, () => undefined, { timeoutMs: 1000 })
    expect(h.statements).toEqual([
      'BEGIN; SET LOCAL lock_timeout = 50',
      'SELECT pg_advisory_lock($1::bigint)',
      'ROLLBACK',
      'BEGIN; SET LOCAL lock_timeout = 1000',
      'SELECT pg_advisory_lock($1::bigint)',
      'COMMIT',
      'SELECT pg_advisory_unlock($1::bigint) AS released',
    ])
  })

  test('refused before anything is sent when the database declares transactionPooling: true', async () => {
    const pooled = createDatabase({ alias: 'locks_pooled', pool: h.pool, transactionPooling: true })
    try {
      let ran = false
      const error = await rejection(
        withAdvisoryLock(
          'job',
          () => {
            ran = true
          },
          { using: 'locks_pooled' },
        ),
      )
      expect(ran).toBe(false)
      expect(error).toBeInstanceOf(TransactionManagementError)
      expect(error).toMatchObject({
        message:
          "withAdvisoryLock() is refused on database 'locks_pooled' because it was created with transactionPooling: " +
          'true. A session-level advisory lock belongs to a server connection, and a transaction-mode ' +
          'pooler (PgBouncer pool_mode = transaction) hands that connection to other clients between ' +
          'transactions: two clients can then both "hold" the lock, and the unlock can reach another ' +
          'connection and leave the lock held. Use advisoryLock() inside an atomic() block (transaction-level, ' +
          'safe behind a pooler), or a database that connects to PostgreSQL directly.',
      })
      // The transaction-level form stays available there.
      expect(await atomic({ using: 'locks_pooled' }, () => advisoryLock('job', { using: 'locks_pooled' }))).toBe(true)
    } finally {
      await pooled.close()
    }
    expect(h.statements).toEqual(['BEGIN', 'SELECT pg_advisory_xact_lock($1::bigint)', 'COMMIT'])
  })

  test('refused inside an atomic() block, and for a key an enclosing withAdvisoryLock() holds', async () => {
    await atomic(async () => {
      await expect(withAdvisoryLock('job', () => undefined)).rejects.toMatchObject({
        name: 'TransactionManagementError',
        message:
          'withAdvisoryLock() cannot be used inside an atomic() block: its session-level lock would be ' +
          'released when fn returns, before the enclosing transaction commits, so another process could ' +
          "take the lock without seeing this transaction's work. Use advisoryLock() (released at COMMIT), " +
          'or call withAdvisoryLock() outside and open the atomic() block inside fn.',
      })
    })
    const selfDeadlock =
      'would wait forever: an enclosing withAdvisoryLock() of this async context holds the same advisory ' +
      'lock on another connection, and it is released only when this code finishes. Advisory locks ' +
      'exclude sessions, not callers: do not take the same key again inside withAdvisoryLock().'
    await withAdvisoryLock('job', async () => {
      await expect(withAdvisoryLock('job', () => undefined)).rejects.toMatchObject({
        name: 'TransactionManagementError',
        message: `withAdvisoryLock() ${selfDeadlock}`,
      })
      await expect(atomic(() => advisoryLock('job'))).rejects.toMatchObject({
        name: 'TransactionManagementError',
        message: `advisoryLock() ${selfDeadlock}`,
      })
      await withAdvisoryLock('another job', () => undefined)
    })
    await withAdvisoryLock('job', () => withAdvisoryLock('job', () => undefined, { shared: true }), { shared: true })
    expect(poolIsIdle()).toBe(true)
  })

  test('invalid arguments are InvalidOptionErrors before anything is sent', async () => {
    await expect(withAdvisoryLock('', () => undefined)).rejects.toMatchObject({
      name: 'InvalidOptionError',
      field: 'key',
      message:
        'Invalid option "key" for withAdvisoryLock(): it must be a bigint from -2^63 to 2^63-1, a safe ' +
        'integer number, a pair [a, b] of 32-bit signed integers, or a non-empty string (hashed with ' +
        'advisoryKey()).',
    })
    await expect(withAdvisoryLock('job', 'fn' as never)).rejects.toMatchObject({
      name: 'InvalidOptionError',
      field: 'fn',
      message: 'Invalid option "fn" for withAdvisoryLock(): it must be the function to run while the lock is held.',
    })
    await expect(withAdvisoryLock('job', () => undefined, { wait: false, timeoutMs: 5 })).rejects.toMatchObject({
      name: 'InvalidOptionError',
      field: 'timeoutMs',
      message:
        'Invalid option "timeoutMs" for withAdvisoryLock(): it applies only when waiting, so it cannot ' +
        'be combined with "wait: false". Remove one of them.',
    })
    await expect(withAdvisoryLock('job', () => undefined, { timeout: 5 } as never)).rejects.toMatchObject({
      name: 'InvalidOptionError',
      field: 'timeout',
      message:
        'Unknown option "timeout" for withAdvisoryLock(). The accepted options are: shared, wait, timeoutMs, using.',
    })
    expect(h.statements).toEqual([])
  })

  test('the lock connection dies while fn runs: signal aborts, the call rejects with ConnectionLostError', async () => {
    const key = 4242n
    const error = await rejection(
      withAdvisoryLock(key, async ({ signal }) => {
        const [pid] = await h.column<number>(
          "select pid from pg_locks where locktype = 'advisory' and objid = 4242 and objsubid = 1 and " +
            'granted and database = (select oid from pg_database where datname = current_database())',
        )
        await h.admin.query('select pg_terminate_backend($1)', [pid])
        await waitFor(async () => signal.aborted, 'the signal to abort')
        expect(signal.reason).toBeInstanceOf(ConnectionLostError)
        await otherTakesWaiting(key)
      }),
    )
    expect(error).toBeInstanceOf(ConnectionLostError)
    expect(error).toMatchObject({
      message:
        'The connection holding the advisory lock of withAdvisoryLock() was lost; the lock is released ' +
        'and other sessions can take it.',
    })
    expect((error as ConnectionLostError).cause).toMatchObject({ code: '57P01' })
    await waitFor(async () => poolIsIdle(), 'the destroyed connection to leave the pool')
    expect(h.statements).toEqual(['SELECT pg_advisory_lock($1::bigint)'])
  })
  // Session advisory locks are refused behind a transaction pooler, so this runs on direct connections only.
  testDirect(
    'regression (issue 7, defect 2): a failed unlock is logged with the error as its own argument, ' +
      'never its message in the sentence',
    async () => {
      const SECRET = 'SECRETBIND'
      const serverError = Object.assign(new Error(`invalid input syntax for type integer: "${SECRET}"`), {
        code: '22P02',
      })
      class FailingUnlock extends pg.Client {
        override query(...args: unknown[]): never {
          if (typeof args[0] === 'string' && args[0].startsWith('SELECT pg_advisory_unlock'))
            return Promise.reject(serverError) as never
          return (super.query as (...a: unknown[]) => never)(...args)
        }
      }
      const logged: unknown[][] = []
      const pool = new pg.Pool({
        connectionString: h.testDb.url,
        max: 2,
        Client: FailingUnlock as unknown as typeof pg.Client,
      })
      const db = createDatabase({
        alias: 'locks_unlock_fails',
        pool,
        logger: { error: (...args: unknown[]) => logged.push(args) },
      })
      try {
        expect(await withAdvisoryLock(777n, () => 'done', { using: 'locks_unlock_fails' })).toBe('done')
        expect(logged).toEqual([
          [
            'withAdvisoryLock() could not release its advisory lock; the connection was destroyed instead, ' +
              'which releases every lock of its session.',
            serverError,
          ],
        ])
        expect(JSON.stringify(logged.map(([message]) => message))).not.toContain(SECRET)
        // Closing the session released the lock.
        await waitFor(async () => otherCanTake(777n), 'the destroyed session to release the lock')
      } finally {
        await db.close()
        await pool.end()
      }
    },
  )
})
