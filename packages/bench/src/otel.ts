/**
 * The cost of `pg-atomic/otel`: the pg-atomic contestant with tracing off and on, interleaved in
 * rounds, on loopback. `npx tsc -b && node packages/bench/dist/otel.js [--rounds n] [--ops n]`.
 *
 * Variants, each a sequential batch of `--ops` operations per workload and round, in an order
 * rotated by the round:
 *
 * - `off`: `instrumentPgAtomic()` not called (the core only checks an empty slot);
 * - `off again`: the same, a second batch of the round: `off again / off` is the noise floor;
 * - `on`: `instrumentPgAtomic()` with the real SDK: a BasicTracerProvider whose SimpleSpanProcessor
 *   hands every span to an exporter that drops it, a MeterProvider with a reader (never collected),
 *   the AsyncLocalStorage context manager (registered for every variant, as an application with
 *   OpenTelemetry has it). instrumentation-pg is not loaded: the figure is pg-atomic's own cost.
 *
 * Per round each variant's p50 latency and client CPU per operation (main thread, as in measure.ts)
 * are divided by `off`'s of the same round; the table shows the median of those ratios and their
 * min–max over the rounds. A benchmark, not a test: nothing fails on timings.
 *
 * @module
 */
import { context } from '@opentelemetry/api'
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks'
import { MeterProvider, MetricReader } from '@opentelemetry/sdk-metrics'
import { BasicTracerProvider, SimpleSpanProcessor } from '@opentelemetry/sdk-trace-base'
import type { ReadableSpan, SpanExporter } from '@opentelemetry/sdk-trace-base'
import pg from 'pg'
import { instrumentPgAtomic } from 'pg-atomic/otel'
import { createPgAtomic } from './contestants/pg-atomic'
import { openBenchDatabase } from './database'
import { sequential } from './measure'
import type { Batch } from './measure'
import { quantile, spread } from './stats'
import type { Spread } from './stats'
import { Ledger, planOperations } from './workloads'
import type { WorkloadId } from './workloads'
import { createSchema } from './workloads/schema'

const VARIANTS = ['off', 'off again', 'on'] as const
type Variant = (typeof VARIANTS)[number]
const WORKLOADS: readonly WorkloadId[] = ['select1', 'nested']

/** Receives every span and keeps none (the cost measured is creating and ending them). */
class DroppingExporter implements SpanExporter {
  spans = 0
  export(spans: ReadableSpan[], done: (result: { code: 0 }) => void): void {
    this.spans += spans.length
    done({ code: 0 })
  }
  shutdown(): Promise<void> {
    return Promise.resolve()
  }
}

class IdleReader extends MetricReader {
  protected onShutdown(): Promise<void> {
    return Promise.resolve()
  }
  protected onForceFlush(): Promise<void> {
    return Promise.resolve()
  }
}

function option(name: string, fallback: number): number {
  const i = process.argv.indexOf(`--${name}`)
  if (i < 0) return fallback
  const value = Number(process.argv[i + 1])
  if (!Number.isInteger(value) || value < 1) throw new Error(`--${name} expects a positive integer`)
  return value
}

const fmt = (s: Spread, digits = 2): string =>
  `${s.median.toFixed(digits)} (${s.min.toFixed(digits)}–${s.max.toFixed(digits)})`

async function main(): Promise<void> {
  const rounds = option('rounds', 10)
  const ops = option('ops', 300)
  context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable())
  const exporter = new DroppingExporter()
  const tracerProvider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] })
  const meterProvider = new MeterProvider({ readers: [new IdleReader()] })

  const db = await openBenchDatabase()
  const checker = new pg.Client({ connectionString: db.url })
  const contestant = createPgAtomic({ url: db.url, poolSize: 1 })
  try {
    await checker.connect()
    await createSchema(checker, { scale: 1 })
    const ctx = { ledger: new Ledger(), scale: 1, hotAccounts: 4 }
    console.log(`pg-atomic/otel cost: ${rounds} rounds × ${ops} sequential operations per variant and workload`)
    const run = async (workload: WorkloadId, variant: Variant, seed: number): Promise<Batch> => {
      const plan = planOperations(workload, seed, ops, ctx)
      if (variant !== 'on') return sequential(contestant, plan)
      const otel = instrumentPgAtomic({ tracerProvider, meterProvider })
      try {
        return await sequential(contestant, plan)
      } finally {
        otel.disable()
      }
    }
    // Warm-up: JIT, the connection, statement caches, and the SDK's code paths.
    for (const workload of WORKLOADS) for (const variant of VARIANTS) await run(workload, variant, 0)

    const batches = new Map<string, Batch[]>()
    for (let r = 0; r < rounds; r++) {
      for (const workload of WORKLOADS) {
        for (let k = 0; k < VARIANTS.length; k++) {
          const variant = VARIANTS[(k + r) % VARIANTS.length] as Variant
          const batch = await run(workload, variant, r + 1)
          if (batch.errors > 0) throw new Error(`${workload} ${variant}: ${batch.firstError ?? 'failed'}`)
          const key = `${workload}/${variant}`
          batches.set(key, [...(batches.get(key) ?? []), batch])
        }
      }
    }

    console.log(
      '\nworkload  variant     p50 ms  ×off p50 (min–max)   CPU µs/op  ×off CPU (min–max)   ' + 'proc µs/op  KB/op',
    )
    for (const workload of WORKLOADS) {
      const base = batches.get(`${workload}/off`) ?? []
      for (const variant of VARIANTS) {
        const list = batches.get(`${workload}/${variant}`) ?? []
        const p50 = list.map((b) => quantile(b.latenciesMs ?? [], 0.5))
        const cpu = list.map((b) => b.mainCpuUs / b.ops)
        const p50Ratio = spread(p50.map((v, i) => v / quantile(base[i]?.latenciesMs ?? [], 0.5)))
        const cpuRatio = spread(cpu.map((v, i) => v / ((base[i]?.mainCpuUs ?? 0) / (base[i]?.ops ?? 1))))
        const proc = spread(list.map((b) => b.cpuUs / b.ops))
        const kb = spread(list.map((b) => b.allocatedBytes / b.ops / 1024))
        console.log(
          `${workload.padEnd(9)} ${variant.padEnd(10)} ${spread(p50).median.toFixed(3).padStart(7)}  ` +
            `${fmt(p50Ratio).padEnd(19)} ${spread(cpu).median.toFixed(1).padStart(10)}  ` +
            `${fmt(cpuRatio).padEnd(19)} ${proc.median.toFixed(1).padStart(11)}  ${kb.median.toFixed(1).padStart(5)}`,
        )
      }
    }
    console.log(`\nspans exported (and dropped): ${exporter.spans}`)
  } finally {
    await contestant.close()
    await checker.end().catch(() => undefined)
    await tracerProvider.shutdown()
    await meterProvider.shutdown()
    await db.drop()
  }
}

main().catch((error: unknown) => {
  console.error(error)
  process.exitCode = 1
})
