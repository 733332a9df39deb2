/**
 * pg-atomic/express (issue 9 §1–§3): a real Express 5 app on a loopback port, real HTTP requests
 * through Node's fetch, a real PostgreSQL. Exact statements, rows and responses are checked for
 * each way a request can end.
 */
import diagnostics_channel from 'node:diagnostics_channel'
import { Readable } from 'node:stream'
import express from 'express'
import type { ErrorRequestHandler, Express } from 'express'
import {
  CommitOutcomeUnknownError,
  createDatabase,
  InvalidOptionError,
  STATEMENT_CHANNEL,
  TransactionManagementError,
  onCommit,
  setRollback,
} from 'pg-atomic'
import type { StatementEvent } from 'pg-atomic'
import { atomicRequests, atomicRoute, nonAtomic } from 'pg-atomic/express'
import { startFaultProxy, targetOf } from '../support/fault-proxy'
import { setupHarness, rejection } from '../support/harness'
import type { Harness } from '../support/harness'
import { thrown } from '../support/errors'
import { waitUntil } from '../support/wait'
import { gate, serve } from './server'
import type { Served } from './server'

let h: Harness
let served: Served | undefined
const logged: Array<{ message: string; error: unknown }> = []
const statementEvents: StatementEvent[] = []
const onStatement = (message: unknown): void => {
  statementEvents.push(message as StatementEvent)
}

beforeAll(async () => {
  h = await setupHarness('web_express', {
    logger: { error: (message: string, error?: unknown) => void logged.push({ message, error }) },
  })
  await h.admin.query(`
    create table items (id int primary key, name text not null);
    -- Checked at COMMIT: a duplicate passes the INSERT and fails the COMMIT.
    create table tokens (token text not null, constraint tokens_token_key unique (token) deferrable initially deferred);
    create table accounts (id int primary key, balance int not null);
  `)
  diagnostics_channel.subscribe(STATEMENT_CHANNEL, onStatement)
})
afterAll(async () => {
  diagnostics_channel.unsubscribe(STATEMENT_CHANNEL, onStatement)
  await h.close()
})
beforeEach(async () => {
  await h.admin.query('truncate items, tokens, accounts; insert into accounts values (1, 100)')
  h.reset()
  logged.length = 0
  statementEvents.length = 0
})
afterEach(async () => {
  await served?.close()
  served = undefined
  expect(await idleInTransaction()).toEqual([])
  expect(h.pool.idleCount).toBe(h.pool.totalCount)
})

const INSERT = 'insert into items (id, name) values ($1, $2)'
const items = () => h.column<number>('select id from items order by id')
const idleInTransaction = () =>
  h.column<number>(
    "select pid from pg_stat_activity where application_name = $1 and state like 'idle in transaction%'",
    [h.testDb.applicationName],
  )

/** Renders errors as JSON with their class, so that a test can see which error reached Express. */
const errorsAsJson: ErrorRequestHandler = (error: Error & { code?: string }, _req, res, _next) => {
  res.status(500).json({ error: error.name, code: error.code, message: error.message })
}

/** An app with `atomicRequests()` (unless `bare`), the routes `define` adds, and errors as JSON. */
async function start(define: (app: Express) => void, options: { bare?: boolean; errors?: boolean } = {}) {
  const app = express()
  app.use(express.json())
  if (options.bare !== true) app.use(atomicRequests())
  define(app)
  if (options.errors !== false) app.use(errorsAsJson)
  served = await serve(app)
  return served.url
}

async function post(url: string, body: unknown = {}): Promise<{ status: number; body: unknown; headers: Headers }> {
  const response = await fetch(url, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body),
  })
  const text = await response.text()
  return { status: response.status, body: text === '' ? undefined : JSON.parse(text), headers: response.headers }
}

