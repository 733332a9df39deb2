/**
 * pg-atomic/otel with retries (a real 40001, one span per attempt under the block's span, a retry
 * event) and an unknown outcome (the connection lost with COMMIT in flight, through the fault
 * proxy); and the metrics after a known workload.
 */
import { SpanStatusCode } from '@opentelemetry/api'
import type { Attributes } from '@opentelemetry/api'
import type { ReadableSpan } from '@opentelemetry/sdk-trace-base'
import { DataPointType } from '@opentelemetry/sdk-metrics'
import type { Histogram } from '@opentelemetry/sdk-metrics'
import { CommitOutcomeUnknownError, atomic, createDatabase, onRollback, setRollback } from 'pg-atomic'
import type { Database } from 'pg-atomic'
import { DURATION_BUCKETS, instrumentPgAtomic } from 'pg-atomic/otel'
import type { PgAtomicInstrumentation } from 'pg-atomic/otel'
import { startFaultProxy, targetOf } from '../support/fault-proxy'
import type { FaultProxy } from '../support/fault-proxy'
import { Boom, rejection } from '../support/errors'
import { setupHarness } from '../support/harness'
import type { Harness } from '../support/harness'
import { points, printTree, setupTelemetry } from './support'
import type { Telemetry } from './support'

let h: Harness
let telemetry: Telemetry
let otel: PgAtomicInstrumentation
const logged: string[] = []

beforeAll(async () => {
  telemetry = setupTelemetry()
  h = await setupHarness('otel retry', { logger: { error: (message) => logged.push(message) } })
  await h.admin.query('create table accounts (id int primary key, balance int not null)')
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
  await h.admin.query('truncate accounts; insert into accounts values (1, 100), (2, 100)')
  telemetry.exporter.reset()
  h.reset()
})

const SELECT_1 = 'select balance from accounts where id = 1'
const UPDATE_1 = 'update accounts set balance = $1 where id = 1'
const tree = (): string => printTree(telemetry.exporter.getFinishedSpans(), h.testDb.name)
const named = (name: string): ReadableSpan[] => telemetry.exporter.getFinishedSpans().filter((s) => s.name === name)

/**
 * Reads account 1 in a repeatable-read block; on the first attempt another session updates it
 * and commits, so the write fails with a real 40001; the second attempt commits.
 */
function debit(): Promise<number> {
  let attempt = 0
  return atomic(
    { name: 'debit', isolationLevel: 'repeatable read', retry: { maxAttempts: 3, baseDelayMs: 0 } },
    async () => {
      attempt++
      const { rows } = await h.db.query<{ balance: number }>(SELECT_1)
      const balance = (rows[0] as { balance: number }).balance
      if (attempt === 1) await h.admin.query('update accounts set balance = balance + 1 where id = 1')
      await h.db.query(UPDATE_1, [balance - 10])
      return balance
    },
  )
}

