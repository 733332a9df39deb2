/**
 * pg-atomic/web: the framework-neutral core (`runRequest`) driven directly, and `atomicListener`
 * on a real `node:http` server. Exact statements, outcomes and responses.
 */
import {
  InvalidOptionError,
  TransactionManagementError,
  atomic,
  createDatabase,
  onCommit,
  setRollback,
} from 'pg-atomic'
import { atomicListener, runRequest } from 'pg-atomic/web'
import type { RequestScope } from 'pg-atomic/web'
import { startFaultProxy, targetOf } from '../support/fault-proxy'
import { rejection, setupHarness } from '../support/harness'
import type { Harness } from '../support/harness'
import { Boom, thrown } from '../support/errors'
import { gate, serve } from './server'
import type { Served } from './server'

let h: Harness
let served: Served | undefined

beforeAll(async () => {
  h = await setupHarness('web_core')
  await h.admin.query(`
    create table t (x int primary key);
    create table tokens (token text not null, constraint tokens_token_key unique (token) deferrable initially deferred);
    create function raise_sqlstate(code text) returns void language plpgsql as
      $$ begin raise exception 'raised %', code using errcode = code; end $$;
  `)
})
afterAll(() => h.close())
beforeEach(async () => {
  await h.admin.query("truncate t, tokens; insert into tokens values ('taken')")
  h.reset()
})
afterEach(async () => {
  await served?.close()
  served = undefined
  expect(h.pool.idleCount).toBe(h.pool.totalCount)
  expect(
    await h.column(
      "select pid from pg_stat_activity where application_name = $1 and state like 'idle in transaction%'",
      [h.testDb.applicationName],
    ),
  ).toEqual([])
})

const INSERT = 'insert into t (x) values ($1)'
const DUPLICATE = "insert into tokens values ('taken')"
const committed = () => h.column<number>('select x from t order by x')

