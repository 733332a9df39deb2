/**
 * Fault injection: a backend that dies at each point of a transaction (before the first query,
 * between statements, during a long statement, right before COMMIT, during COMMIT), pool
 * exhaustion, server-side timeouts, and db.close() under load.
 *
 * After every fault the caller gets one clear error, the connection is destroyed, onRollback hooks
 * run when the outcome is a rollback, the pool is healthy (the next block works, every connection is
 * idle), and nothing reaches the process as an unhandled 'error' event or unhandled rejection.
 *
 * Faults the client must not notice in time (a dead backend it still believes alive, a COMMIT lost
 * on the wire) are injected with a TCP proxy that understands enough of the protocol to act at an
 * exact message (test/support/fault-proxy.ts).
 */
import vm from 'node:vm'
import type pg from 'pg'
import {
  AcquireTimeoutError,
  CommitOutcomeUnknownError,
  ConnectionLostError,
  TransactionManagementError,
  atomic,
  createDatabase,
  isLockNotAvailable,
  onCommit,
  onRollback,
} from 'pg-atomic'
import type { Database, DatabaseConfig } from 'pg-atomic'
import { startFaultProxy, targetOf } from './support/fault-proxy'
import type { FaultProxy, ProxyConnection } from './support/fault-proxy'
import { THROUGH_POOLER, rejection, setupHarness, testDirect } from './support/harness'
import type { Harness } from './support/harness'
import { sleep } from './support/wait'

/** jest gives each test file a copy of `process`; unhandled errors and rejections go to the real one. */
const realProcess = vm.runInThisContext('process') as NodeJS.Process

let h: Harness
let proxy: FaultProxy
const opened: Database[] = []
const logged: string[] = []
const unhandled: unknown[] = []
const uncaught: unknown[] = []
const onUnhandled = (reason: unknown): void => {
  unhandled.push(reason)
}
const onUncaught = (error: unknown): void => {
  uncaught.push(error)
}

beforeAll(async () => {
  h = await setupHarness('faults', { logger: { error: (message) => logged.push(message) } })
  await h.admin.query('create table t (x int not null)')
  // Faults are injected between pg-atomic and the server itself, also in CI's PgBouncer run.
  proxy = await startFaultProxy(targetOf(h.testDb.directUrl))
  realProcess.on('unhandledRejection', onUnhandled)
  realProcess.on('uncaughtException', onUncaught)
})
afterAll(async () => {
  realProcess.off('unhandledRejection', onUnhandled)
  realProcess.off('uncaughtException', onUncaught)
  await Promise.allSettled(opened.map((db) => db.close({ timeoutMs: 0 })))
  await proxy.close()
  await h.close()
})
beforeEach(async () => {
  await h.admin.query('truncate t')
  h.reset()
  logged.length = 0
})
afterEach(async () => {
  // Let any stray rejection or 'error' event surface before looking.
  await new Promise<void>((resolve) => setImmediate(resolve))
  await Promise.all(opened.splice(0).map((db) => db.close({ timeoutMs: 0 })))
  const stray = { unhandled: unhandled.splice(0), uncaught: uncaught.splice(0) }
  expect(stray).toEqual({ unhandled: [], uncaught: [] })
  expect(h.pool.idleCount).toBe(h.pool.totalCount)
  expect(await idleInTransaction()).toEqual([])
})

const INSERT = 'insert into t (x) values ($1)'
const committed = () => h.column<number>('select x from t order by x')
const pidOf = async (db: Database) =>
  (await db.query<{ pid: number }>('select pg_backend_pid() as pid')).rows[0]?.pid as number
const backendAlive = async (pid: number) =>
  (await h.rows('select 1 from pg_stat_activity where pid = $1', [pid])).length === 1
const terminate = (pid: number) => h.admin.query('select pg_terminate_backend($1)', [pid])

/** Sessions of this test database that are idle in a transaction (must always be none). */
const idleInTransaction = () =>
  h.column<number>(
    "select pid from pg_stat_activity where application_name = $1 and state like 'idle in transaction%'",
    [h.testDb.applicationName],
  )

