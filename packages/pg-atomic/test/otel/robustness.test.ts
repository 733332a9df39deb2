/**
 * pg-atomic/otel never changes what the application sees: a span processor that throws (onStart or
 * onEnd) or a meter whose instruments throw leaves every transaction's outcome, result, error and
 * hooks exactly as untraced, db.close() does not hang, and the failures go to OpenTelemetry's diag
 * logger; a rejection nobody handles is an unhandled rejection, traced or not.
 */
import { spawn } from 'node:child_process'
import { join } from 'node:path'
import vm from 'node:vm'
import { DiagLogLevel, createNoopMeter, diag } from '@opentelemetry/api'
import type { Counter, Histogram, Meter, MeterProvider } from '@opentelemetry/api'
import { BasicTracerProvider, InMemorySpanExporter, SimpleSpanProcessor } from '@opentelemetry/sdk-trace-base'
import type { SpanProcessor } from '@opentelemetry/sdk-trace-base'
import { atomic, createDatabase, onCommit, onRollback, setRollback } from 'pg-atomic'
import type { Database } from 'pg-atomic'
import { instrumentPgAtomic } from 'pg-atomic/otel'
import { Boom, rejection } from '../support/errors'
import { setupHarness } from '../support/harness'
import type { Harness } from '../support/harness'
import { setupTelemetry } from './support'
import type { Telemetry } from './support'

/** jest gives each test file a copy of `process`; unhandled rejections go to the real one. */
const realProcess = vm.runInThisContext('process') as NodeJS.Process
const unhandled: unknown[] = []
const onUnhandled = (reason: unknown): void => {
  unhandled.push(reason)
}

let h: Harness
let telemetry: Telemetry
const diagErrors: string[] = []

beforeAll(async () => {
  telemetry = setupTelemetry()
  h = await setupHarness('otel robustness')
  await h.admin.query('create table t (x int primary key)')
  realProcess.on('unhandledRejection', onUnhandled)
  diag.setLogger(
    {
      error: (message: string) => diagErrors.push(message),
      warn: () => undefined,
      info: () => undefined,
      debug: () => undefined,
      verbose: () => undefined,
    },
    { logLevel: DiagLogLevel.ERROR, suppressOverrideMessage: true },
  )
})

afterAll(async () => {
  diag.disable()
  realProcess.off('unhandledRejection', onUnhandled)
  await h.close()
  await telemetry.shutdown()
})

beforeEach(async () => {
  await h.admin.query('truncate t')
  diagErrors.length = 0
  unhandled.length = 0
})

const INSERT = 'insert into t (x) values ($1)'

const describeError = (error: unknown): string => `${(error as Error).constructor.name}: ${(error as Error).message}`

/** What the application sees of a workload: results, errors, hooks, committed rows. */
interface Seen {
  results: unknown[]
  hooks: string[]
  rows: number[]
}

/** Every kind of block the tracer wraps: commit, caught nested failure, rollback, retry, requiresNew, hooks. */
async function workload(db: Database): Promise<Seen> {
  const hooks: string[] = []
  const results: unknown[] = []
  results.push(
    await db.atomic({ name: 'commits' }, async () => {
      await db.query(INSERT, [1])
      onCommit(() => hooks.push('commit 1'))
      return 'one'
    }),
  )
  results.push(
    await db.atomic(async () => {
      await db.query(INSERT, [2])
      const inner = await rejection(
        db.atomic({ name: 'inner' }, async () => {
          await db.query(INSERT, [3])
          onCommit(() => hooks.push('never: its savepoint rolled back'))
          onRollback(() => hooks.push('rollback 3'))
          throw new Boom('inner fails')
        }),
      )
      onCommit(() => hooks.push('commit 2'))
      return describeError(inner)
    }),
  )
  results.push(
    describeError(
      await rejection(
        db.atomic(async () => {
          await db.query(INSERT, [4])
          onRollback(() => hooks.push('rollback 4'))
          throw new Boom('outer fails')
        }),
      ),
    ),
  )
  let attempt = 0
  results.push(
    await db.atomic({ retry: { maxAttempts: 3, baseDelayMs: 0, retryOn: (e) => e instanceof Boom } }, async () => {
      attempt++
      await db.query(INSERT, [10 + attempt])
      onCommit(() => hooks.push(`commit attempt ${attempt}`))
      onRollback(() => hooks.push(`rollback attempt ${attempt}`))
      if (attempt === 1) throw new Boom('retry me')
      return `attempts ${attempt}`
    }),
  )
  results.push(
    await db.atomic({ retry: { maxAttempts: 2, baseDelayMs: 0 } }, async () => {
      await db.query(INSERT, [20])
      setRollback(true)
      return 'dry run'
    }),
  )
  results.push(
    await db.atomic(async () => {
      await db.query(INSERT, [30])
      await db.atomic({ propagation: 'requiresNew', retry: { maxAttempts: 2, baseDelayMs: 0 } }, async () => {
        await db.query(INSERT, [31])
        onCommit(() => hooks.push('commit requiresNew'))
      })
      onCommit(
        () => {
          throw new Boom('robust hook fails')
        },
        { robust: true },
      )
      return 'requiresNew'
    }),
  )
  const rows = (await db.query<{ x: number }>('select x from t order by x')).rows.map((r) => r.x)
  return { results, hooks, rows }
}