describe('runRequest: the outcome of each way a request ends', () => {
  test('complete(201): COMMIT; the outcome comes before the onCommit hooks, settled after them', async () => {
    const hookMayFinish = gate()
    const calls: string[] = []
    const outcome = await runRequest({}, async (scope) => {
      await h.db.query(INSERT, [1])
      onCommit(async () => {
        await hookMayFinish.wait
        calls.push('hook')
      })
      scope.complete(201)
    })
    expect(outcome).toMatchObject({ kind: 'committed', attempts: 1 })
    expect(calls).toEqual([])
    hookMayFinish.open()
    await outcome.settled
    expect(calls).toEqual(['hook'])
    expect(h.statements).toEqual(['BEGIN', INSERT, 'COMMIT'])
    expect(await committed()).toEqual([1])
  })

  test('complete(500): ROLLBACK, reason status', async () => {
    const outcome = await runRequest(undefined, async (scope) => {
      await h.db.query(INSERT, [1])
      scope.complete(500)
    })
    expect(outcome).toMatchObject({ kind: 'rolled-back', reason: 'status', error: undefined, attempts: 1 })
    expect(h.statements).toEqual(['BEGIN', INSERT, 'ROLLBACK'])
  })

  test('setRollback(true), then complete(200): ROLLBACK, reason set-rollback', async () => {
    const outcome = await runRequest({}, async (scope) => {
      await h.db.query(INSERT, [1])
      setRollback(true)
      scope.complete(200)
    })
    expect(outcome).toMatchObject({ kind: 'rolled-back', reason: 'set-rollback', error: undefined })
    expect(h.statements).toEqual(['BEGIN', INSERT, 'ROLLBACK'])
  })

  test('fail(error), a rejected handler, a throwing handler: ROLLBACK, reason error, the error itself', async () => {
    const boom = new Boom('failed')
    const handlers: Array<(scope: RequestScope) => unknown> = [
      async (scope) => {
        await h.db.query(INSERT, [1])
        scope.fail(boom)
      },
      async () => {
        await h.db.query(INSERT, [1])
        throw boom
      },
      () => {
        throw boom
      },
    ]
    for (const handler of handlers) {
      const outcome = await runRequest({}, handler)
      expect(outcome).toMatchObject({ kind: 'rolled-back', reason: 'error', attempts: 1 })
      expect(outcome.kind === 'rolled-back' && outcome.error).toBe(boom)
    }
    expect(h.statements).toEqual(['BEGIN', INSERT, 'ROLLBACK', 'BEGIN', INSERT, 'ROLLBACK'])
  })

  test('abort(): ROLLBACK, reason aborted; a statement the handler runs afterwards is refused', async () => {
    const later = gate<unknown>()
    const outcome = await runRequest({}, async (scope) => {
      await h.db.query(INSERT, [1])
      scope.abort()
      await new Promise((resolve) => setTimeout(resolve, 10))
      later.open(await rejection(h.db.query(INSERT, [2])))
    })
    expect(outcome).toMatchObject({
      kind: 'rolled-back',
      reason: 'aborted',
      error: {
        name: 'AtomicError',
        message:
          'The client closed the connection before the response was complete, so the ' +
          "request's transaction was rolled back.",
      },
    })
    expect(await later.wait).toBeInstanceOf(TransactionManagementError)
    expect(h.statements).toEqual(['BEGIN', INSERT, 'ROLLBACK'])
  })

  test('a statement error the handler swallowed, then complete(200): failed, never committed', async () => {
    const outcome = await runRequest({}, async (scope) => {
      await h.db.query(INSERT, [1])
      await h.db.query(INSERT, [1]).catch(() => undefined)
      scope.complete(200)
    })
    expect(outcome.kind).toBe('failed')
    const error = outcome.kind === 'failed' ? outcome.error : undefined
    expect(error).toBeInstanceOf(TransactionManagementError)
    expect((error as Error).cause).toMatchObject({ code: '23505', constraint: 't_pkey' })
    expect(h.statements).toEqual(['BEGIN', INSERT, INSERT, 'ROLLBACK'])
    expect(await committed()).toEqual([])
  })

  test('a deferred constraint failing at COMMIT: failed, with the COMMIT error', async () => {
    const outcome = await runRequest({}, async (scope) => {
      await h.db.query(DUPLICATE)
      scope.complete(201)
    })
    expect(outcome).toMatchObject({ kind: 'failed', attempts: 1, error: { code: '23505' } })
    expect(h.statements).toEqual(['BEGIN', DUPLICATE, 'COMMIT'])
  })

  test('stream(200): COMMIT now; the handler goes on, and its next statement is refused', async () => {
    const later = gate<unknown>()
    const outcome = await runRequest({}, async (scope) => {
      await h.db.query(INSERT, [1])
      scope.stream(200)
      await new Promise((resolve) => setTimeout(resolve, 10))
      later.open(await rejection(h.db.query(INSERT, [2])))
      scope.complete(200) // ignored: the attempt was decided
    })
    expect(outcome).toMatchObject({ kind: 'committed' })
    expect(await later.wait).toBeInstanceOf(TransactionManagementError)
    expect(h.statements).toEqual(['BEGIN', INSERT, 'COMMIT'])
  })

  test('a request that runs no statement commits nothing and checks out no connection', async () => {
    const acquired = jest.fn()
    h.pool.on('acquire', acquired)
    try {
      expect(await runRequest({}, (scope) => scope.complete(200))).toMatchObject({ kind: 'committed' })
      expect(await runRequest({}, (scope) => scope.complete(500))).toMatchObject({ kind: 'rolled-back' })
    } finally {
      h.pool.off('acquire', acquired)
    }
    expect(acquired).not.toHaveBeenCalled()
    expect(h.statements).toEqual([])
  })

  test('the request blocks cannot be entered (no such database): failed, 0 attempts', async () => {
    const handler = jest.fn()
    // Missing as the innermost database (entered inside the block of 'default') and as the only one.
    const inner = await runRequest({ databases: ['web_missing', 'default'] }, handler)
    expect(inner).toMatchObject({ kind: 'failed', attempts: 0, error: { name: 'TransactionManagementError' } })
    const outcome = await runRequest({ databases: ['web_missing'] }, handler)
    expect(outcome).toMatchObject({
      kind: 'failed',
      attempts: 0,
      error: {
        name: 'TransactionManagementError',
        message:
          "No database is registered under the alias 'web_missing': call " +
          "createDatabase({ alias: 'web_missing', ... }) first.",
      },
    })
    expect(handler).not.toHaveBeenCalled()
  })

  test('inside an enclosing block (a test wrapping requests): the request block is a savepoint', async () => {
    await atomic(async () => {
      const outcome = await runRequest({}, async (scope) => {
        await h.db.query(INSERT, [1])
        scope.complete(500)
      })
      expect(outcome).toMatchObject({ kind: 'rolled-back', reason: 'status' })
      await h.db.query(INSERT, [2])
    })
    expect(h.statements).toEqual([
      'BEGIN',
      'SAVEPOINT "pga_1"',
      INSERT,
      'ROLLBACK TO SAVEPOINT "pga_1"',
      'RELEASE SAVEPOINT "pga_1"',
      INSERT,
      'COMMIT',
    ])
    expect(await committed()).toEqual([2])
  })
})