/** Polls `predicate` every 10 ms; fails after `timeoutMs` (a bound, not a timing assertion). */
async function waitUntil(predicate: () => boolean | Promise<boolean>, what: string, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!(await predicate())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)
    await sleep(10)
  }
}

function gate(): { wait: Promise<void>; open: () => void } {
  let open!: () => void
  const wait = new Promise<void>((resolve) => {
    open = resolve
  })
  return { wait, open }
}

/** A database whose connections go through the fault proxy (pg-atomic creates and owns its pool). */
function proxied(alias: string, config: Omit<DatabaseConfig, 'alias' | 'pool' | 'connectionString'> = {}): Database {
  const db = createDatabase({
    connectionString: proxy.urlFor(h.testDb.directUrl),
    alias,
    max: 2,
    logger: { error: (message) => logged.push(message) },
    ...config,
  })
  opened.push(db)
  return db
}

/** A database connected directly to the server, never through a pooler (its own pool). */
function direct(alias: string, config: Omit<DatabaseConfig, 'alias' | 'pool' | 'connectionString'> = {}): Database {
  const db = createDatabase({
    connectionString: h.testDb.directUrl,
    alias,
    logger: { error: (message) => logged.push(message) },
    ...config,
  })
  opened.push(db)
  return db
}

/** Resolves with the next client the database's pool checks out. */
function nextCheckout(db: Database): Promise<pg.PoolClient> {
  return new Promise((resolve) => db.pool.once('acquire', resolve))
}

/** The pool is healthy again: every connection idle, the next block commits, still every connection idle. */
async function expectHealthy(db: Database, x: number): Promise<void> {
  await waitUntil(() => db.pool.totalCount === db.pool.idleCount, 'every connection of the pool to be idle')
  await db.atomic(() => db.query(INSERT, [x]))
  expect(db.pool.totalCount).toBe(db.pool.idleCount)
  expect(db.pool.waitingCount).toBe(0)
  expect(await committed()).toContain(x)
}

/** Hooks that record which of them ran. */
function hooks(): { calls: string[]; register: (label: string, using: string) => void } {
  const calls: string[] = []
  return {
    calls,
    register(label, using) {
      onCommit(() => void calls.push(`onCommit ${label}`), { using })
      onRollback(() => void calls.push(`onRollback ${label}`), { using })
    },
  }
}

const LOST_MESSAGE =
  'The connection to PostgreSQL was lost during the transaction: the server rolled ' +
  'it back and nothing of it was committed. The connection was destroyed.'
const UNKNOWN_MESSAGE =
  'The connection was lost while COMMIT was in flight: the transaction may or may ' +
  'not have been committed. It was not retried, and neither onCommit nor ' +
  'onRollback hooks were run; check the data before doing the work again.'

