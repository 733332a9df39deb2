/**
 * pg-atomic/otel spans, with the real OpenTelemetry SDK and the real instrumentation-pg: the span
 * tree of a transaction whose nested block fails, Kysely statements through db.pool under the
 * block's span, setRollback(true) (no error status), no bind value in any attribute.
 */
import { Kysely, PostgresDialect, sql } from 'kysely'
import { atomic, setRollback } from 'pg-atomic'
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
const tree = (): string => printTree(telemetry.exporter.getFinishedSpans(), h.testDb.name)

test('prints', async () => {
  await atomic({ name: 'order' }, async () => {
    await h.db.query(INSERT, [1])
    await rejection(
      atomic({ name: 'reserve' }, async () => {
        await h.db.query(INSERT, [2])
        await h.db.query('select 1/0')
      }),
    )
    await h.db.query(INSERT, [3])
  })
  console.log(tree())
  console.log(h.batches)
})