describe('runRequest: retry', () => {
  test('a 40001 runs the handler again in a fresh transaction', async () => {
    const outcome = await runRequest({ retry: { maxAttempts: 3, baseDelayMs: 0 } }, async (scope) => {
      await h.db.query(INSERT, [scope.attempt])
      if (scope.attempt === 1) await h.db.query('select raise_sqlstate($1)', ['40001'])
      scope.complete(200)
    })
    expect(outcome).toMatchObject({ kind: 'committed', attempts: 2 })
    const RAISE = 'select raise_sqlstate($1)'
    expect(h.statements).toEqual(['BEGIN', INSERT, RAISE, 'ROLLBACK', 'BEGIN', INSERT, 'COMMIT'])
    expect(await committed()).toEqual([2])
  })

  test('a handler that caught the 40001 and answered 500 itself is run again too', async () => {
    const outcome = await runRequest({ retry: { maxAttempts: 2, baseDelayMs: 0 } }, async (scope) => {
      const failed = await rejection(h.db.query('select raise_sqlstate($1)', [scope.attempt === 1 ? '40001' : '22012']))
      expect(failed).toMatchObject({ code: scope.attempt === 1 ? '40001' : '22012' })
      scope.complete(500)
    })
    // The second run's 22012 is not retried: the request rolls back with its 500.
    expect(outcome).toMatchObject({ kind: 'rolled-back', reason: 'status', attempts: 2 })
  })

  test('a COMMIT failure is retried when the response was complete, never once it started streaming', async () => {
    const retryOn23505 = { maxAttempts: 2, baseDelayMs: 0, retryOn: ['23505'] }
    const complete = await runRequest({ retry: retryOn23505 }, async (scope) => {
      if (scope.attempt === 1) await h.db.query(DUPLICATE)
      scope.complete(200)
    })
    expect(complete).toMatchObject({ kind: 'committed', attempts: 2 })
    const streamed = await runRequest({ retry: retryOn23505 }, async (scope) => {
      if (scope.attempt === 1) await h.db.query(DUPLICATE)
      scope.stream(200)
    })
    expect(streamed).toMatchObject({ kind: 'failed', attempts: 1, error: { code: '23505' } })
  })

  test("a database's default retry never runs a request's handler twice", async () => {
    const db = createDatabase({ connectionString: h.testDb.url, alias: 'web_default_retry', retry: 3, max: 1 })
    try {
      const handler = jest.fn(async (scope: RequestScope) => {
        await db.query('select raise_sqlstate($1)', ['40001'])
        scope.complete(200)
      })
      const outcome = await runRequest({ databases: ['web_default_retry'] }, handler)
      expect(outcome).toMatchObject({ kind: 'rolled-back', reason: 'error', error: { code: '40001' } })
      expect(handler).toHaveBeenCalledTimes(1)
    } finally {
      await db.close()
    }
  })
})

describe('runRequest: arguments', () => {
  test('invalid options and a missing handler reject before any SQL', async () => {
    expect(await rejection(runRequest({ durable: true } as never, () => undefined))).toMatchObject({
      name: 'InvalidOptionError',
      field: 'durable',
    })
    expect(await rejection(runRequest({ bufferLimitBytes: -1 }, () => undefined))).toMatchObject({
      name: 'InvalidOptionError',
      field: 'bufferLimitBytes',
      message: 'Invalid option "bufferLimitBytes" for runRequest(): it must be a whole number of bytes of at least 0.',
    })
    const missing = await rejection(runRequest({}, undefined as never))
    expect(missing).toBeInstanceOf(InvalidOptionError)
    expect(missing).toMatchObject({
      field: 'handler',
      message: 'runRequest() expects the request handler as its second argument.',
    })
    expect(h.statements).toEqual([])
  })

  test('complete() and stream() take an HTTP status code', async () => {
    const outcome = await runRequest({}, (scope) => {
      expect(thrown(() => scope.complete(2.5))).toMatchObject({
        name: 'InvalidOptionError',
        field: 'status',
        message:
          'RequestScope.complete() expects the HTTP status code of the response, a whole number from 100 to 999.',
      })
      expect(thrown(() => scope.stream(42))).toMatchObject({ name: 'InvalidOptionError', field: 'status' })
      expect(scope.decided).toBe(false)
      scope.complete(204)
    })
    expect(outcome).toMatchObject({ kind: 'committed' })
  })
})