test('a retried block: its span, one pg-atomic.attempt span per attempt, a retry event', async () => {
  expect(await debit()).toBe(101)
  expect(tree()).toBe(
    [
      'debit pg_atomic.outcome="committed" pg_atomic.attempts=2',
      '  pg-atomic.attempt [ERROR] pg_atomic.attempt=1 pg_atomic.outcome="rolled_back" error.type="40001" ' +
        'db.response.status_code="40001"',
      '    pg-pool.connect',
      '    pg.query:SELECT <db> db.query.text="select balance from accounts where id = 1"',
      // The other session's statement (the admin pool), sent from inside the block's callback.
      '    pg-pool.connect',
      '    pg.query:UPDATE <db> db.query.text="update accounts set balance = balance + 1 where id = 1"',
      '    pg.query:UPDATE <db> [ERROR] db.query.text="update accounts set balance = $1 where id = 1"',
      '    pg.query:ROLLBACK <db> db.query.text="ROLLBACK"',
      '  pg-atomic.attempt pg_atomic.attempt=2 pg_atomic.outcome="committed"',
      '    pg-pool.connect',
      '    pg.query:SELECT <db> db.query.text="select balance from accounts where id = 1"',
      '    pg.query:UPDATE <db> db.query.text="update accounts set balance = $1 where id = 1"',
      '    pg.query:COMMIT <db> db.query.text="COMMIT"',
    ].join('\n'),
  )
  const [parent] = named('debit')
  expect(parent?.status).toEqual({ code: SpanStatusCode.UNSET })
  expect(parent?.events.map((e) => [e.name, e.attributes])).toEqual([
    [
      'pg_atomic.retry',
      {
        'pg_atomic.attempt': 1,
        'pg_atomic.retry.delay_ms': 0,
        'error.type': '40001',
        'db.response.status_code': '40001',
      },
    ],
  ])
  const attempts = named('pg-atomic.attempt')
  expect(attempts.map((s) => s.attributes['pg_atomic.isolation_level'])).toEqual(['repeatable read', 'repeatable read'])
  expect(attempts.map((s) => s.attributes['pg_atomic.name'])).toEqual(['debit', 'debit'])
  expect(attempts.map((s) => s.attributes['pg_atomic.round_trips'])).toEqual([3, 3])
  expect(await h.column('select balance from accounts order by id')).toEqual([91, 100])
})

describe('the connection lost with COMMIT in flight', () => {
  let proxy: FaultProxy
  let db: Database
  beforeAll(async () => {
    proxy = await startFaultProxy(targetOf(h.testDb.directUrl))
    db = createDatabase({ connectionString: proxy.urlFor(h.testDb.directUrl), alias: 'otel_proxied', max: 2 })
  })
  afterAll(async () => {
    await db.close()
    await proxy.close()
  })

  test('outcome "unknown", error status, error.type CommitOutcomeUnknownError', async () => {
    const lost = proxy.armCommitFault('response-lost')
    const error = await rejection(
      db.atomic({ name: 'pay' }, async () => {
        await db.query('update accounts set balance = balance - 1 where id = 2')
      }),
    )
    expect(await lost).toBe('COMMIT')
    expect(error).toBeInstanceOf(CommitOutcomeUnknownError)
    const [pay] = named('pay')
    expect(pay?.status).toEqual({ code: SpanStatusCode.ERROR })
    expect(pay?.attributes).toMatchObject({
      'pg_atomic.database': 'otel_proxied',
      'pg_atomic.outcome': 'unknown',
      'error.type': 'CommitOutcomeUnknownError',
      'pg_atomic.round_trips': 2,
    })
    expect(pay?.attributes['server.port']).toBe(proxy.port)
    // The COMMIT reached the server: the work is there, as the outcome "unknown" allows.
    expect(await h.column('select balance from accounts where id = 2')).toEqual([99])
  })
})

