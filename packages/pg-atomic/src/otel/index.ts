/**
 * `pg-atomic/otel`: OpenTelemetry tracing and metrics for pg-atomic's transactions.
 *
 * One call, `instrumentPgAtomic()`, enables both; the handle it returns disables them. Needs the
 * optional peer dependency `@opentelemetry/api` (1.9 or later); only this entry point loads it. See
 * the guide: docs/guide/observability.md, "Tracing and metrics".
 *
 * @example
 * ```ts
 * import { createDatabase } from 'pg-atomic'
 * import { instrumentPgAtomic } from 'pg-atomic/otel'
 *
 * instrumentPgAtomic() // the global tracer and meter providers, e.g. set up by @opentelemetry/sdk-node
 * const db = createDatabase({ connectionString: process.env.DATABASE_URL })
 * await db.atomic({ name: 'checkout' }, async () => {
 *   await db.query('select 1')
 * })
 * ```
 *
 * @packageDocumentation
 */
export {
  ATTEMPT_SPAN_NAME,
  DURATION_BUCKETS,
  INSTRUMENTATION_NAME,
  SAVEPOINT_SPAN_NAME,
  TRANSACTION_SPAN_NAME,
  instrumentPgAtomic,
} from './instrument'
export type { PgAtomicInstrumentation, PgAtomicInstrumentationOptions } from './instrument'
