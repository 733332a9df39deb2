/**
 * pg-atomic/otel emits nothing unless enabled: never enabled (this file's module registry starts
 * without it), and after `disable()`. instrumentation-pg keeps tracing statements, as root spans.
 * Also: one instrumentation at a time.
 */
import { AtomicError, atomic, onRollback } from 'pg-atomic'
import { instrumentPgAtomic } from 'pg-atomic/otel'
import { Boom, rejection, thrown } from '../support/errors'
import { setupHarness } from '../support/harness'
import type { Harness } from '../support/harness'
import { printTree, setupTelemetry } from './support'
import type { Telemetry } from './support'

let h: Harness
let telemetry: Telemetry
const logged: string[] = []

beforeAll(async () => {
  telemetry = setupTelemetry()
  h = await setupHarness('otel disabled', { logger: { error: (message) => logged.push(message) } })
  const clients = await Promise.all([h.pool.connect(), h.pool.connect()])
  for (const c of clients) c.release()
})

afterAll(async () => {
  await h.close()
  await telemetry.shutdown()
})

beforeEach(() => {
  telemetry.exporter.reset()
  logged.length = 0
})

/** A workload that would produce every kind of span and metric. */
async function workload(): Promise<void> {
  await atomic({ name: 'work', retry: { maxAttempts: 2, baseDelayMs: 0 } }, async () => {
    await h.db.query('select 1')
    await rejection(
      atomic(async () => {
        onRollback(() => {
          throw new Boom('hook')
        })
        await h.db.query('select 2')
        throw new Boom('inner')
      }),
    )
  })
}

const STATEMENTS_ONLY = [
  'pg-pool.connect',
  'pg.query:SELECT <db>',
  'pg.query:SELECT <db>',
  'pg.query:ROLLBACK <db>',
  'pg.query:COMMIT <db>',
].join('\n')

async function expectNothingFromPgAtomic(): Promise<void> {
  const spans = telemetry.exporter.getFinishedSpans()
  expect(spans.filter((s) => s.instrumentationScope.name === 'pg-atomic')).toEqual([])
  // instrumentation-pg's spans are there, each a root: no pg-atomic context was active.
  expect(printTree(spans, h.testDb.name).replace(/ db\.query\.text=.*$/gm, '')).toBe(STATEMENTS_ONLY)
  const metrics = await telemetry.collect()
  expect([...metrics.keys()].filter((name) => name.startsWith('pg_atomic.'))).toEqual([])
  expect(logged).toEqual([expect.stringMatching(/^Error calling an anonymous function in onRollback\(\)/) as string])
}

test('never enabled: no span, no metric from pg-atomic', async () => {
  await workload()
  await expectNothingFromPgAtomic()
})

test('enabled, then disabled: nothing after disable(); disable() twice is harmless', async () => {
  const otel = instrumentPgAtomic({ tracerProvider: telemetry.tracerProvider, meterProvider: telemetry.meterProvider })
  try {
    await workload()
  } finally {
    otel.disable()
  }
  otel.disable()
  expect(
    telemetry.exporter
      .getFinishedSpans()
      .filter((s) => s.instrumentationScope.name === 'pg-atomic')
      .map((s) => s.name),
  ).toEqual(['pg-atomic.savepoint', 'pg-atomic.attempt', 'work'])
  telemetry.exporter.reset()
  logged.length = 0
  // The meter keeps what it recorded while enabled; a new meter provider shows what comes after.
  await workload()
  expect(telemetry.exporter.getFinishedSpans().filter((s) => s.instrumentationScope.name === 'pg-atomic')).toEqual([])
  expect(printTree(telemetry.exporter.getFinishedSpans(), h.testDb.name).replace(/ db\.query\.text=.*$/gm, '')).toBe(
    STATEMENTS_ONLY,
  )
})

test('one instrumentation at a time: a second instrumentPgAtomic() throws until the first is disabled', () => {
  const first = instrumentPgAtomic({ tracerProvider: telemetry.tracerProvider, meterProvider: telemetry.meterProvider })
  try {
    const error = thrown(() => instrumentPgAtomic())
    expect(error).toBeInstanceOf(AtomicError)
    expect(error).toMatchObject({
      message:
        'pg-atomic/otel is already enabled: call disable() on the handle the first instrumentPgAtomic() ' +
        'returned before enabling it again.',
    })
  } finally {
    first.disable()
  }
  instrumentPgAtomic({ tracerProvider: telemetry.tracerProvider, meterProvider: telemetry.meterProvider }).disable()
})