describe('the backend dies before the first query', () => {
  test(
    'an idle pooled connection killed, noticed by the pool: it is removed and ' +
      'logged, the block runs on a new connection',
    async () => {
      const alias = 'faults_idle_noticed'
      const db = proxied(alias)
      const pid = await pidOf(db)
      expect(db.pool.idleCount).toBe(1)
      await terminate(pid)
      await waitUntil(() => db.pool.totalCount === 0, 'the pool to remove the dead connection')
      expect(logged).toEqual([
        `An idle connection of database '${alias}' failed and was removed from the pool; the error is attached.`,
      ])
      const { calls, register } = hooks()
      const newPid = await db.atomic(async () => {
        register('block', alias)
        await db.query(INSERT, [1])
        return pidOf(db)
      })
      expect(newPid).not.toBe(pid)
      expect(calls).toEqual(['onCommit block'])
      expect(await committed()).toEqual([1])
      await expectHealthy(db, 2)
    },
  )

  /** Kills the backend of the pool's only idle connection without the client noticing (frozen in the proxy). */
  async function killUnnoticed(db: Database): Promise<{ pid: number; connection: ProxyConnection }> {
    const pid = await pidOf(db)
    expect(db.pool.idleCount).toBe(1)
    const connection = proxy.connectionOf(pid) as ProxyConnection
    expect(connection).toBeDefined()
    connection.freeze()
    await terminate(pid)
    await waitUntil(async () => !(await backendAlive(pid)), `backend ${pid} to exit`)
    expect(db.pool.idleCount).toBe(1) // the client still believes it is alive
    return { pid, connection }
  }

  test(
    'an idle pooled connection killed, not yet noticed: the BEGIN fails, ' +
      'ConnectionLostError (cause 57P01), onRollback hooks run',
    async () => {
      const alias = 'faults_idle_unnoticed'
      const db = proxied(alias)
      const { connection } = await killUnnoticed(db)
      // The dead backend's last words reach the client only once the client has sent its BEGIN.
      void proxy.nextQuery(/^BEGIN/).then((q) => q.connection.thaw())
      const { calls, register } = hooks()
      let statementError: unknown
      const error = await rejection(
        db.atomic(async () => {
          register('block', alias)
          statementError = await rejection(db.query(INSERT, [1]))
          throw statementError
        }),
      )
      expect(error).toBeInstanceOf(ConnectionLostError)
      expect((error as Error).message).toBe(LOST_MESSAGE)
      expect((error as Error).cause).toBe(statementError)
      expect(statementError).toMatchObject({
        code: '57P01',
        message: 'terminating connection due to administrator command',
      })
      expect(calls).toEqual(['onRollback block'])
      await waitUntil(() => connection.closed, 'the proxied connection to close')
      expect(await committed()).toEqual([])
      await expectHealthy(db, 2)
    },
  )

  test(
    '... and retried on a new connection only when retryOn opts in ' +
      '(ConnectionLostError is not retried by default)',
    async () => {
      const alias = 'faults_idle_retry'
      const db = proxied(alias)
      await killUnnoticed(db)
      void proxy.nextQuery(/^BEGIN/).then((q) => q.connection.thaw())
      const body = jest.fn(() => db.query(INSERT, [1]))
      const byDefault = await rejection(db.atomic({ retry: 5 }, body))
      expect(byDefault).toBeInstanceOf(ConnectionLostError)
      expect(byDefault).not.toHaveProperty('attempts')
      expect(body).toHaveBeenCalledTimes(1)

      await killUnnoticed(db)
      void proxy.nextQuery(/^BEGIN/).then((q) => q.connection.thaw())
      let attempt = 0
      await db.atomic(
        { retry: { maxAttempts: 2, baseDelayMs: 0, retryOn: (e) => e instanceof ConnectionLostError } },
        async () => {
          attempt++
          await db.query(INSERT, [10 + attempt])
        },
      )
      expect(attempt).toBe(2)
      expect(await committed()).toEqual([12])
      await expectHealthy(db, 3)
    },
  )
})

