/**
 * pg-atomic/fastify (issue 9 §1–§3): a real Fastify 5 app on a loopback port, real HTTP requests
 * through Node's fetch, a real PostgreSQL. Exact statements, rows and responses are checked for
 * each way a request can end.
 */
import diagnostics_channel from 'node:diagnostics_channel'
import { Readable } from 'node:stream'
import Fastify from 'fastify'
import type { FastifyInstance } from 'fastify'
import { Kysely, PostgresDialect } from 'kysely'
import { createDatabase, inAtomicBlock, InvalidOptionError, onCommit, setRollback, STATEMENT_CHANNEL } from 'pg-atomic'
import type { StatementEvent } from 'pg-atomic'
import { atomicRequests } from 'pg-atomic/fastify'
import type { AtomicRequestsOptions } from 'pg-atomic/fastify'
import { startFaultProxy, targetOf } from '../support/fault-proxy'
import { setupHarness, rejection } from '../support/harness'
import type { Harness } from '../support/harness'
import { waitUntil } from '../support/wait'
import { gate } from './server'

let h: Harness
let app: FastifyInstance | undefined
const logged: Array<{ message: string; error: unknown }> = []
const statementEvents: StatementEvent[] = []
const onStatement = (message: unknown): void => {
  statementEvents.push(message as StatementEvent)
}