describe('the request blocks commit or roll back with the request', () => {
  test('a handler that succeeds: BEGIN rides with its first statement, COMMIT before the response', async () => {
    let committedWhenSent: number[] | undefined
    const url = await start((app) =>
      app.post('/items', async (req, res) => {
        const { id } = req.body as { id: number }
        await h.db.query(INSERT, [id, 'a'])
        await h.db.query(INSERT, [id + 1, 'b'])
        res.on('finish', () => undefined)
        res.status(201).json({ id })
      }),
    )
    const response = await post(`${url}/items`, { id: 1 })
    committedWhenSent = await items()
    expect(response).toMatchObject({ status: 201, body: { id: 1 } })
    expect(committedWhenSent).toEqual([1, 2])
    expect(h.statements).toEqual(['BEGIN', INSERT, INSERT, 'COMMIT'])
    expect(h.batches).toEqual([['BEGIN', INSERT], [INSERT], ['COMMIT']])
  })

  test('a thrown (rejected) handler: ROLLBACK, then Express answers 500 with the error', async () => {
    const url = await start((app) =>
      app.post('/items', async () => {
        await h.db.query(INSERT, [1, 'a'])
        throw new Error('the handler failed')
      }),
    )
    const response = await post(`${url}/items`)
    expect(response).toMatchObject({ status: 500, body: { error: 'Error', message: 'the handler failed' } })
    expect(h.statements).toEqual(['BEGIN', INSERT, 'ROLLBACK'])
    expect(await items()).toEqual([])
  })

  test("next(err): ROLLBACK, and Express's default error handler answers 500", async () => {
    const url = await start(
      (app) =>
        app.post('/items', async (_req, _res, next) => {
          await h.db.query(INSERT, [1, 'a'])
          next(new Error('passed on'))
        }),
      { errors: false },
    )
    const response = await fetch(`${url}/items`, { method: 'POST' })
    expect(response.status).toBe(500)
    await response.text()
    expect(h.statements).toEqual(['BEGIN', INSERT, 'ROLLBACK'])
    expect(await items()).toEqual([])
  })

  test("a 5xx answered by the handler itself rolls back, and that response is sent as it is", async () => {
    const url = await start((app) =>
      app.post('/items', async (_req, res) => {
        await h.db.query(INSERT, [1, 'a'])
        res.setHeader('x-handler', 'kept')
        res.status(503).json({ retryLater: true })
      }),
    )
    const response = await post(`${url}/items`)
    expect(response).toMatchObject({ status: 503, body: { retryLater: true } })
    expect(response.headers.get('x-handler')).toBe('kept')
    expect(h.statements).toEqual(['BEGIN', INSERT, 'ROLLBACK'])
    expect(await items()).toEqual([])
  })

  test('setRollback(true) in the handler: ROLLBACK, and its 200 is sent after it', async () => {
    const url = await start((app) =>
      app.post('/dry-run', async (_req, res) => {
        await h.db.query(INSERT, [1, 'a'])
        setRollback(true)
        res.json({ dryRun: true })
      }),
    )
    expect(await post(`${url}/dry-run`)).toMatchObject({ status: 200, body: { dryRun: true } })
    expect(h.statements).toEqual(['BEGIN', INSERT, 'ROLLBACK'])
    expect(await items()).toEqual([])
  })

  test('rollbackOn: (status) => status >= 400 rolls a 422 back, and sends it', async () => {
    const app = express()
    app.use(atomicRequests({ rollbackOn: (status) => status >= 400 }))
    app.post('/items', async (_req, res) => {
      await h.db.query(INSERT, [1, 'a'])
      res.status(422).json({ invalid: true })
    })
    served = await serve(app)
    expect(await post(`${served.url}/items`)).toMatchObject({ status: 422, body: { invalid: true } })
    expect(h.statements).toEqual(['BEGIN', INSERT, 'ROLLBACK'])
  })

  test('a request that runs no statement sends nothing and checks out no connection', async () => {
    const acquired = jest.fn()
    h.pool.on('acquire', acquired)
    try {
      const url = await start((app) => app.get('/ping', (_req, res) => void res.json({ pong: true })))
      const response = await fetch(`${url}/ping`)
      expect(await response.json()).toEqual({ pong: true })
      const missing = await fetch(`${url}/missing`)
      expect(missing.status).toBe(404)
      await missing.text()
    } finally {
      h.pool.off('acquire', acquired)
    }
    expect(acquired).not.toHaveBeenCalled()
    expect(h.statements).toEqual([])
  })
})

