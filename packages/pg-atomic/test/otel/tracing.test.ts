/**
 * pg-atomic/otel spans, with the real OpenTelemetry SDK and the real instrumentation-pg: the span
 * tree of a transaction whose nested block fails, Kysely statements through db.pool under the
 * block's span, setRollback(true) (no error status), no bind value in any attribute.
 */
import { Kysely, PostgresDialect, sql } from 'kysely'
import { SpanKind, SpanStatusCode } from '@opentelemetry/api'
import type { HrTime } from '@opentelemetry/api'
import type { ReadableSpan } from '@opentelemetry/sdk-trace-base'
import { OnCommitHookError, atomic, onCommit, setRollback } from 'pg-atomic'
import { instrumentPgAtomic } from 'pg-atomic/otel'
import type { PgAtomicInstrumentation } from 'pg-atomic/otel'
import { Boom, rejection } from '../support/errors'
import { setupHarness } from '../support/harness'
import type { Harness } from '../support/harness'
import { printTree, setupTelemetry } from './support'
import type { Telemetry } from './support'

let h: Harness
let telemetry: Telemetry
let otel: PgAtomicInstrumentation

beforeAll(async () => {
  telemetry = setupTelemetry()
  h = await setupHarness('otel tracing')
  await h.admin.query('create table t (x int primary key)')
  // Every pooled connection opened before the tests: no pg.connect spans in the trees.
  const clients = await Promise.all([h.pool.connect(), h.pool.connect()])
  for (const c of clients) c.release()
  otel = instrumentPgAtomic({ tracerProvider: telemetry.tracerProvider, meterProvider: telemetry.meterProvider })
})

afterAll(async () => {
  otel.disable()
  await h.close()
  await telemetry.shutdown()
})

beforeEach(async () => {
  await h.admin.query('truncate t')
  telemetry.exporter.reset()
  h.reset()
})

const INSERT = 'insert into t (x) values ($1)'
const ms = (t: HrTime): number => t[0] * 1000 + t[1] / 1e6
const tree = (): string => printTree(telemetry.exporter.getFinishedSpans(), h.testDb.name)

/** Where the recorded pool connects (a pooler in CI's PgBouncer run). */
function server(): { address: string; port: number } {
  const url = new URL(h.testDb.url)
  return { address: url.hostname, port: Number(url.port || 5432) }
}

const pgAtomicSpans = (): ReadableSpan[] =>
  telemetry.exporter.getFinishedSpans().filter((s) => s.instrumentationScope.name === 'pg-atomic')

test('a transaction whose nested block fails: the exact span tree, parents and attributes', async () => {
  await atomic({ name: 'order' }, async () => {
    await h.db.query(INSERT, [1])
    const error = await rejection(
      atomic({ name: 'reserve' }, async () => {
        await h.db.query(INSERT, [2])
        await h.db.query('select 1/0')
      }),
    )
    expect(error).toMatchObject({ code: '22012' })
    await h.db.query(INSERT, [3])
  })
  expect(tree()).toBe(
    [
      'order pg_atomic.outcome="committed"',
      '  pg-pool.connect',
      '  pg.query:INSERT <db> db.query.text="insert into t (x) values ($1)"',
      '  reserve [ERROR] pg_atomic.savepoint="pga_1" pg_atomic.outcome="rolled_back" error.type="22012" ' +
        'db.response.status_code="22012"',
      '    pg.query:INSERT <db> db.query.text="insert into t (x) values ($1)"',
      '    pg.query:SELECT <db> [ERROR] db.query.text="select 1/0"',
      '  pg.query:INSERT <db> db.query.text="insert into t (x) values ($1)"',
      '  pg.query:COMMIT <db> db.query.text="COMMIT"',
    ].join('\n'),
  )
  // What rode in which round trip: BEGIN with the first INSERT, SAVEPOINT with the second, the
  // deferred ROLLBACK TO and RELEASE with the third (each is one pg.query span above).
  expect(h.batches).toEqual([
    ['BEGIN', INSERT],
    ['SAVEPOINT "pga_1"', INSERT],
    ['select 1/0'],
    ['ROLLBACK TO SAVEPOINT "pga_1"', 'RELEASE SAVEPOINT "pga_1"', INSERT],
    ['COMMIT'],
  ])
  const [order, reserve] = ['order', 'reserve'].map((name) => pgAtomicSpans().find((s) => s.name === name))
  if (order === undefined || reserve === undefined) throw new Error('spans missing')
  expect(order.kind).toBe(SpanKind.INTERNAL)
  expect(order.parentSpanContext).toBeUndefined()
  expect(order.status).toEqual({ code: SpanStatusCode.UNSET })
  expect(order.attributes).toEqual({
    'db.system.name': 'postgresql',
    'db.namespace': h.testDb.name,
    'server.address': server().address,
    'server.port': server().port,
    'pg_atomic.database': 'default',
    'pg_atomic.transaction.id': expect.any(Number) as number,
    'pg_atomic.name': 'order',
    'pg_atomic.depth': 1,
    'pg_atomic.outcome': 'committed',
    'pg_atomic.round_trips': 5,
  })
  expect(reserve.kind).toBe(SpanKind.INTERNAL)
  expect(reserve.parentSpanContext?.spanId).toBe(order.spanContext().spanId)
  expect(reserve.status).toEqual({ code: SpanStatusCode.ERROR })
  expect(reserve.attributes).toEqual({
    'pg_atomic.depth': 2,
    'pg_atomic.savepoint': 'pga_1',
    'pg_atomic.name': 'reserve',
    'pg_atomic.outcome': 'rolled_back',
    'error.type': '22012',
    'db.response.status_code': '22012',
  })
  // Every span of the transaction is in its trace; the span covers its children. The SDK anchors
  // each span's clock on Date.now() (1 ms steps) before adding performance.now() deltas, so times
  // of different spans compare to within 1 ms only.
  for (const span of telemetry.exporter.getFinishedSpans()) {
    expect(span.spanContext().traceId).toBe(order.spanContext().traceId)
    expect(ms(span.startTime)).toBeGreaterThanOrEqual(ms(order.startTime) - 1)
    expect(ms(span.endTime)).toBeLessThanOrEqual(ms(order.endTime) + 1)
  }
})