describe('the backend dies while the block runs', () => {
  test(
    'between statements: the next statement is refused unsent, the block rejects ' + 'with ConnectionLostError',
    async () => {
      const alias = 'faults_between'
      const db = proxied(alias)
      const checkout = nextCheckout(db)
      const { calls, register } = hooks()
      let refused: unknown
      let sentAfter: string[] = []
      const error = await rejection(
        db.atomic(async () => {
          register('block', alias)
          await db.query(INSERT, [1])
          const client = await checkout
          const ended = new Promise((resolve) => client.once('end', resolve))
          await terminate((client as unknown as { processID: number }).processID)
          await ended
          const before = proxy.queries.length
          refused = await rejection(db.query(INSERT, [2]))
          sentAfter = proxy.queries.slice(before)
        }),
      )
      expect(refused).toBeInstanceOf(ConnectionLostError)
      expect(sentAfter).toEqual([])
      expect(error).toBeInstanceOf(ConnectionLostError)
      expect(((error as Error).cause as { code?: string }).code).toBe('57P01')
      expect(calls).toEqual(['onRollback block'])
      expect(await committed()).toEqual([])
      await expectHealthy(db, 3)
    },
  )

  test('during a long statement: the statement fails with 57P01, the block with ConnectionLostError', async () => {
    const alias = 'faults_long'
    const db = proxied(alias)
    const { calls, register } = hooks()
    let pid: number | undefined
    let statementError: unknown
    // rejection() attaches the handler now: the block may reject before terminate() returns.
    const outcome = rejection(
      db.atomic(async () => {
        register('block', alias)
        await db.query(INSERT, [1])
        pid = await pidOf(db)
        statementError = await rejection(db.query('select pg_sleep(30)'))
        throw statementError
      }),
    )
    await waitUntil(
      async () =>
        pid !== undefined &&
        (
          await h.rows(
            "select 1 from pg_stat_activity where pid = $1 and state = 'active' and query like '%pg_sleep%'",
            [pid],
          )
        ).length === 1,
      'the pg_sleep statement to run',
    )
    await terminate(pid as number)
    const error = await outcome
    expect(statementError).toMatchObject({ code: '57P01' })
    expect(error).toBeInstanceOf(ConnectionLostError)
    expect((error as Error).cause).toBe(statementError)
    expect(calls).toEqual(['onRollback block'])
    expect(await committed()).toEqual([])
    await expectHealthy(db, 2)
  })

  test(
    "right before COMMIT, noticed (the body's last await saw the connection end): " +
      'ConnectionLostError, no COMMIT sent',
    async () => {
      const alias = 'faults_before_commit'
      const db = proxied(alias)
      const checkout = nextCheckout(db)
      const { calls, register } = hooks()
      let before = 0
      const error = await rejection(
        db.atomic(async () => {
          register('block', alias)
          await db.query(INSERT, [1])
          const client = await checkout
          const ended = new Promise((resolve) => client.once('end', resolve))
          await terminate((client as unknown as { processID: number }).processID)
          before = proxy.queries.length
          await ended // the body's last await; it returns normally
        }),
      )
      expect(error).toBeInstanceOf(ConnectionLostError)
      expect((error as Error).message).toBe(LOST_MESSAGE)
      expect(proxy.queries.slice(before)).toEqual([])
      expect(calls).toEqual(['onRollback block'])
      expect(await committed()).toEqual([])
      await expectHealthy(db, 2)
    },
  )

  test(
    'right before COMMIT, not yet noticed: the COMMIT meets a dead backend; the ' +
      'client cannot know, so CommitOutcomeUnknownError (nothing was committed)',
    async () => {
      const alias = 'faults_before_commit_unnoticed'
      const db = proxied(alias)
      const { calls, register } = hooks()
      let connection: ProxyConnection | undefined
      const error = await rejection(
        db.atomic({ retry: 5 }, async () => {
          register('block', alias)
          await db.query(INSERT, [1])
          const pid = await pidOf(db)
          connection = proxy.connectionOf(pid) as ProxyConnection
          connection.freeze()
          await terminate(pid)
          await waitUntil(async () => !(await backendAlive(pid)), `backend ${pid} to exit`)
          void proxy.nextQuery(/^COMMIT$/).then((q) => q.connection.thaw())
        }),
      )
      expect(error).toBeInstanceOf(CommitOutcomeUnknownError)
      expect((error as Error).message).toBe(UNKNOWN_MESSAGE)
      expect((error as Error).cause).toMatchObject({ code: '57P01' })
      expect(error).not.toHaveProperty('attempts')
      await waitUntil(() => connection?.closed === true, 'the proxied connection to close')
      // The outcome is unknown to the client: neither kind of hook may run (a compensating onRollback
      // hook after a commit would corrupt data; an onCommit hook could announce what never happened).
      expect(calls).toEqual([])
      expect(await committed()).toEqual([])
      await expectHealthy(db, 2)
    },
  )

  test(
    'idle-in-transaction timeout fired before COMMIT, not yet noticed: the server ' +
      'never got the COMMIT, so ConnectionLostError (cause 25P03)',
    async () => {
      const alias = 'faults_idle_timeout_commit'
      const db = proxied(alias)
      const { calls, register } = hooks()
      const error = await rejection(
        db.atomic({ idleInTransactionSessionTimeout: 300 }, async () => {
          register('block', alias)
          await db.query(INSERT, [1])
          const pid = await pidOf(db)
          ;(proxy.connectionOf(pid) as ProxyConnection).freeze()
          await waitUntil(async () => !(await backendAlive(pid)), `backend ${pid} to be ended by the timeout`)
          void proxy.nextQuery(/^COMMIT$/).then((q) => q.connection.thaw())
        }),
      )
      expect(error).toBeInstanceOf(ConnectionLostError)
      expect((error as Error).cause).toMatchObject({ code: '25P03' })
      expect(calls).toEqual(['onRollback block'])
      expect(await committed()).toEqual([])
      await expectHealthy(db, 2)
    },
  )
})

