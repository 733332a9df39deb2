/**
 * pg-atomic/nestjs (issue 9 §2–§3): a real NestJS 12 application, on the Express and on the Fastify
 * platform, on a loopback port; real HTTP requests through Node's fetch; a real PostgreSQL. The
 * same cases run on both platforms.
 */
import 'reflect-metadata'
import { Readable } from 'node:stream'
import {
  BadRequestException,
  Body,
  Controller,
  Get,
  HttpCode,
  Inject,
  Injectable,
  Module,
  Param,
  Post,
  Sse,
  StreamableFile,
} from '@nestjs/common'
import type { INestApplication } from '@nestjs/common'
import { NestFactory } from '@nestjs/core'
import { ExpressAdapter } from '@nestjs/platform-express'
import { FastifyAdapter } from '@nestjs/platform-fastify'
import { Kysely, PostgresDialect } from 'kysely'
import { Atomic, getDatabase, inAtomicBlock, onCommit, setRollback } from 'pg-atomic'
import type { Database } from 'pg-atomic'
import { AtomicRoute, getDatabaseToken, NonAtomic, PgAtomicModule } from 'pg-atomic/nestjs'
import { from, interval, map, switchMap, take } from 'rxjs'
import type { Observable } from 'rxjs'
import { rejection, setupHarness } from '../support/harness'
import type { Harness } from '../support/harness'
import { waitUntil } from '../support/wait'
import { gate } from './server'

let h: Harness
const emails: number[] = []
const runs: string[] = []
let slow: {
  inserted: ReturnType<typeof gate<void>>
  resume: ReturnType<typeof gate<void>>
  later: ReturnType<typeof gate<unknown>>
}

beforeAll(async () => {
  h = await setupHarness('web_nestjs')
  await h.admin.query(`
    create table items (id int primary key, name text not null);
    create table tokens (token text not null, constraint tokens_token_key unique (token) deferrable initially deferred);
    create table accounts (id int primary key, balance int not null);
  `)
})
afterAll(() => h.close())
beforeEach(async () => {
  await h.admin.query('truncate items, tokens, accounts; insert into accounts values (1, 100)')
  h.reset()
  emails.length = 0
  runs.length = 0
})

const INSERT = 'insert into items (id, name) values ($1, $2)'
const items = () => h.column<number>('select id from items order by id')
const idleInTransaction = () =>
  h.column<number>(
    "select pid from pg_stat_activity where application_name = $1 and state like 'idle in transaction%'",
    [h.testDb.applicationName],
  )

/** A provider whose methods are `@Atomic()` blocks: inside a request, savepoints of its transaction. */
@Injectable()
class ItemsService {
  constructor(@Inject(getDatabaseToken()) private readonly db: Database) {}

  @Atomic()
  async addBoth(id: number): Promise<void> {
    await this.db.query(INSERT, [id, 'service'])
    await this.auditFails(id).catch(() => undefined) // a failed savepoint; the rest stays
  }

  @Atomic()
  async auditFails(id: number): Promise<void> {
    await this.db.query(INSERT, [id + 1000, 'audit'])
    throw new Error('audit failed')
  }
}

interface Tables {
  items: { id: number; name: string }
}

@Controller()
class ItemsController {
  private readonly kysely: Kysely<Tables>

  constructor(@Inject(ItemsService) private readonly service: ItemsService) {
    this.kysely = new Kysely<Tables>({ dialect: new PostgresDialect({ pool: h.db.pool }) })
  }

  @Post('items')
  async create(@Body() body: { id: number }) {
    await h.db.query(INSERT, [body.id, 'a'])
    onCommit(() => void emails.push(body.id))
    return { id: body.id, inBlock: inAtomicBlock() }
  }

  @Post('observable')
  observable(@Body() body: { id: number }): Observable<{ id: number }> {
    return from(h.db.query(INSERT, [body.id, 'observable'])).pipe(map(() => ({ id: body.id })))
  }

  @Post('throw')
  async throws() {
    await h.db.query(INSERT, [1, 'a'])
    throw new Error('the handler failed')
  }

  @Post('bad-request')
  async badRequest() {
    await h.db.query(INSERT, [1, 'a'])
    throw new BadRequestException('invalid item')
  }

  @Post('unavailable')
  @HttpCode(503)
  async unavailable() {
    await h.db.query(INSERT, [1, 'a'])
    return { retryLater: true }
  }

  @Post('dry-run')
  async dryRun() {
    await h.db.query(INSERT, [1, 'a'])
    setRollback(true)
    return { dryRun: true }
  }

  @Post('tokens')
  async token() {
    await h.db.query("insert into tokens values ('taken')")
    return { created: true }
  }

