/**
 * pg-atomic/otel and retried blocks: the retry state stays with the retried block's own attempts
 * (a requiresNew block inside an attempt, or a transaction opened in its hooks, is no attempt of
 * it), a requiresNew block's own retries get a retry parent, the retried block's span reports its
 * last attempt's outcome, and each failure is counted once, where it happens.
 */
import { OnCommitHookError, atomic, onCommit, setRollback } from 'pg-atomic'
import { instrumentPgAtomic } from 'pg-atomic/otel'
import type { PgAtomicInstrumentation } from 'pg-atomic/otel'
import { Boom, rejection } from '../support/errors'
import { setupHarness } from '../support/harness'
import type { Harness } from '../support/harness'
import { points, printTree, setupTelemetry } from './support'
import type { Telemetry } from './support'

let h: Harness
let telemetry: Telemetry
let otel: PgAtomicInstrumentation

beforeAll(async () => {
  telemetry = setupTelemetry()
  h = await setupHarness('otel retry context')
  // Every pooled connection opened before the tests: no pg.connect spans in the trees.
  const clients = await Promise.all([h.pool.connect(), h.pool.connect(), h.pool.connect()])
  for (const c of clients) c.release()
  otel = instrumentPgAtomic({ tracerProvider: telemetry.tracerProvider, meterProvider: telemetry.meterProvider })
})

afterAll(async () => {
  otel.disable()
  await h.close()
  await telemetry.shutdown()
})

beforeEach(() => {
  telemetry.exporter.reset()
  h.reset()
})

/** The tree without instrumentation-pg's spans (pg-atomic's and the application's only). */
const tree = (): string =>
  printTree(
    telemetry.exporter.getFinishedSpans().filter((s) => !s.instrumentationScope.name.includes('instrumentation-pg')),
    h.testDb.name,
  )
const RETRY = { maxAttempts: 3, baseDelayMs: 0 }

test('requiresNew blocks inside an attempt are transactions of their own, not attempts', async () => {
  await atomic({ name: 'outer', retry: RETRY }, async () => {
    await h.db.query('select 1')
    await atomic({ name: 'audit', propagation: 'requiresNew' }, async () => {
      await h.db.query('select 2')
    })
    await atomic({ name: 'audit2', propagation: 'requiresNew' }, async () => {
      await h.db.query('select 3')
    })
  })
  // Not pg-atomic.attempt, no pg_atomic.attempt: the outer block ran one attempt.
  expect(tree()).toBe(
    [
      'outer pg_atomic.outcome="committed" pg_atomic.attempts=1',
      '  pg-atomic.attempt pg_atomic.attempt=1 pg_atomic.outcome="committed"',
      '    audit pg_atomic.outcome="committed"',
      '    audit2 pg_atomic.outcome="committed"',
    ].join('\n'),
  )
})

test("a retried block's hooks run where it was entered: their spans and blocks are not its children", async () => {
  const app = telemetry.tracerProvider.getTracer('app')
  await atomic({ name: 'order', retry: RETRY }, async () => {
    await h.db.query('select 1')
    onCommit(async () => {
      app.startSpan('hook work').end()
      await atomic({ name: 'outbox' }, async () => {
        await h.db.query('select 2')
      })
    })
  })
  // Roots: the hook runs outside the transaction, as an unretried block's hooks do.
  expect(tree()).toBe(
    [
      'order pg_atomic.outcome="committed" pg_atomic.attempts=1',
      '  pg-atomic.attempt pg_atomic.attempt=1 pg_atomic.outcome="committed"',
      'hook work',
      'outbox pg_atomic.outcome="committed"',
    ].join('\n'),
  )
})

test('a requiresNew block with a retry policy: its attempts under its own span', async () => {
  let attempt = 0
  await atomic({ name: 'outer' }, async () => {
    await h.db.query('select 1')
    await atomic(
      { name: 'audit', propagation: 'requiresNew', retry: { ...RETRY, retryOn: (e) => e instanceof Boom } },
      async () => {
        attempt++
        await h.db.query('select 2')
        if (attempt === 1) throw new Boom('once')
      },
    )
  })
  expect(tree()).toBe(
    [
      'outer pg_atomic.outcome="committed"',
      '  audit pg_atomic.outcome="committed" pg_atomic.attempts=2',
      '    pg-atomic.attempt [ERROR] pg_atomic.attempt=1 pg_atomic.outcome="rolled_back" error.type="Boom"',
      '    pg-atomic.attempt pg_atomic.attempt=2 pg_atomic.outcome="committed"',
    ].join('\n'),
  )
})

test('a retried block that rolls back on purpose (setRollback(true)): rolled_back, no error status', async () => {
  expect(
    await atomic({ name: 'dry-run', retry: RETRY }, async () => {
      await h.db.query('select 1')
      setRollback(true)
      return 'done'
    }),
  ).toBe('done')
  // As its attempt says (it used to claim committed).
  expect(tree()).toBe(
    [
      'dry-run pg_atomic.outcome="rolled_back" pg_atomic.attempts=1',
      '  pg-atomic.attempt pg_atomic.attempt=1 pg_atomic.outcome="rolled_back"',
    ].join('\n'),
  )
})

test('an uncaught inner requiresNew onCommit failure: the retried block rolled back, counted once', async () => {
  const before = points((await telemetry.collect()).get('pg_atomic.hook.failures'))
  const error = await rejection(
    atomic({ name: 'outer', retry: RETRY }, async () => {
      await h.db.query('select 1')
      await atomic({ name: 'inner', propagation: 'requiresNew' }, async () => {
        await h.db.query('select 2')
        onCommit(() => {
          throw new Boom('hook')
        })
      })
    }),
  )
  expect(error).toBeInstanceOf(OnCommitHookError)
  // The inner block committed; its error made the outer one roll back (not "committed").
  expect(tree()).toBe(
    [
      'outer [ERROR] pg_atomic.outcome="rolled_back" pg_atomic.attempts=1 error.type="OnCommitHookError"',
      '  pg-atomic.attempt [ERROR] pg_atomic.attempt=1 pg_atomic.outcome="rolled_back" error.type="OnCommitHookError"',
      '    inner pg_atomic.outcome="committed"',
    ].join('\n'),
  )
  const after = points((await telemetry.collect()).get('pg_atomic.hook.failures'))
  const commitHook = { 'pg_atomic.database': 'default', 'pg_atomic.hook.kind': 'commit' }
  expect({ before, after }).toEqual({ before: [], after: [[commitHook, 1]] })
})

test("a query builder's nested transaction rolled back is a savepoint rollback in the metric", async () => {
  const count = async (): Promise<Array<[unknown, number]>> =>
    points((await telemetry.collect()).get('pg_atomic.savepoint.rollbacks'))
  const before = await count()
  await atomic({ name: 'outer' }, async () => {
    await h.db.query('select 1')
    const client = await h.db.pool.connect()
    try {
      await client.query('BEGIN')
      await client.query('select 2')
      await client.query('ROLLBACK')
    } finally {
      client.release()
    }
  })
  const database = { 'pg_atomic.database': 'default' }
  expect({ before, after: await count() }).toEqual({ before: [], after: [[database, 1]] })
  // The builder's ROLLBACK was a rollback to the block's savepoint.
  expect(h.batches).toEqual([
    ['BEGIN', 'select 1'],
    ['SAVEPOINT "pga_1"', 'select 2'],
    ['ROLLBACK TO SAVEPOINT "pga_1"; RELEASE SAVEPOINT "pga_1"; COMMIT'],
  ])
})