describe('the connection is lost during COMMIT', () => {
  test.each([
    ['lost before reaching the server', 'lost-before-server', []],
    ['reached the server, its answer lost', 'response-lost', [1]],
  ] as const)(
    'COMMIT %s: CommitOutcomeUnknownError, not retried even with retry: 5',
    async (_label, mode, expected) => {
      const alias = `faults_commit_${mode.replace(/-/g, '_')}`
      const db = proxied(alias)
      const { calls, register } = hooks()
      const body = jest.fn(async () => {
        register('block', alias)
        await db.query(INSERT, [1])
      })
      const lost = proxy.armCommitFault(mode)
      const error = await rejection(db.atomic({ retry: 5 }, body))
      expect(await lost).toBe('COMMIT')
      expect(error).toBeInstanceOf(CommitOutcomeUnknownError)
      expect((error as Error).message).toBe(UNKNOWN_MESSAGE)
      expect((error as Error).cause).toBeInstanceOf(Error)
      expect(((error as Error).cause as Error).message).toMatch(/Connection terminated/)
      expect(error).not.toHaveProperty('attempts')
      expect(body).toHaveBeenCalledTimes(1)
      // Regression (issue 7 §1.1): onRollback hooks used to run here, also when COMMIT had committed.
      expect(calls).toEqual([])
      // Nobody can tell from the client; the data says which it was.
      await waitUntil(async () => (await idleInTransaction()).length === 0, 'the abandoned session to end')
      expect(await committed()).toEqual(expected)
      await expectHealthy(db, 2)
    },
  )
})