describe('no success before COMMIT', () => {
  test(
    'a deferred unique constraint failing at COMMIT: the held 201 and its cookie are discarded, the ' +
      'error reaches the error handler (500), nothing is committed',
    async () => {
      await h.admin.query("insert into tokens values ('taken')")
      const url = await start((app) => {
        app.use((_req, res, next) => {
          res.setHeader('x-request-id', 'r-1') // set before the request blocks: kept
          next()
        })
        app.use(atomicRequests())
        app.post('/tokens', async (_req, res) => {
          await h.db.query("insert into tokens values ('taken')")
          res.cookie('session', 'granted')
          res.status(201).json({ created: true })
        })
      }, { bare: true })
      const response = await post(`${url}/tokens`)
      // pg's DatabaseError, as COMMIT raised it (its name is 'error').
      expect(response).toMatchObject({ status: 500, body: { code: '23505' } })
      expect(response.headers.get('set-cookie')).toBeNull()
      expect(response.headers.get('x-request-id')).toBe('r-1')
      expect(h.statements).toEqual(['BEGIN', "insert into tokens values ('taken')", 'COMMIT'])
      expect(await h.column('select count(*)::int from tokens')).toEqual([1])
    },
  )

  test('CommitOutcomeUnknownError: a 500 whose message says the outcome is unknown', async () => {
    // The COMMIT's answer never arrives: the connection to PostgreSQL is destroyed as it is sent.
    const proxy = await startFaultProxy(targetOf(h.testDb.directUrl))
    const db = createDatabase({
      connectionString: proxy.urlFor(h.testDb.directUrl),
      alias: 'web_unknown',
      max: 1,
      logger: { error: () => undefined },
    })
    try {
      const app = express()
      app.use(atomicRequests({ databases: ['web_unknown'] }))
      app.post('/items', async (_req, res) => {
        await db.query(INSERT, [7, 'maybe'])
        res.status(201).json({ created: true })
      })
      app.use(errorsAsJson)
      served = await serve(app)
      void proxy.armCommitFault('response-lost')
      const response = await post(`${served.url}/items`)
      expect(response).toMatchObject({
        status: 500,
        body: { error: 'CommitOutcomeUnknownError', message: expect.stringContaining('may or may not have been committed') },
      })
    } finally {
      await db.close({ timeoutMs: 0 })
      await proxy.close()
    }
  })
})