test('an unnamed block under a span of the caller; a nested block that succeeds is released', async () => {
  const caller = telemetry.tracerProvider.getTracer('test')
  await caller.startActiveSpan('request', async (span) => {
    await atomic(async () => {
      await atomic(async () => {
        await h.db.query(INSERT, [1])
      })
    })
    span.end()
  })
  // The connection is checked out for the first statement, in the nested block (lazy BEGIN).
  expect(tree()).toBe(
    [
      'request',
      '  pg-atomic.transaction pg_atomic.outcome="committed"',
      '    pg-atomic.savepoint pg_atomic.savepoint="pga_1" pg_atomic.outcome="released"',
      '      pg-pool.connect',
      '      pg.query:INSERT <db> db.query.text="insert into t (x) values ($1)"',
      '    pg.query:COMMIT <db> db.query.text="COMMIT"',
    ].join('\n'),
  )
})

test('a block that runs no statement: a span with 0 round trips, no checkout', async () => {
  await atomic({ name: 'empty' }, () => undefined)
  expect(tree()).toBe('empty pg_atomic.outcome="committed"')
  expect(pgAtomicSpans()[0]?.attributes['pg_atomic.round_trips']).toBe(0)
  expect(pgAtomicSpans()[0]?.attributes).not.toHaveProperty('db.namespace')
})

test('setRollback(true) rolls back without an error status; an error rolls back with one', async () => {
  await atomic({ name: 'dry-run' }, async () => {
    await h.db.query(INSERT, [1])
    setRollback(true)
  })
  const error = await rejection(
    atomic({ name: 'failing' }, async () => {
      await h.db.query(INSERT, [2])
      throw new Boom('the caller gives up')
    }),
  )
  expect(error).toBeInstanceOf(Boom)
  expect(tree()).toBe(
    [
      'dry-run pg_atomic.outcome="rolled_back"',
      '  pg-pool.connect',
      '  pg.query:INSERT <db> db.query.text="insert into t (x) values ($1)"',
      '  pg.query:ROLLBACK <db> db.query.text="ROLLBACK"',
      'failing [ERROR] pg_atomic.outcome="rolled_back" error.type="Boom"',
      '  pg-pool.connect',
      '  pg.query:INSERT <db> db.query.text="insert into t (x) values ($1)"',
      '  pg.query:ROLLBACK <db> db.query.text="ROLLBACK"',
    ].join('\n'),
  )
  const [dryRun] = pgAtomicSpans()
  expect(dryRun?.status).toEqual({ code: SpanStatusCode.UNSET })
  expect(dryRun?.attributes).not.toHaveProperty('error.type')
  expect(await h.column('select x from t')).toEqual([])
})