describe('atomicListener: a node:http listener', () => {
  test('the response leaves after COMMIT', async () => {
    served = await serve(
      atomicListener({}, async (req, res) => {
        await h.db.query(INSERT, [Number(req.url?.slice(1))])
        res.setHeader('content-type', 'text/plain')
        res.end('saved\n')
      }),
    )
    const response = await fetch(`${served.url}/7`)
    expect(await committed()).toEqual([7])
    expect(await response.text()).toBe('saved\n')
    expect(h.statements).toEqual(['BEGIN', INSERT, 'COMMIT'])
  })

  test('a throwing listener: ROLLBACK, its headers are discarded, a 500 says the request failed', async () => {
    served = await serve(
      atomicListener({}, async (_req, res) => {
        res.setHeader('set-cookie', 'session=granted')
        await h.db.query(INSERT, [1])
        throw new Boom('failed')
      }),
    )
    const response = await fetch(served.url)
    expect(response.status).toBe(500)
    expect(response.headers.get('set-cookie')).toBeNull()
    expect(response.headers.get('content-type')).toBe('text/plain; charset=utf-8')
    expect(await response.text()).toBe('The request failed, and its transaction was not committed.\n')
    expect(h.statements).toEqual(['BEGIN', INSERT, 'ROLLBACK'])
  })

  test('retry: the listener runs again with the same request and a reset response', async () => {
    const seen: unknown[] = []
    served = await serve(
      atomicListener({ retry: { maxAttempts: 2, baseDelayMs: 0 } }, async (req, res) => {
        seen.push(res.getHeader('x-run'))
        res.setHeader('x-run', String(seen.length))
        await h.db.query(INSERT, [seen.length])
        if (seen.length === 1) await h.db.query('select raise_sqlstate($1)', ['40001'])
        res.end(`${req.method} ${req.url}\n`)
      }),
    )
    const response = await fetch(`${served.url}/path`, { method: 'PUT' })
    expect(await response.text()).toBe('PUT /path\n')
    expect(response.headers.get('x-run')).toBe('2')
    expect(seen).toEqual([undefined, undefined]) // the first run's header was reset before the second
    const RAISE = 'select raise_sqlstate($1)'
    expect(h.statements).toEqual(['BEGIN', INSERT, RAISE, 'ROLLBACK', 'BEGIN', INSERT, 'COMMIT'])
    expect(await committed()).toEqual([2])
  })

  test('an unknown COMMIT outcome: a 500 that says so', async () => {
    const proxy = await startFaultProxy(targetOf(h.testDb.directUrl))
    const db = createDatabase({
      connectionString: proxy.urlFor(h.testDb.directUrl),
      alias: 'web_core_unknown',
      max: 1,
      logger: { error: () => undefined },
    })
    try {
      served = await serve(
        atomicListener({ databases: ['web_core_unknown'] }, async (_req, res) => {
          await db.query(INSERT, [1])
          res.end('created\n')
        }),
      )
      void proxy.armCommitFault('response-lost')
      const response = await fetch(served.url)
      expect(response.status).toBe(500)
      expect(await response.text()).toBe(
        "The outcome of the request's transaction is unknown: the connection to the database was lost " +
          'while COMMIT was in flight, so it may or may not have been committed. Check before sending the ' +
          'request again.\n',
      )
    } finally {
      await db.close({ timeoutMs: 0 })
      await proxy.close()
    }
  })

  test('its options are validated when it is created', () => {
    expect(thrown(() => atomicListener({ readOnly: 'yes' as never }, () => undefined))).toMatchObject({
      name: 'InvalidOptionError',
      field: 'readOnly',
      message: 'Invalid option "readOnly" for atomicListener(): it must be true or false.',
    })
  })
})