describe('streaming: COMMIT at the first byte, then the stream', () => {
  test('res.write() commits first; the bytes follow; a statement after that point is refused', async () => {
    const seenAtFirstByte = gate<number[]>()
    const url = await start((app) =>
      app.get('/stream', async (_req, res) => {
        await h.db.query(INSERT, [1, 'a'])
        res.setHeader('content-type', 'text/plain')
        // The write's callback runs once the bytes are out: after COMMIT.
        await new Promise<void>((resolve) => res.write('first\n', () => resolve()))
        const refused = await rejection(h.db.query(INSERT, [2, 'b']))
        res.end(`${(refused as Error).name}\n`)
      }),
    )
    const response = await fetch(`${url}/stream`)
    seenAtFirstByte.open(await items())
    expect(response.status).toBe(200)
    expect(await response.text()).toBe('first\nTransactionManagementError\n')
    expect(await seenAtFirstByte.wait).toEqual([1])
    expect(h.statements).toEqual(['BEGIN', INSERT, 'COMMIT'])
    expect(await items()).toEqual([1])
  })

  test('flushHeaders() (server-sent events) commits first', async () => {
    const url = await start((app) =>
      app.get('/events', async (_req, res) => {
        await h.db.query(INSERT, [1, 'a'])
        res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' })
        res.flushHeaders()
        for (const n of [1, 2, 3]) res.write(`data: ${n}\n\n`)
        res.end()
      }),
    )
    const response = await fetch(`${url}/events`)
    expect(await items()).toEqual([1]) // committed before the headers left
    expect(response.headers.get('content-type')).toBe('text/event-stream')
    expect(await response.text()).toBe('data: 1\n\ndata: 2\n\ndata: 3\n\n')
    expect(h.statements).toEqual(['BEGIN', INSERT, 'COMMIT'])
  })

  test('a piped stream larger than bufferLimitBytes: COMMIT first, then every byte, in order', async () => {
    const chunk = Buffer.alloc(64 * 1024, 'x')
    const chunks = 48 // 3 MiB: the pipe is paused past the limit while COMMIT is in flight
    const url = await start((app) =>
      app.get('/file', async (_req, res) => {
        await h.db.query(INSERT, [1, 'a'])
        res.setHeader('content-type', 'application/octet-stream')
        Readable.from(
          (function* () {
            for (let i = 0; i < chunks; i++) yield chunk
          })(),
        ).pipe(res)
      }),
    )
    const response = await fetch(`${url}/file`)
    expect(await items()).toEqual([1])
    expect((await response.arrayBuffer()).byteLength).toBe(chunk.length * chunks)
    expect(h.statements).toEqual(['BEGIN', INSERT, 'COMMIT'])
  })

  test('an early COMMIT that fails: nothing was sent, so the request gets a 500 instead', async () => {
    await h.admin.query("insert into tokens values ('taken')")
    const url = await start((app) =>
      app.get('/stream', async (_req, res) => {
        await h.db.query("insert into tokens values ('taken')")
        res.write('never sent\n')
        await new Promise((resolve) => setTimeout(resolve, 20))
        res.write('nor this\n')
        res.end()
      }),
    )
    const response = await fetch(`${url}/stream`)
    expect(response.status).toBe(500)
    expect(await response.json()).toMatchObject({ code: '23505' })
    expect(h.statements).toEqual(['BEGIN', "insert into tokens values ('taken')", 'COMMIT'])
  })
})