test('a nested setRollback(true) is a silent savepoint rollback: no error status', async () => {
  await atomic({ name: 'outer' }, async () => {
    await h.db.query(INSERT, [1])
    await atomic({ name: 'try' }, async () => {
      await h.db.query(INSERT, [2])
      setRollback(true)
    })
  })
  expect(tree()).toBe(
    [
      'outer pg_atomic.outcome="committed"',
      '  pg-pool.connect',
      '  pg.query:INSERT <db> db.query.text="insert into t (x) values ($1)"',
      '  try pg_atomic.savepoint="pga_1" pg_atomic.outcome="rolled_back"',
      '    pg.query:INSERT <db> db.query.text="insert into t (x) values ($1)"',
      // One simple-protocol round trip: instrumentation-pg names its span after the first word.
      '  pg.query:ROLLBACK <db> db.query.text="ROLLBACK TO SAVEPOINT \\"pga_1\\"; ' +
        'RELEASE SAVEPOINT \\"pga_1\\"; COMMIT"',
    ].join('\n'),
  )
  expect(h.batches).toEqual([
    ['BEGIN', INSERT],
    ['SAVEPOINT "pga_1"', INSERT],
    ['ROLLBACK TO SAVEPOINT "pga_1"; RELEASE SAVEPOINT "pga_1"; COMMIT'],
  ])
  expect(await h.column('select x from t')).toEqual([1])
})

test('Kysely through db.pool, its own transaction included: every statement under the block span', async () => {
  const kdb = new Kysely<{ t: { x: number } }>({ dialect: new PostgresDialect({ pool: h.db.pool }) })
  await atomic({ name: 'kysely' }, async () => {
    await kdb.insertInto('t').values({ x: 1 }).execute()
    await kdb.transaction().execute(async (trx) => {
      await trx.insertInto('t').values({ x: 2 }).execute()
    })
    await sql`select count(*) from t`.execute(kdb)
  })
  expect(tree()).toBe(
    [
      'kysely pg_atomic.outcome="committed"',
      '  pg-pool.connect',
      '  pg.query:INSERT <db> db.query.text="insert into \\"t\\" (\\"x\\") values ($1)"',
      '  pg.query:INSERT <db> db.query.text="insert into \\"t\\" (\\"x\\") values ($1)"',
      '  pg.query:SELECT <db> db.query.text="select count(*) from t"',
      '  pg.query:COMMIT <db> db.query.text="COMMIT"',
    ].join('\n'),
  )
  expect(h.batches).toEqual([
    ['BEGIN', 'insert into "t" ("x") values ($1)'],
    ['SAVEPOINT "pga_1"', 'insert into "t" ("x") values ($1)'],
    ['select count(*) from t'],
    ['COMMIT'],
  ])
  // Not kdb.destroy(): it would end db.pool, i.e. close the database.
})

test('onCommit hooks run outside the transaction: their statements are not under its span', async () => {
  await atomic({ name: 'with-hook' }, async () => {
    await h.db.query(INSERT, [1])
    onCommit(async () => {
      await h.db.query('select count(*) from t')
    })
  })
  expect(tree()).toBe(
    [
      'with-hook pg_atomic.outcome="committed"',
      '  pg-pool.connect',
      '  pg.query:INSERT <db> db.query.text="insert into t (x) values ($1)"',
      '  pg.query:COMMIT <db> db.query.text="COMMIT"',
      'pg-pool.connect',
      'pg.query:SELECT <db> db.query.text="select count(*) from t"',
    ].join('\n'),
  )
})

test('no bind value, server message or password in any attribute, event or pg-atomic status', async () => {
  const secret = 'secret-9f3c1b'
  const error = await rejection(
    atomic({ name: 'leaky' }, async () => {
      await h.db.query(INSERT, [secret])
    }),
  )
  // The server's message quotes the value: it must stay in the error object only.
  expect(error).toMatchObject({ code: '22P02', message: expect.stringContaining(secret) as string })
  const nested = await rejection(
    atomic({ name: 'leaky-outer' }, async () => {
      await atomic({ name: 'leaky-inner' }, async () => {
        await h.db.query('select $1::int', [secret])
      })
    }),
  )
  expect(nested).toMatchObject({ code: '22P02' })
  const spans = telemetry.exporter.getFinishedSpans()
  expect(spans.map((s) => s.name).filter((n) => n.startsWith('leaky'))).toEqual(['leaky', 'leaky-inner', 'leaky-outer'])
  for (const span of spans) {
    expect(JSON.stringify(span.attributes)).not.toContain(secret)
    expect(JSON.stringify(span.events)).not.toContain(secret)
    // instrumentation-pg puts the server's message in its own spans' status; pg-atomic never does.
    if (span.instrumentationScope.name === 'pg-atomic') expect(span.status).toEqual({ code: SpanStatusCode.ERROR })
  }
  expect(pgAtomicSpans().map((s) => s.attributes['error.type'])).toEqual(['22P02', '22P02', '22P02'])
})