const EXPECTED: Seen = {
  results: ['one', 'Boom: inner fails', 'Boom: outer fails', 'attempts 2', 'dry run', 'requiresNew'],
  hooks: [
    'commit 1',
    'rollback 3',
    'commit 2',
    'rollback 4',
    'rollback attempt 1',
    'commit attempt 2',
    'commit requiresNew',
  ],
  rows: [1, 2, 12, 30, 31],
}

/** Runs the workload on a database of its own, then closes it (resolving `'closed'`, or `'hangs'`). */
async function runOn(name: string): Promise<Seen & { close: string }> {
  const db = createDatabase({ alias: name, connectionString: h.testDb.url, max: 2, logger: { error: () => undefined } })
  try {
    await h.admin.query('truncate t')
    const seen = await workload(db)
    let timer: NodeJS.Timeout | undefined
    const close = await Promise.race([
      db.close().then(() => 'closed'),
      new Promise<string>((resolve) => (timer = setTimeout(() => resolve('hangs'), 5000))),
    ])
    clearTimeout(timer)
    return { ...seen, close }
  } finally {
    await db.close({ timeoutMs: 0 })
  }
}

function throwingProcessor(where: 'onStart' | 'onEnd'): SpanProcessor {
  return {
    onStart: () => {
      if (where === 'onStart') throw new Boom('span processor onStart')
    },
    onEnd: () => {
      if (where === 'onEnd') throw new Boom('span processor onEnd')
    },
    forceFlush: () => Promise.resolve(),
    shutdown: () => Promise.resolve(),
  }
}

/** A meter whose counters and histograms throw on every recording (a broken exporter or view). */
function throwingMeterProvider(): MeterProvider {
  const broken = {
    add: () => {
      throw new Boom('meter add')
    },
    record: () => {
      throw new Boom('meter record')
    },
  }
  const meter: Meter = {
    ...createNoopMeter(),
    createCounter: () => broken as unknown as Counter,
    createHistogram: () => broken as unknown as Histogram,
  }
  // The no-op meter's methods do not use `this`; the spread keeps them.
  const noop = createNoopMeter()
  meter.createObservableUpDownCounter = noop.createObservableUpDownCounter.bind(noop)
  meter.addBatchObservableCallback = noop.addBatchObservableCallback.bind(noop)
  meter.removeBatchObservableCallback = noop.removeBatchObservableCallback.bind(noop)
  return { getMeter: () => meter }
}

test('untraced: the reference outcome', async () => {
  expect(await runOn('robust_untraced')).toEqual({ ...EXPECTED, close: 'closed' })
  expect(unhandled).toEqual([])
})

