/**
 * The real OpenTelemetry SDK for the pg-atomic/otel tests: an in-memory span exporter behind a
 * SimpleSpanProcessor, AsyncLocalStorage context propagation, a meter provider whose reader is
 * collected on demand, and the real `@opentelemetry/instrumentation-pg`.
 *
 * instrumentation-pg patches `pg` through require hooks (require-in-the-middle), which jest's own
 * module loader never calls. So it is patched by hand: its module definitions' `patch` functions
 * are applied to the `pg` and `pg-pool` modules of this test file's registry, the very modules the
 * harness's pool and pg-atomic use (`pg.Client.prototype.query` and `connect`, `pg-pool`'s
 * `Pool.prototype.connect`). The harness's recording client extends `pg.Client`, so it inherits
 * the patched methods. In an application, `registerInstrumentations()` (or the Node SDK) before
 * `pg` is first required does the same.
 */
import { context } from '@opentelemetry/api'
import type { Attributes, HrTime } from '@opentelemetry/api'
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks'
import { PgInstrumentation } from '@opentelemetry/instrumentation-pg'
import { MeterProvider, MetricReader } from '@opentelemetry/sdk-metrics'
import type { DataPoint, Histogram, MetricData } from '@opentelemetry/sdk-metrics'
import { BasicTracerProvider, InMemorySpanExporter, SimpleSpanProcessor } from '@opentelemetry/sdk-trace-base'
import type { ReadableSpan } from '@opentelemetry/sdk-trace-base'
import pg from 'pg'

/** A reader collected by the test (no timer). */
class TestReader extends MetricReader {
  protected onShutdown(): Promise<void> {
    return Promise.resolve()
  }
  protected onForceFlush(): Promise<void> {
    return Promise.resolve()
  }
}

export interface Telemetry {
  readonly exporter: InMemorySpanExporter
  readonly tracerProvider: BasicTracerProvider
  readonly meterProvider: MeterProvider
  readonly pgInstrumentation: PgInstrumentation
  /** Every metric collected now, by name. */
  collect(): Promise<Map<string, MetricData>>
  shutdown(): Promise<void>
}

export function setupTelemetry(): Telemetry {
  const contextManager = new AsyncLocalStorageContextManager().enable()
  context.setGlobalContextManager(contextManager)
  const exporter = new InMemorySpanExporter()
  const tracerProvider = new BasicTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] })
  const reader = new TestReader()
  const meterProvider = new MeterProvider({ readers: [reader] })
  // enabled: false: no require hooks (useless under jest); patched by hand below.
  const pgInstrumentation = new PgInstrumentation({ enabled: false })
  pgInstrumentation.setTracerProvider(tracerProvider)
  for (const definition of pgInstrumentation.getModuleDefinitions()) {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const exports: unknown = definition.name === 'pg' ? pg : require('pg-pool')
    definition.patch?.(exports)
  }
  return {
    exporter,
    tracerProvider,
    meterProvider,
    pgInstrumentation,
    async collect() {
      const { resourceMetrics } = await reader.collect()
      const byName = new Map<string, MetricData>()
      for (const scope of resourceMetrics.scopeMetrics) for (const m of scope.metrics) byName.set(m.descriptor.name, m)
      return byName
    },
    async shutdown() {
      for (const definition of pgInstrumentation.getModuleDefinitions()) {
        // eslint-disable-next-line @typescript-eslint/no-require-imports
        const exports: unknown = definition.name === 'pg' ? pg : require('pg-pool')
        definition.unpatch?.(exports)
      }
      await tracerProvider.shutdown()
      await meterProvider.shutdown()
      context.disable()
    },
  }
}

/** The attributes a printed span line shows, in this order, when present. */
const SHOWN = [
  'pg_atomic.attempt',
  'pg_atomic.savepoint',
  'pg_atomic.outcome',
  'pg_atomic.attempts',
  'error.type',
  'db.response.status_code',
  'db.query.text',
]

function ms(t: HrTime): number {
  return t[0] * 1000 + t[1] / 1e6
}

/**
 * The exported spans as an indented tree, one line per span, children in start order:
 * `name [status] key=value ...`, with `dbName` replaced by `<db>` (test databases have random
 * names). Parent links are checked exactly: a span whose parent was not exported is a root.
 */
export function printTree(spans: readonly ReadableSpan[], dbName: string): string {
  const ids = new Set(spans.map((s) => s.spanContext().spanId))
  const children = new Map<string | undefined, ReadableSpan[]>()
  for (const span of spans) {
    const parent = span.parentSpanContext?.spanId
    const key = parent !== undefined && ids.has(parent) ? parent : undefined
    const list = children.get(key) ?? []
    list.push(span)
    children.set(key, list)
  }
  const lines: string[] = []
  const walk = (parent: string | undefined, indent: string): void => {
    const list = (children.get(parent) ?? []).sort((a, b) => ms(a.startTime) - ms(b.startTime))
    for (const span of list) {
      const parts = [span.name.replaceAll(dbName, '<db>')]
      if (span.status.code === 2) parts.push('[ERROR]')
      for (const key of SHOWN) {
        const value = span.attributes[key]
        if (value !== undefined)
          parts.push(`${key}=${typeof value === 'string' ? JSON.stringify(value) : String(value)}`)
      }
      lines.push(indent + parts.join(' '))
      walk(span.spanContext().spanId, indent + '  ')
    }
  }
  walk(undefined, '')
  return lines.join('\n')
}

/** The spans named `name` (pg-atomic's own spans have fixed or block names). */
export function spansNamed(spans: readonly ReadableSpan[], name: string): ReadableSpan[] {
  return spans.filter((s) => s.name === name)
}

/** Every data point of a metric, as `[attributes, value]`, value being the sum, or the count for a histogram. */
export function points(metric: MetricData | undefined): Array<[Attributes, number]> {
  if (metric === undefined) return []
  return (metric.dataPoints as Array<DataPoint<number | Histogram>>).map((p) => [
    p.attributes,
    typeof p.value === 'number' ? p.value : p.value.count,
  ])
}