describe('opting out and per-route options', () => {
  test('nonAtomic(): the route runs in autocommit, so its insert stays although it then fails', async () => {
    const url = await start((app) =>
      app.post('/log', nonAtomic(), async () => {
        await h.db.query(INSERT, [1, 'kept'])
        throw new Error('after the insert')
      }),
    )
    expect(await post(`${url}/log`)).toMatchObject({ status: 500 })
    expect(h.statements).toEqual([INSERT])
    expect(await items()).toEqual([1])
  })

  test("atomicRoute(options) as a marker: the route's BEGIN carries its characteristics and SET LOCALs", async () => {
    const url = await start((app) =>
      app.get(
        '/report',
        atomicRoute({ isolationLevel: 'repeatable read', readOnly: true, statementTimeout: 5_000 }),
        async (_req, res) => {
          res.json((await h.db.query<{ n: number }>('select count(*)::int as n from items')).rows[0])
        },
      ),
    )
    const response = await fetch(`${url}/report`)
    expect(await response.json()).toEqual({ n: 0 })
    expect(h.statements).toEqual([
      'BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY',
      'SET LOCAL statement_timeout = 5000',
      'select count(*)::int as n from items',
      'COMMIT',
    ])
  })

  test('atomicRoute(options) without atomicRequests(): the route gets request blocks of its own', async () => {
    const url = await start(
      (app) =>
        app.post('/items', atomicRoute({ name: 'create-item' }), async (_req, res) => {
          await h.db.query(INSERT, [1, 'a'])
          res.status(500).json({ failed: true })
        }),
      { bare: true },
    )
    expect(await post(`${url}/items`)).toMatchObject({ status: 500, body: { failed: true } })
    expect(h.statements).toEqual(['BEGIN', INSERT, 'ROLLBACK'])
    expect(statementEvents.map((e) => [e.kind, e.name])).toEqual([
      ['begin', 'create-item'],
      ['rollback', 'create-item'],
    ])
  })

  test('a marker after a statement already ran in the request: TransactionManagementError, ROLLBACK', async () => {
    const url = await start((app) => {
      app.use(async (_req, _res, next) => {
        await h.db.query('select 1')
        next()
      })
      app.get('/late', atomicRoute({ readOnly: true }), (_req, res) => void res.json({ reached: true }))
      app.get('/late-opt-out', nonAtomic(), (_req, res) => void res.json({ reached: true }))
    })
    for (const path of ['/late', '/late-opt-out']) {
      const response = await fetch(`${url}${path}`)
      const marker = path === '/late' ? 'atomicRoute()' : 'nonAtomic()'
      expect({ status: response.status, body: await response.json() }).toEqual({
        status: 500,
        body: {
          error: 'TransactionManagementError',
          message:
            `${marker} must run before the first statement of the request: a middleware before it ` +
            "already ran a statement in the request's transaction, which was begun with the " +
            `application's options. Put ${marker} before that middleware, or give its options to ` +
            'the application-wide middleware.',
        },
      })
    }
    expect(h.statements).toEqual(['BEGIN', 'select 1', 'ROLLBACK', 'BEGIN', 'select 1', 'ROLLBACK'])
  })

  test('options are validated when the middleware is created, before any request', () => {
    const cases: Array<[() => unknown, string, string]> = [
      [
        () => atomicRoute({ durable: true } as never),
        'durable',
        'Option "durable" is not accepted by atomicRoute(). durable is meaningless for a request block: it ' +
          'is always the outermost block of its database, so leaving it always commits. Remove the option.',
      ],
      [
        () => atomicRoute({ using: 'reports' } as never),
        'using',
        'Option "using" is not accepted by atomicRoute(). List the databases that get a request block ' +
          'with the databases option, e.g. databases: ["reports"].',
      ],
      [
        () => atomicRoute({ isolation: 'serializable' } as never),
        'isolation',
        'Unknown option "isolation" for atomicRoute(). The accepted options are: databases, rollbackOn, ' +
          'bufferLimitBytes, isolationLevel, readOnly, deferrable, statementTimeout, lockTimeout, ' +
          'idleInTransactionSessionTimeout, retry, name.',
      ],
      [
        () => atomicRequests({ isolationLevel: 'snapshot' as never }),
        'isolationLevel',
        'Invalid option "isolationLevel" for atomicRequests(): it must be one of \'read committed\', ' +
          "'repeatable read', 'serializable', 'read uncommitted'.",
      ],
      [
        () => atomicRequests({ databases: [] }),
        'databases',
        'Invalid option "databases" for atomicRequests(): it must be a non-empty list of distinct database ' +
          'aliases such as ["default", "reports"].',
      ],
      [
        () => atomicRequests({ retry: 3 } as never),
        'retry',
        'retry is not accepted by atomicRequests(): a middleware cannot run a route handler again. Give ' +
          'the routes that may be retried their handler through atomicRoute({ retry: 3 }, handler).',
      ],
      [
        () => atomicRoute({ retry: 3 }),
        'retry',
        'retry needs the handler, which a route marker cannot run again: pass the handler to ' +
          'atomicRoute({ retry: 3 }, handler) instead of listing it after atomicRoute(options).',
      ],
    ]
    for (const [create, field, message] of cases) {
      const error = thrown(create)
      expect(error).toBeInstanceOf(InvalidOptionError)
      expect(error).toMatchObject({ name: 'InvalidOptionError', field, message })
    }
  })
})