describe.each([
  ['a span processor whose onStart throws', 'onStart'],
  ['a span processor whose onEnd throws', 'onEnd'],
  ['a meter whose instruments throw', 'meter'],
] as const)('%s', (_title, mode) => {
  test('the outcome, results, errors, hooks and rows are exactly as untraced; db.close() does not hang', async () => {
    const exporter = new InMemorySpanExporter()
    const processors: SpanProcessor[] = [new SimpleSpanProcessor(exporter)]
    if (mode !== 'meter') processors.push(throwingProcessor(mode))
    const tracerProvider = new BasicTracerProvider({ spanProcessors: processors })
    const meterProvider = mode === 'meter' ? throwingMeterProvider() : telemetry.meterProvider
    const otel = instrumentPgAtomic({ tracerProvider, meterProvider })
    try {
      expect(await runOn(`robust_${mode}`)).toEqual({ ...EXPECTED, close: 'closed' })
    } finally {
      otel.disable()
    }
    await new Promise<void>((resolve) => setTimeout(resolve, 20))
    expect(unhandled).toEqual([])
    // Each failure was reported, never thrown.
    expect(diagErrors.length).toBeGreaterThan(0)
    for (const message of diagErrors)
      expect(message).toMatch(/^pg-atomic\/otel: .* failed; the transaction is not affected\.$/)
    // onStart: no span could start (each block ran untraced). Otherwise the spans were made and
    // exported (the throwing processor comes after the exporter's).
    const names = new Set(exporter.getFinishedSpans().map((s) => s.name))
    expect(names.has('commits') && names.has('inner')).toBe(mode !== 'onStart')
  })
})

/** Runs fixtures/unhandled-child.ts (tracing `on` or `off`): what it printed. */
function child(mode: 'on' | 'off'): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const env: NodeJS.ProcessEnv = { ...process.env, DATABASE_URL: h.testDb.url }
  for (const name of ['NODE_OPTIONS', 'JEST_WORKER_ID']) delete env[name]
  return new Promise((resolve, reject) => {
    const spawned = spawn(process.execPath, ['-r', 'ts-node/register/transpile-only', 'unhandled-child.ts', mode], {
      cwd: join(__dirname, 'fixtures'),
      env,
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    let stdout = ''
    let stderr = ''
    spawned.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()))
    spawned.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()))
    spawned.on('error', reject)
    spawned.on('close', (code) => resolve({ code, stdout, stderr }))
  })
}

// jest turns an unhandled rejection into a failure of its own: observed in a child process.
test('a rejection nobody handles is an unhandled rejection, traced or not (outermost, retried, nested)', async () => {
  const unhandledMessages = ['nested forgotten', 'outermost forgotten', 'retried forgotten']
  const [off, on] = await Promise.all([child('off'), child('on')])
  expect(off).toEqual({
    code: 0,
    stdout: JSON.stringify({ unhandled: unhandledMessages, traced: false }) + '\n',
    stderr: '',
  })
  expect(on).toEqual({
    code: 0,
    stdout: JSON.stringify({ unhandled: unhandledMessages, traced: true }) + '\n',
    stderr: '',
  })
}, 30_000)

test('a failing nested block settles on the same microtask traced or not (a race against other promises)', async () => {
  /** Rejects with `other` after `k` microtask hops. */
  const hops = async (k: number): Promise<never> => {
    for (let i = 0; i < k; i++) await Promise.resolve()
    throw new Boom('other')
  }
  // Which of the two rejections Promise.all reports, for 0 to 11 hops: `B` the block's, `o` the other's.
  const race = async (): Promise<string> => {
    let seen = ''
    for (let k = 0; k < 12; k++) {
      const error = await h.db.atomic(async () => {
        await h.db.query('select 1')
        return rejection(
          atomic(async () => {
            await Promise.all([
              atomic(async () => {
                throw new Boom('block')
              }),
              hops(k),
            ])
          }),
        )
      })
      seen += (error as Error).message === 'block' ? 'B' : 'o'
    }
    return seen
  }
  const untraced = await race()
  expect(untraced).toMatch(/^o+B+$/)
  const otel = instrumentPgAtomic({ tracerProvider: telemetry.tracerProvider, meterProvider: telemetry.meterProvider })
  try {
    expect(await race()).toBe(untraced)
  } finally {
    otel.disable()
  }
})