test('Promise.all of two failing siblings: savepoint spans hold their statements; same error as untraced', async () => {
  const run = (): Promise<unknown> =>
    rejection(
      atomic({ name: 'batch' }, async () => {
        await Promise.all([
          atomic({ name: 'first' }, async () => {
            await h.db.query(INSERT, [1])
            await h.db.query(INSERT, [1])
          }),
          atomic({ name: 'second' }, async () => {
            await h.db.query(INSERT, [2])
            await h.db.query('select 1/0')
          }),
        ])
      }),
    )
  const traced = await run()
  expect(traced).toMatchObject({ code: '23505' })
  expect(tree()).toBe(
    [
      'batch [ERROR] pg_atomic.outcome="rolled_back" error.type="23505" db.response.status_code="23505"',
      '  first [ERROR] pg_atomic.savepoint="pga_1" pg_atomic.outcome="rolled_back" error.type="23505" ' +
        'db.response.status_code="23505"',
      '    pg-pool.connect',
      '    pg.query:INSERT <db> db.query.text="insert into t (x) values ($1)"',
      '    pg.query:INSERT <db> [ERROR] db.query.text="insert into t (x) values ($1)"',
      '  second [ERROR] pg_atomic.savepoint="pga_2" pg_atomic.outcome="rolled_back" error.type="22012" ' +
        'db.response.status_code="22012"',
      '    pg.query:INSERT <db> db.query.text="insert into t (x) values ($1)"',
      '    pg.query:SELECT <db> [ERROR] db.query.text="select 1/0"',
      '  pg.query:ROLLBACK <db> db.query.text="ROLLBACK"',
    ].join('\n'),
  )
  otel.disable()
  try {
    const untraced = await run()
    expect(untraced).toBeInstanceOf((traced as Error).constructor)
    expect(untraced).toMatchObject({ code: '23505', message: (traced as Error).message })
  } finally {
    otel = instrumentPgAtomic({ tracerProvider: telemetry.tracerProvider, meterProvider: telemetry.meterProvider })
  }
})

test('a failing onCommit hook: the transaction committed, no error status on its span', async () => {
  const error = await rejection(
    atomic({ name: 'notify' }, async () => {
      await h.db.query(INSERT, [1])
      onCommit(() => {
        throw new Boom('mail server down')
      })
    }),
  )
  expect(error).toBeInstanceOf(OnCommitHookError)
  const [notify] = pgAtomicSpans()
  expect(notify?.name).toBe('notify')
  expect(notify?.status).toEqual({ code: SpanStatusCode.UNSET })
  expect(notify?.attributes['pg_atomic.outcome']).toBe('committed')
  expect(await h.column('select x from t')).toEqual([1])
})

test('a requiresNew block is a transaction span of its own, under the block that suspended it', async () => {
  const error = await rejection(
    atomic({ name: 'checkout' }, async () => {
      await h.db.query(INSERT, [1])
      await atomic({ name: 'audit', propagation: 'requiresNew' }, () => h.db.query(INSERT, [2]))
      throw new Boom()
    }),
  )
  expect(error).toBeInstanceOf(Boom)
  // Its own connection (the outer one is held), its own COMMIT, committed while the outer rolls back.
  expect(tree()).toBe(
    [
      'checkout [ERROR] pg_atomic.outcome="rolled_back" error.type="Boom"',
      '  pg-pool.connect',
      '  pg.query:INSERT <db> db.query.text="insert into t (x) values ($1)"',
      '  audit pg_atomic.outcome="committed"',
      '    pg-pool.connect',
      '    pg.query:INSERT <db> db.query.text="insert into t (x) values ($1)"',
      '    pg.query:COMMIT <db> db.query.text="COMMIT"',
      '  pg.query:ROLLBACK <db> db.query.text="ROLLBACK"',
    ].join('\n'),
  )
  expect(await h.column<number>('select x from t')).toEqual([2])
})