describe('pool exhaustion', () => {
  test(
    'acquireTimeoutMs: a block that cannot get a connection fails with ' +
      'AcquireTimeoutError naming the pool size, the blocks holding connections and ' +
      'the waiters',
    async () => {
      const alias = 'faults_exhausted'
      const db = direct(alias, { max: 2, acquireTimeoutMs: 100 })
      const release = gate()
      const holding = [gate(), gate()]
      const holders = holding.map((entered, i) =>
        db.atomic(async () => {
          await db.query(INSERT, [i + 1])
          entered.open()
          await release.wait
        }),
      )
      await Promise.all(holding.map((g) => g.wait))
      const { calls, register } = hooks()
      const error = await rejection(
        db.atomic(async () => {
          register('third', alias)
          await db.query(INSERT, [3])
        }),
      )
      expect(error).toBeInstanceOf(AcquireTimeoutError)
      expect(error).toMatchObject({ name: 'AcquireTimeoutError', poolSize: 2, heldByBlocks: 2, waiting: 1 })
      expect((error as Error).message).toBe(
        `No connection of database '${alias}' became free within 100 ms: the pool's max ` +
          `is 2, 2 connections are checked out (2 by atomic() blocks), and 1 requests are ` +
          `waiting. Keep transactions short, raise max, or look for blocks that wait on ` +
          `each other.`,
      )
      expect(calls).toEqual(['onRollback third'])
      // A statement outside blocks waits for the same pool, and fails the same way.
      const outside = await rejection(db.query('select 1'))
      expect(outside).toBeInstanceOf(AcquireTimeoutError)
      expect(outside).toMatchObject({ poolSize: 2, heldByBlocks: 2 })
      expect((outside as AcquireTimeoutError).waiting).toBeGreaterThanOrEqual(1)

      release.open()
      await Promise.all(holders)
      expect(await committed()).toEqual([1, 2])
      // The connections handed to the requests that gave up went back to the pool.
      await waitUntil(() => db.pool.waitingCount === 0, 'no request to wait')
      expect(db.pool.totalCount).toBeLessThanOrEqual(2)
      await expectHealthy(db, 4)
    },
  )

  test(
    'a nested block never asks for a second connection: max: 1 with nested blocks, ' +
      'siblings and the pool facade works',
    async () => {
      const alias = 'faults_max_one'
      const db = direct(alias, { max: 1, acquireTimeoutMs: 200 })
      const acquired = jest.fn()
      db.pool.on('acquire', acquired)
      await db.atomic(async () => {
        await db.query(INSERT, [1])
        await atomic({ using: alias }, async () => {
          await db.query(INSERT, [2])
          await Promise.all([
            atomic({ using: alias }, () => db.query(INSERT, [3])),
            atomic({ using: alias }, async () => {
              await atomic({ using: alias, savepoint: false }, () => db.query(INSERT, [4]))
            }),
            db.query(INSERT, [5]),
          ])
        })
        const client = await db.pool.connect() // the block's own connection
        try {
          await client.query(INSERT, [6])
        } finally {
          client.release()
        }
      })
      db.pool.off('acquire', acquired)
      expect(acquired).toHaveBeenCalledTimes(1)
      expect(db.pool.totalCount).toBe(1)
      expect(await committed()).toEqual([1, 2, 3, 4, 5, 6])
    },
  )
})

describe('timeouts leave no connection behind', () => {
  test(
    'statementTimeout: the statement fails with 57014, the block rolls back, the ' +
      'healthy connection goes back to the pool',
    async () => {
      await h.db.query('select 1') // at least one idle connection
      const total = h.pool.totalCount
      h.reset()
      const error = await rejection(atomic({ statementTimeout: 50 }, () => h.db.query('select pg_sleep(10)')))
      expect(error).toMatchObject({ code: '57014', message: 'canceling statement due to statement timeout' })
      expect(h.statements).toEqual(['BEGIN', 'SET LOCAL statement_timeout = 50', 'select pg_sleep(10)', 'ROLLBACK'])
      // Not destroyed: the connection was fine, only the statement was cancelled.
      expect(h.pool.totalCount).toBe(total)
      expect(h.pool.idleCount).toBe(total)
    },
  )

  test(
    'lockTimeout: the statement fails with 55P03, the block rolls back, the ' + 'connection goes back to the pool',
    async () => {
      await h.admin.query('insert into t (x) values (1)')
      await h.db.query('select 1') // at least one idle connection
      const total = h.pool.totalCount
      const holder = await h.admin.connect()
      try {
        await holder.query('begin')
        await holder.query('select x from t for update')
        h.reset()
        const error = await rejection(atomic({ lockTimeout: 50 }, () => h.db.query('update t set x = 2')))
        expect(error).toMatchObject({ code: '55P03', message: 'canceling statement due to lock timeout' })
        expect(isLockNotAvailable(error)).toBe(true)
        expect(h.statements).toEqual(['BEGIN', 'SET LOCAL lock_timeout = 50', 'update t set x = 2', 'ROLLBACK'])
        expect(h.pool.totalCount).toBe(total)
        expect(h.pool.idleCount).toBe(total)
      } finally {
        await holder.query('rollback')
        holder.release()
      }
      expect(await committed()).toEqual([1])
    },
  )

  // Not through PgBouncer: identifies the backend by pg's processID (there the bouncer's cancel key),
  // and the bouncer, not the client, sees the server end the session.
  testDirect(
    'idleInTransactionSessionTimeout: ConnectionLostError with cause 25P03, the connection destroyed, its backend gone',
    async () => {
      const checkout = new Promise<pg.PoolClient>((resolve) => h.pool.once('acquire', resolve))
      const calls: string[] = []
      let pid = 0
      const total = h.pool.totalCount
      const error = await rejection(
        atomic({ idleInTransactionSessionTimeout: 100 }, async () => {
          onRollback(() => void calls.push('onRollback'))
          await h.db.query(INSERT, [1])
          const client = await checkout
          pid = (client as unknown as { processID: number }).processID
          await new Promise((resolve) => client.once('end', resolve))
          await h.db.query(INSERT, [2])
        }),
      )
      expect(error).toBeInstanceOf(ConnectionLostError)
      expect((error as Error).cause).toMatchObject({
        code: '25P03',
        message: 'terminating connection due to idle-in-transaction timeout',
      })
      expect(calls).toEqual(['onRollback'])
      expect(h.pool.totalCount).toBe(total === 0 ? 0 : total - 1)
      expect(await backendAlive(pid)).toBe(false)
      expect(await committed()).toEqual([])
    },
  )
})