beforeAll(async () => {
  h = await setupHarness('web_fastify', {
    logger: { error: (message: string, error?: unknown) => void logged.push({ message, error }) },
  })
  await h.admin.query(`
    create table items (id int primary key, name text not null);
    -- Checked at COMMIT: a duplicate passes the INSERT and fails the COMMIT.
    create table tokens (token text not null, constraint tokens_token_key unique (token) deferrable initially deferred);
    create table accounts (id int primary key, balance int not null);
    create table doctors (name text primary key, on_call boolean not null);
    create or replace function raise_sqlstate(code text) returns void language plpgsql as
      $$ begin raise exception 'raised %', code using errcode = code; end $$;
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
  await app?.close()
  app = undefined
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

/** A Fastify app with the plugin (and `options`), the routes `define` adds, listening on a free loopback port. */
async function start(define: (app: FastifyInstance) => void, options: AtomicRequestsOptions = {}): Promise<string> {
  app = Fastify({ logger: false, forceCloseConnections: true })
  await app.register(atomicRequests, options)
  define(app)
  return app.listen({ port: 0, host: '127.0.0.1' })
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
  test('a handler that succeeds: BEGIN rides with its first statement, COMMIT before the reply', async () => {
    const url = await start((app) =>
      app.post('/items', async (request, reply) => {
        const { id } = request.body as { id: number }
        await h.db.query(INSERT, [id, 'a'])
        await h.db.query(INSERT, [id + 1, 'b'])
        return reply.code(201).send({ id, inBlock: inAtomicBlock() })
      }),
    )
    expect(await post(`${url}/items`, { id: 1 })).toMatchObject({ status: 201, body: { id: 1, inBlock: true } })
    expect(await items()).toEqual([1, 2])
    expect(h.statements).toEqual(['BEGIN', INSERT, INSERT, 'COMMIT'])
    expect(h.batches).toEqual([['BEGIN', INSERT], [INSERT], ['COMMIT']])
  })

  test('handler styles: a returned value, reply.send() without return, a callback-style handler', async () => {
    const url = await start((app) => {
      app.post('/returned', async () => {
        await h.db.query(INSERT, [1, 'returned'])
        return { style: 'returned' }
      })
      app.post('/sent', async (_request, reply) => {
        await h.db.query(INSERT, [2, 'sent'])
        void reply.send({ style: 'sent without return' }) // the onSend hook waits: no second reply
      })
      app.post('/callback', (_request, reply) => {
        h.db.query(INSERT, [3, 'callback']).then(
          () => void reply.send({ style: 'callback' }),
          (error: unknown) => void reply.send(error),
        )
      })
      app.post('/empty', async () => {
        await h.db.query(INSERT, [4, 'empty'])
      })
    })
    expect(await post(`${url}/returned`)).toMatchObject({ status: 200, body: { style: 'returned' } })
    expect(await post(`${url}/sent`)).toMatchObject({ status: 200, body: { style: 'sent without return' } })
    expect(await post(`${url}/callback`)).toMatchObject({ status: 200, body: { style: 'callback' } })
    expect(await post(`${url}/empty`)).toMatchObject({ status: 200, body: undefined })
    expect(await items()).toEqual([1, 2, 3, 4])
    expect(h.statements.filter((s) => s === 'COMMIT')).toHaveLength(4)
  })

  test("a thrown (rejected) handler: ROLLBACK, then Fastify's error handler answers 500 with the error", async () => {
    const seenByErrorHandler: unknown[] = []
    const url = await start((app) => {
      app.setErrorHandler((error, _request, reply) => {
        seenByErrorHandler.push(inAtomicBlock(), [...h.statements])
        return reply.code(500).send({ error: (error as Error).name, message: (error as Error).message })
      })
      app.post('/items', async () => {
        await h.db.query(INSERT, [1, 'a'])
        throw new Error('the handler failed')
      })
    })
    expect(await post(`${url}/items`)).toMatchObject({
      status: 500,
      body: { error: 'Error', message: 'the handler failed' },
    })
    expect(h.statements).toEqual(['BEGIN', INSERT, 'ROLLBACK'])
    // The error handler runs after the ROLLBACK, outside the request blocks.
    expect(seenByErrorHandler).toEqual([false, ['BEGIN', INSERT, 'ROLLBACK']])
    expect(await items()).toEqual([])
  })

  test('a thrown error whose status is 4xx still rolls back (the handler failed)', async () => {
    const url = await start((app) =>
      app.delete('/items/:id', async () => {
        await h.db.query(INSERT, [1, 'a'])
        throw Object.assign(new Error('no such item'), { statusCode: 404 })
      }),
    )
    const response = await fetch(`${url}/items/1`, { method: 'DELETE' })
    expect(response.status).toBe(404)
    expect(await response.json()).toMatchObject({ message: 'no such item' })
    expect(h.statements).toEqual(['BEGIN', INSERT, 'ROLLBACK'])
  })

  test('a 5xx answered by the handler itself rolls back, and that reply is sent as it is', async () => {
    const url = await start((app) =>
      app.post('/items', async (_request, reply) => {
        await h.db.query(INSERT, [1, 'a'])
        return reply.code(503).header('x-handler', 'kept').send({ retryLater: true })
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
      app.post('/dry-run', async () => {
        await h.db.query(INSERT, [1, 'a'])
        setRollback(true)
        return { dryRun: true }
      }),
    )
    expect(await post(`${url}/dry-run`)).toMatchObject({ status: 200, body: { dryRun: true } })
    expect(h.statements).toEqual(['BEGIN', INSERT, 'ROLLBACK'])
    expect(await items()).toEqual([])
  })

  test('rollbackOn: (status) => status >= 400 rolls a 422 back, and sends it', async () => {
    const url = await start(
      (app) =>
        app.post('/items', async (_request, reply) => {
          await h.db.query(INSERT, [1, 'a'])
          return reply.code(422).send({ invalid: true })
        }),
      { rollbackOn: (status) => status >= 400 },
    )
    expect(await post(`${url}/items`)).toMatchObject({ status: 422, body: { invalid: true } })
    expect(h.statements).toEqual(['BEGIN', INSERT, 'ROLLBACK'])
  })

  test('a request that runs no statement sends nothing and checks out no connection', async () => {
    const acquired = jest.fn()
    h.pool.on('acquire', acquired)
    try {
      const url = await start((app) => app.get('/ping', async () => ({ pong: true })))
      expect(await (await fetch(`${url}/ping`)).json()).toEqual({ pong: true })
      const missing = await fetch(`${url}/missing`)
      expect(missing.status).toBe(404)
      await missing.text()
    } finally {
      h.pool.off('acquire', acquired)
    }
    expect(acquired).not.toHaveBeenCalled()
    expect(h.statements).toEqual([])
  })

  test('Kysely statements on db.pool commit and roll back with the request', async () => {
    interface Tables {
      items: { id: number; name: string }
    }
    // Not destroyed afterwards: that would end db.pool, which closes the harness's database.
    const kysely = new Kysely<Tables>({ dialect: new PostgresDialect({ pool: h.db.pool }) })
    {
      const url = await start((app) =>
        app.post('/kysely/:id', async (request, reply) => {
          const id = Number((request.params as { id: string }).id)
          await kysely.insertInto('items').values({ id, name: 'kysely' }).execute()
          await kysely.transaction().execute(async (trx) => {
            await trx
              .insertInto('items')
              .values({ id: id + 100, name: 'kysely transaction' })
              .execute()
          })
          if (id === 2) throw new Error('the handler failed after Kysely')
          return reply.code(201).send({ id })
        }),
      )
      expect(await post(`${url}/kysely/1`)).toMatchObject({ status: 201 })
      expect(await post(`${url}/kysely/2`)).toMatchObject({ status: 500 })
    }
    expect(await items()).toEqual([1, 101])
    const KINSERT = 'insert into "items" ("id", "name") values ($1, $2)'
    // Kysely's transaction is a savepoint of the request's; its RELEASE is deferred into COMMIT.
    const once = ['BEGIN', KINSERT, 'SAVEPOINT "pga_1"', KINSERT]
    expect(h.statements).toEqual([...once, 'COMMIT', ...once, 'ROLLBACK'])
  })
})

describe('no success before COMMIT', () => {
  test(
    'a deferred unique constraint failing at COMMIT: the held 201 and its cookie are discarded, the ' +
      "error reaches Fastify's error handler (500), nothing is committed",
    async () => {
      await h.admin.query("insert into tokens values ('taken')")
      const url = await start((app) => {
        app.addHook('onRequest', async (_request, reply) => {
          void reply.header('x-request-id', 'r-1') // set before the handler: kept
        })
        app.post('/tokens', async (_request, reply) => {
          await h.db.query("insert into tokens values ('taken')")
          return reply.code(201).header('set-cookie', 'session=granted').send({ created: true })
        })
      })
      const response = await post(`${url}/tokens`)
      // pg's DatabaseError, as COMMIT raised it, through Fastify's default error handler.
      expect(response).toMatchObject({ status: 500, body: { statusCode: 500, code: '23505' } })
      expect(response.headers.get('set-cookie')).toBeNull()
      expect(response.headers.get('x-request-id')).toBe('r-1')
      expect(h.statements).toEqual(['BEGIN', "insert into tokens values ('taken')", 'COMMIT'])
      expect(await h.column('select count(*)::int from tokens')).toEqual([1])
    },
  )

  test('an error handler that answers 200 to a failed COMMIT is turned into a 500', async () => {
    await h.admin.query("insert into tokens values ('taken')")
    const url = await start((app) => {
      app.setErrorHandler((_error, _request, reply) => reply.code(200).send({ ok: 'surely' }))
      app.post('/tokens', async () => {
        await h.db.query("insert into tokens values ('taken')")
        return { created: true }
      })
    })
    expect((await post(`${url}/tokens`)).status).toBe(500)
  })

  test('CommitOutcomeUnknownError: a 500 whose message says the outcome is unknown', async () => {
    // The COMMIT's answer never arrives: the connection to PostgreSQL is destroyed as it is sent.
    const proxy = await startFaultProxy(targetOf(h.testDb.directUrl))
    const db = createDatabase({
      connectionString: proxy.urlFor(h.testDb.directUrl),
      alias: 'web_fastify_unknown',
      max: 1,
      logger: { error: () => undefined },
    })
    try {
      const url = await start(
        (app) =>
          app.post('/items', async (_request, reply) => {
            await db.query(INSERT, [7, 'maybe'])
            return reply.code(201).send({ created: true })
          }),
        { databases: ['web_fastify_unknown'] },
      )
      void proxy.armCommitFault('response-lost')
      expect(await post(`${url}/items`)).toMatchObject({
        status: 500,
        body: {
          statusCode: 500,
          message: expect.stringContaining('may or may not have been committed'),
        },
      })
    } finally {
      await app?.close()
      app = undefined
      await db.close({ timeoutMs: 0 })
      await proxy.close()
    }
  })
})

describe('streaming: COMMIT before the first byte, then the stream', () => {
  test('reply.send(stream): COMMIT first, then every byte, in order', async () => {
    const chunk = Buffer.alloc(64 * 1024, 'x')
    const chunks = 48 // 3 MiB
    const url = await start((app) =>
      app.get('/file', async (_request, reply) => {
        await h.db.query(INSERT, [1, 'a'])
        const stream = Readable.from(
          (function* () {
            for (let i = 0; i < chunks; i++) yield chunk
          })(),
        )
        return reply.type('application/octet-stream').send(stream)
      }),
    )
    const response = await fetch(`${url}/file`)
    expect(await items()).toEqual([1]) // committed before the headers left
    expect((await response.arrayBuffer()).byteLength).toBe(chunk.length * chunks)
    expect(h.statements).toEqual(['BEGIN', INSERT, 'COMMIT'])
  })

  test('reply.raw.write() (server-sent events): COMMIT at the first byte; a later statement is refused', async () => {
    const url = await start((app) =>
      app.get('/events', async (_request, reply) => {
        await h.db.query(INSERT, [1, 'a'])
        reply.hijack()
        reply.raw.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' })
        // The write's callback runs once the bytes are out: after COMMIT.
        await new Promise<void>((resolve) => reply.raw.write('data: 1\n\n', () => resolve()))
        const refused = await rejection(h.db.query(INSERT, [2, 'b']))
        reply.raw.write(`data: ${(refused as Error).name}\n\n`)
        reply.raw.end()
      }),
    )
    const response = await fetch(`${url}/events`)
    expect(await items()).toEqual([1])
    expect(response.headers.get('content-type')).toBe('text/event-stream')
    expect(await response.text()).toBe('data: 1\n\ndata: TransactionManagementError\n\n')
    expect(h.statements).toEqual(['BEGIN', INSERT, 'COMMIT'])
  })

  test('an early COMMIT that fails before any byte left: the request gets a 500 instead', async () => {
    await h.admin.query("insert into tokens values ('taken')")
    const url = await start((app) =>
      app.get('/stream', async (_request, reply) => {
        await h.db.query("insert into tokens values ('taken')")
        reply.hijack()
        reply.raw.write('never sent\n')
        await new Promise((resolve) => setTimeout(resolve, 50))
        reply.raw.end('nor this\n')
      }),
    )
    const response = await fetch(`${url}/stream`)
    expect(response.status).toBe(500)
    expect(await response.text()).toBe('The request failed, and its transaction was not committed.\n')
    expect(await h.column('select count(*)::int from tokens')).toEqual([1])
  })
})

describe('route options through config.atomic', () => {
  test('config: { atomic: false } runs the route in autocommit: no BEGIN, each statement on its own', async () => {
    const url = await start((app) =>
      app.post('/log', { config: { atomic: false } }, async () => {
        await h.db.query(INSERT, [1, 'a'])
        await rejection(h.db.query(INSERT, [1, 'duplicate']))
        return { inBlock: inAtomicBlock() }
      }),
    )
    expect(await post(`${url}/log`)).toMatchObject({ status: 200, body: { inBlock: false } })
    expect(h.statements).toEqual([INSERT, INSERT])
    expect(await items()).toEqual([1])
  })

  test("a route's options are merged over the plugin's: its BEGIN carries them", async () => {
    const url = await start(
      (app) =>
        app.get(
          '/report',
          { config: { atomic: { readOnly: true, isolationLevel: 'serializable', name: 'report' } } },
          async () => (await h.db.query('select 1 as one')).rows[0],
        ),
      { statementTimeout: 1_000, isolationLevel: 'repeatable read' },
    )
    expect(await (await fetch(`${url}/report`)).json()).toEqual({ one: 1 })
    expect(h.statements).toEqual([
      'BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY',
      'SET LOCAL statement_timeout = 1000',
      'select 1 as one',
      'COMMIT',
    ])
    expect(statementEvents.map((e) => [e.kind, e.name])).toContainEqual(['begin', 'report'])
  })

  test('routes of a plugin registered after it get request blocks too (not encapsulated)', async () => {
    const url = await start((app) => {
      void app.register(
        async (child) => {
          child.post('/items', async () => {
            await h.db.query(INSERT, [1, 'a'])
            throw new Error('rolled back')
          })
        },
        { prefix: '/child' },
      )
    })
    expect((await post(`${url}/child/items`)).status).toBe(500)
    expect(h.statements).toEqual(['BEGIN', INSERT, 'ROLLBACK'])
  })

  test('a route declared before the plugin fails loudly instead of running without a transaction', async () => {
    app = Fastify({ logger: false, forceCloseConnections: true })
    app.post('/early', async () => {
      await h.db.query(INSERT, [1, 'a'])
      return { ok: true }
    })
    app.post('/early-opted-out', { config: { atomic: false } }, async () => ({ ok: true }))
    await app.register(atomicRequests)
    const url = await app.listen({ port: 0, host: '127.0.0.1' })
    expect(await post(`${url}/early`)).toMatchObject({
      status: 500,
      body: {
        message:
          'The route POST /early was declared before the atomicRequests plugin of pg-atomic/fastify ' +
          'was registered, so it has no request transaction. Register the plugin first and wait for it ' +
          '(await app.register(atomicRequests)) before declaring routes, or give the route ' +
          'config: { atomic: false } to run it in autocommit.',
      },
    })
    expect(await post(`${url}/early-opted-out`)).toMatchObject({ status: 200 })
    expect(h.statements).toEqual([])
  })

  test('options are validated when the plugin is registered and when a route is declared', async () => {
    app = Fastify({ logger: false })
    await expect(app.register(atomicRequests, { isolationLevel: 'snapshot' as never })).rejects.toMatchObject({
      name: 'InvalidOptionError',
      field: 'isolationLevel',
      message:
        'Invalid option "isolationLevel" for the atomicRequests plugin: it must be one of ' +
        "'read committed', 'repeatable read', 'serializable', 'read uncommitted'.",
    })
    await app.close()
    app = Fastify({ logger: false })
    await expect(app.register(atomicRequests, { retry: 3 } as never)).rejects.toMatchObject({
      name: 'InvalidOptionError',
      field: 'retry',
      message:
        'retry is not accepted by the atomicRequests plugin: only the routes whose handlers may run ' +
        'again should. Give those routes config: { atomic: { retry: 3 } }, and keep their side effects ' +
        'in onCommit hooks.',
    })
    await app.close()
    app = Fastify({ logger: false })
    await app.register(atomicRequests)
    let error: unknown
    try {
      app.get('/durable', { config: { atomic: { durable: true } as never } }, async () => ({}))
    } catch (caught) {
      error = caught
    }
    expect(error).toBeInstanceOf(InvalidOptionError)
    expect(error).toMatchObject({
      field: 'durable',
      message:
        'Option "durable" is not accepted by the config.atomic of route GET /durable. durable is ' +
        'meaningless for a request block: it is always the outermost block of its database, so ' +
        'leaving it always commits. Remove the option.',
    })
  })
})

describe('serialization failures, with and without route retry', () => {
  const SELECT_1 = 'select balance from accounts where id = 1'
  const UPDATE_1 = 'update accounts set balance = $1 where id = 1'
  const BEGIN_RR = 'BEGIN ISOLATION LEVEL REPEATABLE READ'

  /** A debit in a repeatable-read request: on the first run another session changes the row first (a real 40001). */
  function debitRoute(app: FastifyInstance, atomic: object, runs: string[], emails: number[]): void {
    app.post('/debit', { config: { atomic } }, async (request, reply) => {
      const run = runs.length + 1
      runs.push(`run ${run}`)
      void reply.header('x-run', String(run))
      if (run === 1) void reply.header('set-cookie', 'first-run=only') // discarded with the first run's reply
      const { rows } = await h.db.query<{ balance: number }>(SELECT_1)
      if (run === 1) await h.admin.query('update accounts set balance = balance + 1 where id = 1')
      const balance = (rows[0] as { balance: number }).balance - (request.body as { cents: number }).cents
      await h.db.query(UPDATE_1, [balance])
      onCommit(() => void emails.push(balance))
      return { balance }
    })
  }

  test("without retry: the 40001 reaches Fastify's error handler, the request rolls back (500)", async () => {
    const runs: string[] = []
    const emails: number[] = []
    const url = await start((app) => debitRoute(app, { isolationLevel: 'repeatable read' }, runs, emails))
    expect(await post(`${url}/debit`, { cents: 10 })).toMatchObject({ status: 500, body: { code: '40001' } })
    expect(runs).toEqual(['run 1'])
    expect(emails).toEqual([])
    expect(h.statements).toEqual([BEGIN_RR, SELECT_1, UPDATE_1, 'ROLLBACK'])
    expect(await h.column('select balance from accounts')).toEqual([101])
  })

  test(
    "config.atomic.retry: the handler runs again with the same body; the first run's headers and " +
      'cookie never leave; one email, after the COMMIT that succeeded',
    async () => {
      const runs: string[] = []
      const emails: number[] = []
      const url = await start((app) =>
        debitRoute(app, { isolationLevel: 'repeatable read', retry: { maxAttempts: 3, baseDelayMs: 0 } }, runs, emails),
      )
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

  test("a 40001 raised by COMMIT (write skew): the first run's reply is discarded, the retry commits", async () => {
    await h.admin.query("insert into doctors values ('alice', true), ('bob', true)")
    const other = await h.admin.connect()
    const SELECT = 'select count(*)::int as n from doctors where on_call'
    const UPDATE = "update doctors set on_call = false where name = 'bob'"
    let run = 0
    try {
      await other.query('begin isolation level serializable')
      await other.query(SELECT)
      const url = await start((app) =>
        app.post(
          '/off-call',
          { config: { atomic: { isolationLevel: 'serializable', retry: 2 } } },
          async (_r, reply) => {
            const n = ++run
            const count = ((await h.db.query<{ n: number }>(SELECT)).rows[0] as { n: number }).n
            if (n === 1) await other.query("update doctors set on_call = false where name = 'alice'")
            if (count >= 2) await h.db.query(UPDATE)
            if (n === 1) await other.query('commit')
            void reply.header(`x-run-${n}`, 'yes')
            return { run: n, onCall: count }
          },
        ),
      )
      const response = await post(`${url}/off-call`)
      expect(response).toMatchObject({ status: 200, body: { run: 2, onCall: 1 } })
      expect(response.headers.get('x-run-1')).toBeNull()
    } finally {
      other.release()
    }
    const BEGIN_SER = 'BEGIN ISOLATION LEVEL SERIALIZABLE'
    expect(h.statements).toEqual([BEGIN_SER, SELECT, UPDATE, 'COMMIT', BEGIN_SER, SELECT, 'COMMIT'])
  })
})

describe('the client goes away, hooks, several databases', () => {
  test('a client that disconnects mid-request: ROLLBACK at once, nothing idle in transaction', async () => {
    const inserted = gate()
    const resume = gate()
    const later = gate<unknown>()
    const url = await start((app) =>
      app.post('/slow', async () => {
        await h.db.query(INSERT, [1, 'a'])
        inserted.open()
        await resume.wait
        later.open(await rejection(h.db.query(INSERT, [2, 'b'])))
        return { unreachable: true }
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

  test('onCommit hooks run after COMMIT; the reply does not wait for them; a failing one is logged', async () => {
    const hookMayFinish = gate()
    const sent: string[] = []
    const url = await start((app) =>
      app.post('/items', async (_request, reply) => {
        await h.db.query(INSERT, [1, 'a'])
        onCommit(async () => {
          await hookMayFinish.wait
          sent.push('welcome email')
        })
        onCommit(function sendInvoice() {
          throw new Error('mail server down')
        })
        return reply.code(201).send({ id: 1 })
      }),
    )
    expect(await post(`${url}/items`)).toMatchObject({ status: 201 })
    expect(sent).toEqual([]) // the reply arrived while the hook was still running
    hookMayFinish.open()
    await waitUntil(() => logged.length === 1, 'the hook failure to be logged')
    expect(sent).toEqual(['welcome email'])
    expect(logged[0]?.error).toMatchObject({ name: 'OnCommitHookError', committed: true })
    expect(await items()).toEqual([1])
  })

  describe('two databases', () => {
    let reports: ReturnType<typeof createDatabase>
    beforeAll(() => {
      reports = createDatabase({ connectionString: h.testDb.url, alias: 'web_fastify_reports', max: 2 })
    })
    afterAll(() => reports.close())

    const events = () => statementEvents.filter((e) => e.kind !== 'set-local').map((e) => `${e.database}: ${e.kind}`)

    test('each commits with the request, in the order listed (the first is innermost)', async () => {
      const url = await start(
        (app) =>
          app.post('/both', async (_request, reply) => {
            await h.db.query(INSERT, [1, 'main'])
            await reports.query(INSERT, [2, 'report'])
            return reply.code(201).send({ ok: true })
          }),
        { databases: ['default', 'web_fastify_reports'] },
      )
      expect(await post(`${url}/both`)).toMatchObject({ status: 201 })
      expect(events()).toEqual([
        'default: begin',
        'web_fastify_reports: begin',
        'default: commit',
        'web_fastify_reports: commit',
      ])
      expect(await items()).toEqual([1, 2])
    })

    test('a thrown handler rolls back every database of the request', async () => {
      const url = await start(
        (app) =>
          app.post('/both', async () => {
            await h.db.query(INSERT, [1, 'main'])
            await reports.query(INSERT, [2, 'report'])
            throw new Error('both roll back')
          }),
        { databases: ['default', 'web_fastify_reports'] },
      )
      expect((await post(`${url}/both`)).status).toBe(500)
      expect(events()).toEqual([
        'default: begin',
        'web_fastify_reports: begin',
        'default: rollback',
        'web_fastify_reports: rollback',
      ])
      expect(await items()).toEqual([])
    })
  })
})

describe('200 requests, 8 at a time, with a mix of outcomes', () => {
  test('committed rows, sent emails and 2xx responses match exactly', async () => {
    const KINDS = ['commit', 'throw', 'commit fails', 'answers 503', 'no statement', 'set rollback'] as const
    const kindOf = (id: number) => KINDS[id % KINDS.length] as (typeof KINDS)[number]
    const ids = Array.from({ length: 200 }, (_, i) => i + 1)
    for (const id of ids)
      if (kindOf(id) === 'commit fails') await h.admin.query('insert into tokens values ($1)', [`t${id}`])
    const emails: number[] = []
    const url = await start((app) =>
      app.post('/orders/:id', async (request, reply) => {
        const id = Number((request.params as { id: string }).id)
        const kind = kindOf(id)
        if (kind === 'no statement') return { id, kind }
        await h.db.query(INSERT, [id, kind])
        onCommit(() => void emails.push(id))
        if (kind === 'throw') throw new Error('the handler failed')
        if (kind === 'commit fails') await h.db.query('insert into tokens values ($1)', [`t${id}`])
        if (kind === 'set rollback') setRollback(true)
        const status = kind === 'answers 503' ? 503 : kind === 'set rollback' ? 200 : 201
        return reply.code(status).send({ id, kind })
      }),
    )
    const statuses = new Map<number, number>()
    const queue = [...ids]
    await Promise.all(
      Array.from({ length: 8 }, async () => {
        for (let id = queue.shift(); id !== undefined; id = queue.shift()) {
          statuses.set(id, (await post(`${url}/orders/${id}`)).status)
        }
      }),
    )
    const committed = ids.filter((id) => kindOf(id) === 'commit')
    expect(await items()).toEqual(committed)
    expect([...emails].sort((a, b) => a - b)).toEqual(committed)
    const created = ids.filter((id) => statuses.get(id) === 201)
    expect(created).toEqual(committed)
    expect(ids.filter((id) => kindOf(id) === 'no statement').every((id) => statuses.get(id) === 200)).toBe(true)
    // A dry run (setRollback) answers 200 after its ROLLBACK: nothing committed, no email.
    expect(ids.filter((id) => kindOf(id) === 'set rollback').every((id) => statuses.get(id) === 200)).toBe(true)
    expect(
      ids
        .filter((id) => ['throw', 'commit fails', 'answers 503'].includes(kindOf(id)))
        .every((id) => (statuses.get(id) as number) >= 500),
    ).toBe(true)
  })
})