test('metrics after a known workload', async () => {
  // 1 commit; 1 rollback by error; 1 intentional rollback; a savepoint rolled back in a commit;
  // a failing onRollback hook; a retried block (2 attempts: 1 rolled back with 40001, 1 commit).
  await atomic(async () => {
    await h.db.query(SELECT_1)
  })
  expect(
    await rejection(
      atomic(async () => {
        onRollback(() => {
          throw new Boom('hook fails')
        })
        await h.db.query(SELECT_1)
        throw new Boom('rolls back')
      }),
    ),
  ).toBeInstanceOf(Boom)
  await atomic(async () => {
    await h.db.query(SELECT_1)
    setRollback(true)
  })
  await atomic(async () => {
    await h.db.query(SELECT_1)
    expect(
      await rejection(
        atomic(async () => {
          await h.db.query(SELECT_1)
          throw new Boom('savepoint')
        }),
      ),
    ).toBeInstanceOf(Boom)
  })
  expect(await debit()).toBe(101)
  // The logger's sentence names the transaction: the span's pg_atomic.transaction.id.
  const failed = telemetry.exporter
    .getFinishedSpans()
    .find((s) => s.status.code === SpanStatusCode.ERROR && s.attributes['error.type'] === 'Boom')
  expect(logged).toEqual([
    `Error calling an anonymous function in onRollback() during transaction ${String(
      failed?.attributes['pg_atomic.transaction.id'],
    )}; the error is attached.`,
  ])
  const m = await telemetry.collect()
  // Cumulative since the file started: the retry test above (2 attempts) and the unknown outcome.
  const database = { 'pg_atomic.database': 'default' }
  const proxied = { 'pg_atomic.database': 'otel_proxied' }
  expect(sorted(points(m.get('pg_atomic.transactions')))).toEqual(
    sorted([
      [{ ...database, 'pg_atomic.outcome': 'committed' }, 4],
      [{ ...database, 'pg_atomic.outcome': 'rolled_back' }, 4],
      [{ ...proxied, 'pg_atomic.outcome': 'unknown' }, 1],
    ]),
  )
  expect(points(m.get('pg_atomic.retries'))).toEqual([[{ ...database, 'db.response.status_code': '40001' }, 2]])
  expect(points(m.get('pg_atomic.savepoint.rollbacks'))).toEqual([[database, 1]])
  expect(points(m.get('pg_atomic.hook.failures'))).toEqual([[{ ...database, 'pg_atomic.hook.kind': 'rollback' }, 1]])
  // Histogram counts: one per transaction (attempt) as above; hold time for those that checked out.
  expect(sorted(points(m.get('pg_atomic.transaction.duration')))).toEqual(
    sorted([
      [{ ...database, 'pg_atomic.outcome': 'committed' }, 4],
      [{ ...database, 'pg_atomic.outcome': 'rolled_back' }, 4],
      [{ ...proxied, 'pg_atomic.outcome': 'unknown' }, 1],
    ]),
  )
  expect(sorted(points(m.get('pg_atomic.connection.hold_time')))).toEqual(
    sorted([
      [database, 8],
      [proxied, 1],
    ]),
  )
  // Seconds, with the database conventions' buckets (not the SDK's millisecond-oriented defaults).
  for (const name of ['pg_atomic.transaction.duration', 'pg_atomic.connection.hold_time']) {
    const histogram = m.get(name)
    expect(histogram?.descriptor.unit).toBe('s')
    const boundaries = (histogram?.dataPoints ?? []).map((p) => (p.value as Histogram).buckets.boundaries)
    expect(boundaries.length).toBeGreaterThan(0)
    for (const b of boundaries) expect(b).toEqual([0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10])
  }
  expect(DURATION_BUCKETS).toEqual([0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10])
  // The pools now, in the stable conventions: the harness's pool after the workload, every
  // connection idle, nothing waiting.
  const pool = { 'db.client.connection.pool.name': 'default' }
  const ofPool = (name: string): Array<[Attributes, number]> =>
    points(m.get(name)).filter(([a]) => a['db.client.connection.pool.name'] === 'default')
  // Up-down counters: sums that are not monotonic (a gauge would be DataPointType.GAUGE).
  for (const name of ['db.client.connection.count', 'db.client.connection.pending_requests'])
    expect(m.get(name)).toMatchObject({ dataPointType: DataPointType.SUM, isMonotonic: false })
  expect(sorted(ofPool('db.client.connection.count'))).toEqual(
    sorted([
      [{ ...pool, 'db.client.connection.state': 'idle' }, h.pool.totalCount],
      [{ ...pool, 'db.client.connection.state': 'used' }, 0],
    ]),
  )
  expect(ofPool('db.client.connection.pending_requests')).toEqual([[pool, 0]])
  expect(h.pool.totalCount).toBeGreaterThan(0)
  expect([...m.keys()].filter((name) => name.startsWith('pg_atomic.pool'))).toEqual([])
})

function sorted<T>(list: T[]): T[] {
  return [...list].sort((a, b) => (JSON.stringify(a) < JSON.stringify(b) ? -1 : 1))
}