describe('db.close() under load', () => {
  test(
    'new blocks are refused, running blocks finish, blocks still running at the ' +
      'deadline are rolled back, then the pool ends',
    async () => {
      const alias = 'faults_close'
      const db = direct(alias, { max: 4 })
      const stuckEntered = [gate(), gate(), gate()]
      const unstick = gate()
      const stuck = stuckEntered.map((entered, i) =>
        db.atomic(async () => {
          await db.query(INSERT, [100 + i])
          entered.open()
          await unstick.wait
          await db.query(INSERT, [200 + i])
        }),
      )
      await Promise.all(stuckEntered.map((g) => g.wait))
      // 20 short blocks share the one connection left.
      const quick = Array.from({ length: 20 }, (_unused, i) =>
        db.atomic(async () => {
          await db.query(INSERT, [i])
          await atomic({ using: alias }, () => db.query(INSERT, [1000 + i]))
        }),
      )
      const closing = db.close({ timeoutMs: 1500 })
      const body = jest.fn()
      const refused = await Promise.allSettled([
        db.atomic(body),
        atomic({ using: alias }, body),
        db.atomic({ retry: 3 }, body),
      ])
      for (const r of refused) {
        expect(r.status).toBe('rejected')
        const reason = (r as PromiseRejectedResult).reason as Error
        expect(reason).toBeInstanceOf(TransactionManagementError)
        expect(reason.message).toBe(`Database '${alias}' is closing or closed: no new atomic() block can start on it.`)
      }
      expect(body).not.toHaveBeenCalled()

      // Every short block finishes and commits while close() waits.
      await Promise.all(quick)
      await closing
      expect(db.pool.ended).toBe(true)
      unstick.open()
      const outcomes = await Promise.allSettled(stuck)
      for (const o of outcomes) {
        expect(o.status).toBe('rejected')
        const reason = (o as PromiseRejectedResult).reason as Error
        expect(reason).toBeInstanceOf(ConnectionLostError)
        expect((reason.cause as Error).message).toBe(
          `Database '${alias}' was closed while this transaction was still running after 1500 ms; it was rolled back.`,
        )
      }
      const expected = [
        ...Array.from({ length: 20 }, (_unused, i) => i),
        ...Array.from({ length: 20 }, (_unused, i) => 1000 + i),
      ]
      expect(await committed()).toEqual(expected)
      // Directly, the aborted sessions are gone when close() resolves. Through PgBouncer, the server
      // connection of a client that left mid-transaction is closed by PgBouncer shortly after.
      if (THROUGH_POOLER)
        await waitUntil(
          async () => (await idleInTransaction()).length === 0,
          'PgBouncer to close the aborted server connections',
          2000,
        )
      expect(await idleInTransaction()).toEqual([])
    },
  )
})
