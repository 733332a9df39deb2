/**
 * pg-atomic/express (issue 9 §1–§3): a real Express 5 app on a loopback port, real HTTP requests
 * through Node's fetch, a real PostgreSQL. Exact statements, rows and responses are checked for
 * each way a request can end.
 */
import diagnostics_channel from 'node:diagnostics_channel'
import { Readable } from 'node:stream'
import express from 'express'
import type { ErrorRequestHandler, Express } from 'express'
import { createDatabase, inAtomicBlock, InvalidOptionError, STATEMENT_CHANNEL, onCommit, setRollback } from 'pg-atomic'
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
    create table doctors (name text primary key, on_call boolean not null);
  `)
  diagnostics_channel.subscribe(STATEMENT_CHANNEL, onStatement)
})
afterAll(async () => {
  diagnostics_channel.unsubscribe(STATEMENT_CHANNEL, onStatement)
  await h.close()
})
beforeEach(async () => {
  await h.admin.query('truncate items, tokens, accounts, doctors; insert into accounts values (1, 100)')
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
    const url = await start((app) =>
      app.post('/items', async (req, res) => {
        const { id } = req.body as { id: number }
        await h.db.query(INSERT, [id, 'a'])
        await h.db.query(INSERT, [id + 1, 'b'])
        res.status(201).json({ id })
      }),
    )
    const response = await post(`${url}/items`, { id: 1 })
    expect(response).toMatchObject({ status: 201, body: { id: 1 } })
    expect(await items()).toEqual([1, 2])
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

  test('a 5xx answered by the handler itself rolls back, and that response is sent as it is', async () => {
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
      const url = await start(
        (app) => {
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
        },
        { bare: true },
      )
      const response = await post(`${url}/tokens`)
      // pg's DatabaseError, as COMMIT raised it (its name is 'error').
      expect(response).toMatchObject({ status: 500, body: { code: '23505' } })
      expect(response.headers.get('set-cookie')).toBeNull()
      expect(response.headers.get('x-request-id')).toBe('r-1')
      expect(h.statements).toEqual(['BEGIN', "insert into tokens values ('taken')", 'COMMIT'])
      expect(await h.column('select count(*)::int from tokens')).toEqual([1])
    },
  )

  test('the same under a route marker, and under a wrapped handler: the error handler answers', async () => {
    await h.admin.query("insert into tokens values ('taken')")
    const handler = async (_req: express.Request, res: express.Response) => {
      await h.db.query("insert into tokens values ('taken')")
      res.status(201).json({ created: true })
    }
    const url = await start(
      (app) => {
        app.post('/marker', atomicRoute({ name: 'marker' }), handler)
        app.post('/wrapped', atomicRoute({ name: 'wrapped' }, handler))
      },
      { bare: true },
    )
    for (const path of ['/marker', '/wrapped']) {
      expect(await post(`${url}${path}`)).toMatchObject({ status: 500, body: { code: '23505' } })
    }
    expect(await h.column('select count(*)::int from tokens')).toEqual([1])
  })

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
        body: {
          error: 'CommitOutcomeUnknownError',
          message: expect.stringContaining('may or may not have been committed'),
        },
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

  test("a marker's options are merged over the application's", async () => {
    const app = express()
    app.use(atomicRequests({ statementTimeout: 1_000, isolationLevel: 'repeatable read' }))
    app.get('/report', atomicRoute({ readOnly: true, isolationLevel: 'serializable' }), async (_req, res) => {
      res.json((await h.db.query('select 1 as one')).rows[0])
    })
    served = await serve(app)
    expect(await (await fetch(`${served.url}/report`)).json()).toEqual({ one: 1 })
    expect(h.statements).toEqual([
      'BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY',
      'SET LOCAL statement_timeout = 1000',
      'select 1 as one',
      'COMMIT',
    ])
  })

  test(
    'atomicRoute(options, handler): its error rolls back whatever the error handler answers, and ' +
      'the error handler runs after the ROLLBACK, outside the request blocks',
    async () => {
      class NotFound extends Error {
        override name = 'NotFound'
      }
      const seenByErrorHandler: unknown[] = []
      const app = express()
      app.use(atomicRequests())
      app.delete(
        '/items/:id',
        atomicRoute({}, async () => {
          await h.db.query(INSERT, [1, 'a'])
          throw new NotFound('no such item')
        }),
      )
      app.use(((error, _req, res, _next) => {
        seenByErrorHandler.push(error, inAtomicBlock(), [...h.statements])
        res.status(404).json({ error: (error as Error).name })
      }) as ErrorRequestHandler)
      served = await serve(app)
      const response = await fetch(`${served.url}/items/1`, { method: 'DELETE' })
      expect({ status: response.status, body: await response.json() }).toEqual({
        status: 404,
        body: { error: 'NotFound' },
      })
      expect(seenByErrorHandler).toEqual([expect.any(NotFound), false, ['BEGIN', INSERT, 'ROLLBACK']])
      expect(await items()).toEqual([])
    },
  )

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

describe('serialization failures, with and without route retry', () => {
  const SELECT_1 = 'select balance from accounts where id = 1'
  const UPDATE_1 = 'update accounts set balance = $1 where id = 1'
  const BEGIN_RR = 'BEGIN ISOLATION LEVEL REPEATABLE READ'

  /**
   * A debit in a repeatable-read request: reads account 1; on the first run another session
   * changes it and commits; the write then fails with a real 40001.
   */
  function debit(runs: string[], emails: number[]) {
    return async (req: express.Request, res: express.Response): Promise<void> => {
      const run = runs.length + 1
      runs.push(`run ${run}`)
      res.setHeader('x-run', String(run))
      if (run === 1) res.cookie('first-run', 'only') // discarded with the first run's response
      const { rows } = await h.db.query<{ balance: number }>(SELECT_1)
      if (run === 1) await h.admin.query('update accounts set balance = balance + 1 where id = 1')
      const balance = (rows[0] as { balance: number }).balance - (req.body as { cents: number }).cents
      await h.db.query(UPDATE_1, [balance])
      onCommit(() => void emails.push(balance))
      res.json({ balance })
    }
  }

  test('without retry: the 40001 reaches the error handler, the request rolls back (500)', async () => {
    const runs: string[] = []
    const emails: number[] = []
    const url = await start((app) =>
      app.post('/debit', atomicRoute({ isolationLevel: 'repeatable read' }), debit(runs, emails)),
    )
    const response = await post(`${url}/debit`, { cents: 10 })
    expect(response).toMatchObject({ status: 500, body: { code: '40001' } })
    expect(runs).toEqual(['run 1'])
    expect(emails).toEqual([])
    expect(h.statements).toEqual([BEGIN_RR, SELECT_1, UPDATE_1, 'ROLLBACK'])
    expect(await h.column('select balance from accounts')).toEqual([101])
  })

  test(
    'atomicRoute({ retry }, handler): the handler runs again with the same body; the first ' +
      "run's headers and cookie never leave; one email, after the COMMIT that succeeded",
    async () => {
      const runs: string[] = []
      const emails: number[] = []
      const route = atomicRoute(
        { isolationLevel: 'repeatable read', retry: { maxAttempts: 3, baseDelayMs: 0 } },
        debit(runs, emails),
      )
      const url = await start((app) => app.post('/debit', route))
      const response = await post(`${url}/debit`, { cents: 10 })
      expect(response).toMatchObject({ status: 200, body: { balance: 91 } })
      expect(response.headers.get('x-run')).toBe('2')
      expect(response.headers.get('set-cookie')).toBeNull()
      expect(runs).toEqual(['run 1', 'run 2'])
      expect(emails).toEqual([91])
      expect(h.statements).toEqual([BEGIN_RR, SELECT_1, UPDATE_1, 'ROLLBACK', BEGIN_RR, SELECT_1, UPDATE_1, 'COMMIT'])
      expect(await h.column('select balance from accounts')).toEqual([91])
    },
  )

  test(
    'a 40001 raised by COMMIT (write skew): the held 200 of the first run is discarded, the retry ' + 'commits',
    async () => {
      await h.admin.query("insert into doctors values ('alice', true), ('bob', true)")
      const other = await h.admin.connect()
      const SELECT = 'select count(*)::int as n from doctors where on_call'
      const UPDATE = "update doctors set on_call = false where name = 'bob'"
      let run = 0
      try {
        await other.query('begin isolation level serializable')
        await other.query(SELECT)
        const route = atomicRoute({ isolationLevel: 'serializable', retry: 2 }, async (_req, res: express.Response) => {
          const n = ++run
          const count = ((await h.db.query<{ n: number }>(SELECT)).rows[0] as { n: number }).n
          if (n === 1) await other.query("update doctors set on_call = false where name = 'alice'")
          if (count >= 2) await h.db.query(UPDATE)
          if (n === 1) await other.query('commit')
          res.json({ run: n, onCall: count })
        })
        const url = await start((app) => app.post('/off-call', route))
        expect(await post(`${url}/off-call`)).toMatchObject({ status: 200, body: { run: 2, onCall: 1 } })
      } finally {
        other.release()
      }
      const BEGIN_SER = 'BEGIN ISOLATION LEVEL SERIALIZABLE'
      expect(h.statements).toEqual([BEGIN_SER, SELECT, UPDATE, 'COMMIT', BEGIN_SER, SELECT, 'COMMIT'])
    },
  )

  test('retry stops once the handler passed the request on with next()', async () => {
    let runs = 0
    const route = atomicRoute({ isolationLevel: 'repeatable read', retry: 3 }, async (_req, _res, next) => {
      runs++
      await h.db.query('select raise_sqlstate($1)', ['40001']).catch(() => undefined)
      next()
    })
    await h.admin.query(`
      create or replace function raise_sqlstate(code text) returns void language plpgsql as
        $$ begin raise exception 'raised %', code using errcode = code; end $$`)
    const url = await start((app) => {
      app.post('/passed-on', route, (_req, res) => void res.json({ answered: 'by the next handler' }))
    })
    // The swallowed 40001 dooms the block: its 200 cannot be sent, and the request is not run again.
    expect(await post(`${url}/passed-on`)).toMatchObject({ status: 500, body: { error: 'TransactionManagementError' } })
    expect(runs).toBe(1)
  })
})

describe('the client goes away, hooks, several databases', () => {
  test('a client that disconnects mid-request: ROLLBACK at once, nothing idle in transaction', async () => {
    const inserted = gate()
    const resume = gate()
    const later = gate<unknown>()
    const url = await start((app) =>
      app.post('/slow', async (_req, res) => {
        await h.db.query(INSERT, [1, 'a'])
        inserted.open()
        await resume.wait
        later.open(await rejection(h.db.query(INSERT, [2, 'b'])))
        res.json({ unreachable: true })
      }),
    )
    const controller = new AbortController()
    const request = fetch(`${url}/slow`, { method: 'POST', signal: controller.signal })
    await inserted.wait
    controller.abort()
    await expect(request).rejects.toMatchObject({ name: 'AbortError' })
    await waitUntil(() => h.statements.includes('ROLLBACK'), 'the request to roll back')
    expect(await idleInTransaction()).toEqual([])
    resume.open()
    expect(await later.wait).toMatchObject({ name: 'TransactionManagementError' })
    expect(h.statements).toEqual(['BEGIN', INSERT, 'ROLLBACK'])
    expect(await items()).toEqual([])
  })

  test('onCommit hooks run after COMMIT; the response does not wait for them', async () => {
    const hookMayFinish = gate()
    const sent: string[] = []
    const url = await start((app) =>
      app.post('/items', async (_req, res) => {
        await h.db.query(INSERT, [1, 'a'])
        onCommit(async () => {
          await hookMayFinish.wait
          sent.push('welcome email')
        })
        res.status(201).json({ id: 1 })
      }),
    )
    expect(await post(`${url}/items`)).toMatchObject({ status: 201 })
    expect(sent).toEqual([]) // the response arrived while the hook was still running
    hookMayFinish.open()
    await waitUntil(() => sent.length === 1, 'the hook to finish')
    expect(sent).toEqual(['welcome email'])
  })

  test('a failing onCommit hook never changes the committed response: it is logged', async () => {
    const url = await start((app) =>
      app.post('/items', async (_req, res) => {
        await h.db.query(INSERT, [1, 'a'])
        onCommit(function sendEmail() {
          throw new Error('mail server down')
        })
        res.status(201).json({ id: 1 })
      }),
    )
    expect(await post(`${url}/items`)).toMatchObject({ status: 201, body: { id: 1 } })
    await waitUntil(() => logged.length === 1, 'the hook failure to be logged')
    expect(logged[0]?.message).toBe(
      "The request's transaction was committed and its response released, but an onCommit hook " +
        'failed and the hooks after it were not run; the error is attached. The response was not ' +
        'changed and the request was not retried: its data is committed.',
    )
    expect(logged[0]?.error).toMatchObject({ name: 'OnCommitHookError', committed: true })
    expect(await items()).toEqual([1])
  })

  describe('two databases', () => {
    let reports: ReturnType<typeof createDatabase>
    beforeAll(() => {
      reports = createDatabase({ connectionString: h.testDb.url, alias: 'web_reports', max: 2 })
    })
    afterAll(() => reports.close())

    const events = () => statementEvents.filter((e) => e.kind !== 'set-local').map((e) => `${e.database}: ${e.kind}`)

    test('each commits with the request, in the order listed (the first is innermost)', async () => {
      const app = express()
      app.use(atomicRequests({ databases: ['default', 'web_reports'] }))
      app.post('/both', async (_req, res) => {
        await h.db.query(INSERT, [1, 'main'])
        await reports.query(INSERT, [2, 'report'])
        res.status(201).json({ ok: true })
      })
      served = await serve(app)
      expect(await post(`${served.url}/both`)).toMatchObject({ status: 201 })
      expect(events()).toEqual(['default: begin', 'web_reports: begin', 'default: commit', 'web_reports: commit'])
      expect(await items()).toEqual([1, 2])
    })

    test('setRollback(true) (which marks the innermost block) rolls back every database of the request', async () => {
      const app = express()
      app.use(atomicRequests({ databases: ['default', 'web_reports'] }))
      app.post('/both', async (_req, res) => {
        await h.db.query(INSERT, [1, 'main'])
        await reports.query(INSERT, [2, 'report'])
        setRollback(true)
        res.json({ dryRun: true })
      })
      served = await serve(app)
      expect(await post(`${served.url}/both`)).toMatchObject({ status: 200, body: { dryRun: true } })
      expect(events()).toEqual(['default: begin', 'web_reports: begin', 'default: rollback', 'web_reports: rollback'])
      expect(await items()).toEqual([])
    })
  })
})

describe('200 requests, 8 at a time, with a mix of outcomes', () => {
  test('committed rows, sent emails and 2xx responses match exactly', async () => {
    const KINDS = ['commit', 'throw', 'commit fails', 'answers 503', 'no statement'] as const
    const kindOf = (id: number) => KINDS[id % KINDS.length] as (typeof KINDS)[number]
    const ids = Array.from({ length: 200 }, (_, i) => i + 1)
    for (const id of ids)
      if (kindOf(id) === 'commit fails') await h.admin.query('insert into tokens values ($1)', [`t${id}`])
    const emails: number[] = []
    const url = await start((app) =>
      app.post('/orders/:id', async (req, res) => {
        const id = Number(req.params['id'])
        const kind = kindOf(id)
        if (kind === 'no statement') {
          res.status(200).json({ id, kind })
          return
        }
        await h.db.query(INSERT, [id, kind])
        onCommit(() => void emails.push(id))
        if (kind === 'throw') throw new Error('the handler failed')
        if (kind === 'commit fails') await h.db.query('insert into tokens values ($1)', [`t${id}`])
        res.status(kind === 'answers 503' ? 503 : 201).json({ id, kind })
      }),
    )
    const statuses = new Map<number, number>()
    const queue = [...ids]
    await Promise.all(
      Array.from({ length: 8 }, async () => {
        for (let id = queue.shift(); id !== undefined; id = queue.shift()) {
          const response = await post(`${url}/orders/${id}`)
          statuses.set(id, response.status)
        }
      }),
    )
    const succeeded = ids.filter((id) => (statuses.get(id) as number) < 300 && kindOf(id) !== 'no statement')
    expect(succeeded).toEqual(ids.filter((id) => kindOf(id) === 'commit'))
    expect(await items()).toEqual(succeeded)
    expect([...emails].sort((a, b) => a - b)).toEqual(succeeded)
    expect(ids.filter((id) => kindOf(id) === 'no statement').every((id) => statuses.get(id) === 200)).toBe(true)
    expect(
      ids
        .filter((id) => kindOf(id) !== 'commit' && kindOf(id) !== 'no statement')
        .every((id) => (statuses.get(id) as number) >= 500),
    ).toBe(true)
  })
})