  @Post('nested')
  async nested() {
    await this.service.addBoth(1)
    return { ok: true }
  }

  @Post('kysely/:id')
  async kyselyInsert(@Param('id') id: string) {
    await this.kysely
      .insertInto('items')
      .values({ id: Number(id), name: 'kysely' })
      .execute()
    if (Number(id) === 2) throw new Error('the handler failed after Kysely')
    return { id: Number(id) }
  }

  @Post('log')
  @NonAtomic()
  async log() {
    await h.db.query(INSERT, [1, 'a'])
    await rejection(h.db.query(INSERT, [1, 'duplicate']))
    return { inBlock: inAtomicBlock() }
  }

  @Post('debit')
  @AtomicRoute({ isolationLevel: 'repeatable read', retry: { maxAttempts: 3, baseDelayMs: 0 } })
  async debit(@Body() body: { cents: number }) {
    const run = runs.length + 1
    runs.push(`run ${run}`)
    const { rows } = await h.db.query<{ balance: number }>('select balance from accounts where id = 1')
    if (run === 1) await h.admin.query('update accounts set balance = balance + 1 where id = 1')
    const balance = (rows[0] as { balance: number }).balance - body.cents
    await h.db.query('update accounts set balance = $1 where id = 1', [balance])
    onCommit(() => void emails.push(balance))
    return { balance }
  }

  @Get('ping')
  ping() {
    return { pong: true }
  }

  @Get('file')
  async file() {
    await h.db.query(INSERT, [1, 'a'])
    return new StreamableFile(Readable.from(['first,', 'second']))
  }

  @Sse('events')
  events(): Observable<{ data: string }> {
    return from(h.db.query(INSERT, [1, 'a'])).pipe(
      switchMap(() => interval(10).pipe(take(3))),
      map((n) => ({ data: `event ${n}` })),
    )
  }

  @Post('slow')
  async slowRequest() {
    await h.db.query(INSERT, [1, 'a'])
    slow.inserted.open()
    await slow.resume.wait
    slow.later.open(await rejection(h.db.query(INSERT, [2, 'b'])))
    return { unreachable: true }
  }

  @Post('orders/:id')
  async order(@Param('id') id: string) {
    const n = Number(id)
    const kind = kindOf(n)
    if (kind === 'no statement') return { n, kind }
    await h.db.query(INSERT, [n, kind])
    onCommit(() => void emails.push(n))
    if (kind === 'throw') throw new Error('the handler failed')
    if (kind === 'commit fails') await h.db.query('insert into tokens values ($1)', [`t${n}`])
    if (kind === 'set rollback') setRollback(true)
    return { n, kind }
  }
}

const KINDS = ['commit', 'throw', 'commit fails', 'no statement', 'set rollback'] as const
const kindOf = (id: number) => KINDS[id % KINDS.length] as (typeof KINDS)[number]

/** The application: the harness's database, registered already, is given to the module as it is. */
function appModule(): new () => unknown {
  @Module({
    imports: [PgAtomicModule.forRoot({ databases: [h.db] })],
    controllers: [ItemsController],
    providers: [ItemsService],
  })
  class AppModule {}
  return AppModule
}

const platforms = [
  ['Express', () => new ExpressAdapter()],
  ['Fastify', () => new FastifyAdapter()],
] as const

describe.each(platforms)('NestJS on %s', (_platform, adapter) => {
  let app: INestApplication
  let url: string

  beforeAll(async () => {
    app = await NestFactory.create(appModule(), adapter(), { logger: false, abortOnError: false })
    await app.listen(0, '127.0.0.1')
    url = (await app.getUrl()).replace('[::1]', '127.0.0.1')
  })
  afterAll(() => app?.close())
  afterEach(async () => {
    expect(await idleInTransaction()).toEqual([])
    expect(h.pool.idleCount).toBe(h.pool.totalCount)
  })

  async function post(path: string, body: unknown = {}) {
    const response = await fetch(`${url}${path}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(body),
    })
    const text = await response.text()
    return { status: response.status, body: text === '' ? undefined : (JSON.parse(text) as unknown) }
  }

  test('an async handler: COMMIT before the response, which comes from inside the request block', async () => {
    expect(await post('/items', { id: 1 })).toEqual({ status: 201, body: { id: 1, inBlock: true } })
    expect(h.statements).toEqual(['BEGIN', INSERT, 'COMMIT'])
    expect(await items()).toEqual([1])
    expect(emails).toEqual([1])
  })

  test('a handler returning an Observable: its work runs in the request block and commits', async () => {
    expect(await post('/observable', { id: 2 })).toEqual({ status: 201, body: { id: 2 } })
    expect(h.statements).toEqual(['BEGIN', INSERT, 'COMMIT'])
    expect(await items()).toEqual([2])
  })

  test('a thrown error: ROLLBACK, then the exception filter answers 500', async () => {
    expect(await post('/throw')).toMatchObject({ status: 500, body: { message: 'Internal server error' } })
    expect(h.statements).toEqual(['BEGIN', INSERT, 'ROLLBACK'])
    expect(await items()).toEqual([])
  })

  test('an HttpException (400) rolls back too: the handler failed', async () => {
    expect(await post('/bad-request')).toMatchObject({ status: 400, body: { message: 'invalid item' } })
    expect(h.statements).toEqual(['BEGIN', INSERT, 'ROLLBACK'])
  })

  test('a 5xx status (@HttpCode(503)) rolls back, and the response is sent as it is', async () => {
    expect(await post('/unavailable')).toEqual({ status: 503, body: { retryLater: true } })
    expect(h.statements).toEqual(['BEGIN', INSERT, 'ROLLBACK'])
  })

  test('setRollback(true): ROLLBACK, and its 201 is sent after it', async () => {
    expect(await post('/dry-run')).toEqual({ status: 201, body: { dryRun: true } })
    expect(h.statements).toEqual(['BEGIN', INSERT, 'ROLLBACK'])
    expect(await items()).toEqual([])
  })

  test('a deferred constraint failing at COMMIT: a 500, never the 201, nothing committed', async () => {
    await h.admin.query("insert into tokens values ('taken')")
    expect(await post('/tokens')).toMatchObject({ status: 500 })
    expect(h.statements).toEqual(['BEGIN', "insert into tokens values ('taken')", 'COMMIT'])
    expect(await h.column('select count(*)::int from tokens')).toEqual([1])
  })

  test("an @Atomic() provider method inside a request is a savepoint of the request's transaction", async () => {
    expect(await post('/nested')).toEqual({ status: 201, body: { ok: true } })
    expect(h.statements).toEqual([
      'BEGIN',
      'SAVEPOINT "pga_1"',
      INSERT,
      'SAVEPOINT "pga_2"',
      INSERT,
      // The failed inner block's ROLLBACK TO rides with the COMMIT, in one simple query.
      'ROLLBACK TO SAVEPOINT "pga_2"; RELEASE SAVEPOINT "pga_2"; COMMIT',
    ])
    expect(await items()).toEqual([1])
  })

  test('Kysely statements on db.pool commit and roll back with the request', async () => {
    expect(await post('/kysely/1')).toMatchObject({ status: 201 })
    expect(await post('/kysely/2')).toMatchObject({ status: 500 })
    expect(await items()).toEqual([1])
    const KINSERT = 'insert into "items" ("id", "name") values ($1, $2)'
    expect(h.statements).toEqual(['BEGIN', KINSERT, 'COMMIT', 'BEGIN', KINSERT, 'ROLLBACK'])
  })

  test('@NonAtomic(): autocommit, each statement on its own', async () => {
    expect(await post('/log')).toEqual({ status: 201, body: { inBlock: false } })
    expect(h.statements).toEqual([INSERT, INSERT])
    expect(await items()).toEqual([1])
  })

  test('@AtomicRoute({ retry }): a serialization failure runs the handler again; one email', async () => {
    expect(await post('/debit', { cents: 10 })).toEqual({ status: 201, body: { balance: 91 } })
    expect(runs).toEqual(['run 1', 'run 2'])
    expect(emails).toEqual([91])
    const BEGIN_RR = 'BEGIN ISOLATION LEVEL REPEATABLE READ'
    const SELECT = 'select balance from accounts where id = 1'
    const UPDATE = 'update accounts set balance = $1 where id = 1'
    expect(h.statements).toEqual([BEGIN_RR, SELECT, UPDATE, 'ROLLBACK', BEGIN_RR, SELECT, UPDATE, 'COMMIT'])
  })

  test('a request that runs no statement checks out no connection', async () => {
    const acquired = jest.fn()
    h.pool.on('acquire', acquired)
    try {
      expect(await (await fetch(`${url}/ping`)).json()).toEqual({ pong: true })
    } finally {
      h.pool.off('acquire', acquired)
    }
    expect(acquired).not.toHaveBeenCalled()
    expect(h.statements).toEqual([])
  })

  test('a StreamableFile: COMMIT before the first byte', async () => {
    const response = await fetch(`${url}/file`)
    expect(await items()).toEqual([1])
    expect(await response.text()).toBe('first,second')
    expect(h.statements).toEqual(['BEGIN', INSERT, 'COMMIT'])
  })

  test('server-sent events (@Sse()): COMMIT at the first event, then every event', async () => {
    const response = await fetch(`${url}/events`)
    expect(response.headers.get('content-type')).toContain('text/event-stream')
    const text = await response.text()
    expect(text).toContain('data: event 0')
    expect(text).toContain('data: event 2')
    expect(h.statements).toEqual(['BEGIN', INSERT, 'COMMIT'])
    expect(await items()).toEqual([1])
  })

  test('a client that disconnects mid-request: ROLLBACK at once, nothing idle in transaction', async () => {
    slow = { inserted: gate<void>(), resume: gate<void>(), later: gate<unknown>() }
    const controller = new AbortController()
    const request = fetch(`${url}/slow`, { method: 'POST', signal: controller.signal })
    await slow.inserted.wait
    controller.abort()
    await expect(request).rejects.toMatchObject({ name: 'AbortError' })
    await waitUntil(() => h.statements.includes('ROLLBACK'), 'the request to roll back')
    expect(await idleInTransaction()).toEqual([])
    slow.resume.open()
    expect(await slow.later.wait).toMatchObject({ name: 'TransactionManagementError' })
    expect(h.statements).toEqual(['BEGIN', INSERT, 'ROLLBACK'])
  })

  test('200 requests, 8 at a time: committed rows, sent emails and 2xx responses match exactly', async () => {
    const ids = Array.from({ length: 200 }, (_, i) => i + 1)
    for (const id of ids)
      if (kindOf(id) === 'commit fails') await h.admin.query('insert into tokens values ($1)', [`t${id}`])
    const statuses = new Map<number, number>()
    const queue = [...ids]
    await Promise.all(
      Array.from({ length: 8 }, async () => {
        for (let id = queue.shift(); id !== undefined; id = queue.shift()) {
          statuses.set(id, (await post(`/orders/${id}`)).status)
        }
      }),
    )
    const committed = ids.filter((id) => kindOf(id) === 'commit')
    expect(await items()).toEqual(committed)
    expect([...emails].sort((a, b) => a - b)).toEqual(committed)
    const failed = ids.filter((id) => kindOf(id) === 'throw' || kindOf(id) === 'commit fails')
    expect(failed.every((id) => statuses.get(id) === 500)).toBe(true)
    expect(ids.filter((id) => !failed.includes(id)).every((id) => statuses.get(id) === 201)).toBe(true)
  })
})

describe('PgAtomicModule', () => {
  test('creates its databases when the application starts and closes them when it shuts down', async () => {
    @Controller()
    class Probe {
      constructor(@Inject(getDatabaseToken('nest_created')) private readonly db: Database) {}
      @Post('probe')
      async probe() {
        await this.db.query('select 1')
        return { inBlock: inAtomicBlock({ using: 'nest_created' }) }
      }
    }
    @Module({
      imports: [
        PgAtomicModule.forRoot({
          databases: [{ alias: 'nest_created', connectionString: h.testDb.url, max: 1 }],
          requests: { databases: ['nest_created'] },
        }),
      ],
      controllers: [Probe],
    })
    class CreatingModule {}
    const app = await NestFactory.create(CreatingModule, new ExpressAdapter(), { logger: false })
    await app.listen(0, '127.0.0.1')
    const url = (await app.getUrl()).replace('[::1]', '127.0.0.1')
    const response = await fetch(`${url}/probe`, { method: 'POST' })
    expect(await response.json()).toEqual({ inBlock: true })
    expect(getDatabase('nest_created')).toBeDefined()
    await app.close()
    expect(getDatabase('nest_created')).toBeUndefined()
  })

  test('a request database that is not registered fails when the application starts, naming the fix', async () => {
    @Module({ imports: [PgAtomicModule.forRoot({ requests: { databases: ['nowhere'] } })] })
    class Misconfigured {}
    await expect(
      NestFactory.create(Misconfigured, new ExpressAdapter(), { logger: false, abortOnError: false }),
    ).rejects.toMatchObject({
      name: 'InvalidOptionError',
      message:
        "PgAtomicModule has no database under the alias 'nowhere': add its configuration to the databases " +
        "option, e.g. databases: [{ alias: 'nowhere', connectionString: ... }], or create it with " +
        'createDatabase() before the application starts.',
    })
  })

  test('request options are validated by forRoot()', () => {
    expect(() => PgAtomicModule.forRoot({ requests: { retry: 3 } as never })).toThrow(
      expect.objectContaining({ name: 'InvalidOptionError', field: 'retry' }),
    )
  })
})
