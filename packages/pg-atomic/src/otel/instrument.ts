/**
 * `instrumentPgAtomic()`: spans and metrics for pg-atomic's transactions, on the instrumentation
 * seam of `src/instrumentation.ts`.
 *
 * @module
 */
import diagnostics_channel from 'node:diagnostics_channel'
import {
  SpanKind,
  SpanStatusCode,
  ValueType,
  context,
  createContextKey,
  diag,
  metrics,
  trace,
} from '@opentelemetry/api'
import type {
  Attributes,
  BatchObservableCallback,
  Context,
  Counter,
  Histogram,
  MeterProvider,
  Span,
  Tracer,
  TracerProvider,
} from '@opentelemetry/api'
import type { PoolClient } from 'pg'
import { AtomicError, sqlState } from '../errors'
import { HOOK_ERROR_CHANNEL, RETRY_CHANNEL } from '../events'
import type { HookErrorEvent, RetryEvent } from '../events'
import { instrumentation } from '../instrumentation'
import type {
  BlockStart,
  Instrumentation,
  NestedBlockView,
  TransactionOutcome,
  TransactionScope,
  TransactionStart,
} from '../instrumentation'
import { registeredDatabases } from '../registry'

/** Options of {@link instrumentPgAtomic}. */
export interface PgAtomicInstrumentationOptions {
  /** Where spans go. Default: the global tracer provider (`trace.getTracerProvider()`). */
  tracerProvider?: TracerProvider
  /** Where metrics go. Default: the global meter provider (`metrics.getMeterProvider()`). */
  meterProvider?: MeterProvider
}

/** What {@link instrumentPgAtomic} returns. */
export interface PgAtomicInstrumentation {
  /**
   * Stops creating spans and recording metrics for blocks that start from now on (blocks already
   * running finish their spans), and removes the pool metrics' callback. Calling it again does
   * nothing.
   */
  disable(): void
}

/** The instrumentation scope name of pg-atomic's tracer and meter. */
export const INSTRUMENTATION_NAME = 'pg-atomic'

/** Name of an outermost block's span when the block has no `name` option. */
export const TRANSACTION_SPAN_NAME = 'pg-atomic.transaction'

/** Name of a nested block's span (a savepoint) when the block has no `name` option. */
export const SAVEPOINT_SPAN_NAME = 'pg-atomic.savepoint'

/** Name of the span of each attempt of a block with a retry policy (children of the block's span). */
export const ATTEMPT_SPAN_NAME = 'pg-atomic.attempt'

const RETRY_SCOPE = createContextKey('pg-atomic retry scope')

const POOL_NAME = 'db.client.connection.pool.name'
const CONNECTION_STATE = 'db.client.connection.state'

/**
 * Bucket boundaries, in seconds, of the duration histograms: those OpenTelemetry's database
 * conventions recommend for `db.client.operation.duration` (the SDK's default ones suit milliseconds).
 */
export const DURATION_BUCKETS: readonly number[] = Object.freeze([
  0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
])

interface Instruments {
  readonly transactions: Counter
  readonly retries: Counter
  readonly duration: Histogram
  readonly hold: Histogram
  readonly savepointRollbacks: Counter
  readonly hookFailures: Counter
}

/**
 * Reports a failure of the tracer or meter (a throwing span processor, exporter or instrument) to
 * OpenTelemetry's diagnostic logger. Never throws: the tracer must not change the application's outcome.
 */
function report(what: string, error: unknown): void {
  try {
    diag.error(`pg-atomic/otel: ${what} failed; the transaction is not affected.`, error)
  } catch {
    // A throwing diagnostic logger: nothing else can be told.
  }
}

/** Runs one call into the OpenTelemetry API; an exception is reported, never thrown. */
function guard(what: string, call: () => void): void {
  try {
    call()
  } catch (error) {
    report(what, error)
  }
}

/** The SQLSTATE of an error, or of the cause of pg-atomic's own error (a swallowed error, a lost connection). */
function statusCode(error: unknown): string | undefined {
  const own = sqlState(error)
  if (own !== undefined) return own
  return error instanceof AtomicError ? sqlState(error.cause) : undefined
}

/**
 * `error.type`: the SQLSTATE of a server error (pg's `DatabaseError`), else the error's class name.
 * Never a message: a server message can quote a bind value.
 */
function errorType(error: unknown): string {
  const own = sqlState(error)
  if (own !== undefined) return own
  if (error instanceof Error) return error.name === '' ? error.constructor.name : error.name
  return '_OTHER'
}

/** Sets `error.type`, `db.response.status_code` and the error status (never throws). */
function markError(span: Span, error: unknown): void {
  guard('recording an error on a span', () => {
    const code = statusCode(error)
    const attributes: Attributes = { 'error.type': errorType(error) }
    if (code !== undefined) attributes['db.response.status_code'] = code
    span.setAttributes(attributes)
    span.setStatus({ code: SpanStatusCode.ERROR })
  })
}

/** A retried block (stored in the context of its span, and cleared in the context of each attempt). */
interface RetryState {
  /** Attempts started. */
  attempts: number
  /** The context the retried block was entered from: its attempts' hooks run there. */
  readonly outer: Context
  /** How the last attempt ended (`undefined`: it has not ended, or was not traced). */
  outcome: TransactionOutcome | undefined
  /** The error the last attempt recorded (`undefined` for a commit and an intentional rollback). */
  error: unknown
}

class Scope implements TransactionScope {
  private readonly span: Span
  private readonly context: Context
  /** Where hooks run: the context the block (the retried block, for an attempt) was entered from. */
  private readonly outer: Context
  private readonly retry: RetryState | undefined
  private readonly started = performance.now()
  private connectedAt: number | undefined = undefined
  private ended = false
  /** The nested blocks that rolled back to their savepoint. */
  private readonly savepointsRolledBack = new WeakSet<NestedBlockView>()
  private readonly metricAttributes: Attributes

  /** @throws whatever the tracer throws while the span starts ({@link OtelInstrumentation.transaction} falls back). */
  constructor(
    private readonly tracer: Tracer,
    private readonly instruments: Instruments,
    parent: Context,
    start: TransactionStart,
  ) {
    const retry = parent.getValue(RETRY_SCOPE) as RetryState | undefined
    const attributes: Attributes = {
      'db.system.name': 'postgresql',
      'pg_atomic.database': start.database,
      'pg_atomic.transaction.id': start.id,
      'pg_atomic.depth': 1,
    }
    if (start.name !== undefined) attributes['pg_atomic.name'] = start.name
    if (start.isolationLevel !== undefined) attributes['pg_atomic.isolation_level'] = start.isolationLevel
    if (start.readOnly !== undefined) attributes['pg_atomic.read_only'] = start.readOnly
    if (start.deferrable !== undefined) attributes['pg_atomic.deferrable'] = start.deferrable
    const name = retry !== undefined ? ATTEMPT_SPAN_NAME : (start.name ?? TRANSACTION_SPAN_NAME)
    if (retry !== undefined) attributes['pg_atomic.attempt'] = retry.attempts + 1
    this.span = tracer.startSpan(name, { kind: SpanKind.INTERNAL, attributes }, parent)
    // The retry state belongs to this attempt only: a requiresNew block inside it, or a transaction
    // opened in its hooks, is no attempt of it.
    this.context = trace.setSpan(parent, this.span).deleteValue(RETRY_SCOPE)
    this.outer = retry === undefined ? parent : retry.outer
    this.metricAttributes = { 'pg_atomic.database': start.database }
    this.retry = retry
    if (retry !== undefined) {
      retry.attempts++
      retry.outcome = undefined
      retry.error = undefined
    }
  }

  run<T>(work: () => Promise<T>): Promise<T> {
    // The block's own promise goes back to the caller, with no handler attached: an unobserved
    // rejection stays unhandled, and which error Promise.all reports does not depend on tracing.
    // The span ends from the state machine (end()).
    return context.with(this.context, work)
  }

  connected(client: PoolClient): void {
    this.connectedAt = performance.now()
    const p = (client as PoolClient & { connectionParameters?: ConnectionParameters }).connectionParameters
    if (p === undefined) return
    const attributes: Attributes = {}
    if (typeof p.database === 'string') attributes['db.namespace'] = p.database
    if (typeof p.host === 'string') attributes['server.address'] = p.host
    if (typeof p.port === 'number') attributes['server.port'] = p.port
    guard('setting span attributes', () => this.span.setAttributes(attributes))
  }

  nested<T>(block: NestedBlockView, work: () => Promise<T>): Promise<T> {
    const attributes: Attributes = { 'pg_atomic.depth': block.depth }
    if (block.savepointName !== undefined) attributes['pg_atomic.savepoint'] = block.savepointName
    if (block.name !== undefined) attributes['pg_atomic.name'] = block.name
    let span: Span
    try {
      span = this.tracer.startSpan(block.name ?? SAVEPOINT_SPAN_NAME, { kind: SpanKind.INTERNAL, attributes })
    } catch (error) {
      report('starting a span', error)
      return work()
    }
    const promise = context.with(trace.setSpan(context.active(), span), work)
    // Observed on the side, with handlers that never throw (the promise they return never rejects),
    // and no extra turn. This promise is the state machine's own (enterNested() awaits it), never the
    // one the application gets, so observing it leaves an unhandled rejection of the block unhandled.
    promise.then(
      () => this.nestedEnded(span, block, undefined, false),
      (error: unknown) => this.nestedEnded(span, block, error, true),
    )
    return promise
  }

  private nestedEnded(span: Span, block: NestedBlockView, error: unknown, failed: boolean): void {
    const rolledBack = this.savepointsRolledBack.has(block)
    guard('setting span attributes', () =>
      span.setAttribute('pg_atomic.outcome', failed || rolledBack ? 'rolled_back' : 'released'),
    )
    if (failed) markError(span, error)
    guard('ending a span', () => span.end())
  }

  rolledBack(block: NestedBlockView): void {
    this.savepointsRolledBack.add(block)
    // Counted here, for every nested block (a query builder's nested transaction too).
    guard('recording a metric', () => this.instruments.savepointRollbacks.add(1, this.metricAttributes))
  }

  end(outcome: TransactionOutcome, error: unknown, roundTrips: number): void {
    if (this.ended) return
    this.ended = true
    if (this.retry !== undefined) {
      this.retry.outcome = outcome
      this.retry.error = error
    }
    const now = performance.now()
    guard('setting span attributes', () =>
      this.span.setAttributes({ 'pg_atomic.outcome': outcome, 'pg_atomic.round_trips': roundTrips }),
    )
    if (error !== undefined) markError(this.span, error)
    guard('ending a span', () => this.span.end())
    const attributes = { ...this.metricAttributes, 'pg_atomic.outcome': outcome }
    guard('recording a metric', () => this.instruments.transactions.add(1, attributes))
    guard('recording a metric', () => this.instruments.duration.record((now - this.started) / 1000, attributes))
    const connectedAt = this.connectedAt
    if (connectedAt !== undefined)
      guard('recording a metric', () => this.instruments.hold.record((now - connectedAt) / 1000, this.metricAttributes))
  }

  commitHookFailed(): void {
    const attributes = { ...this.metricAttributes, 'pg_atomic.hook.kind': 'commit' }
    guard('recording a metric', () => this.instruments.hookFailures.add(1, attributes))
  }

  outside<T>(hook: () => T): T {
    return context.with(this.outer, hook)
  }
}

interface ConnectionParameters {
  readonly database?: unknown
  readonly host?: unknown
  readonly port?: unknown
}

class OtelInstrumentation implements Instrumentation {
  constructor(
    private readonly tracer: Tracer,
    private readonly instruments: Instruments,
  ) {}

  transaction(start: TransactionStart): TransactionScope | undefined {
    try {
      return new Scope(this.tracer, this.instruments, context.active(), start)
    } catch (error) {
      // Not traced: the transaction runs as if no tracer were installed.
      report('starting a span', error)
      return undefined
    }
  }

  async retrying<T>(start: BlockStart, attempts: () => Promise<T>): Promise<T> {
    const attributes: Attributes = { 'db.system.name': 'postgresql', 'pg_atomic.database': start.database }
    if (start.name !== undefined) attributes['pg_atomic.name'] = start.name
    const outer = context.active()
    const state: RetryState = { attempts: 0, outer, outcome: undefined, error: undefined }
    let span: Span
    try {
      span = this.tracer.startSpan(start.name ?? TRANSACTION_SPAN_NAME, { kind: SpanKind.INTERNAL, attributes })
    } catch (error) {
      report('starting a span', error)
      return attempts()
    }
    const ctx = trace.setSpan(outer, span).setValue(RETRY_SCOPE, state)
    // Awaited here, so the promise the caller gets is this function's: a rejection nobody handles
    // stays unhandled.
    let result: T
    try {
      result = await context.with(ctx, attempts)
    } catch (error) {
      // The last attempt's outcome and error, as its span recorded them; the block's error when no
      // attempt was traced to its end (the database was closed before it started, say).
      const ended = state.outcome !== undefined
      this.retried(span, state, ended ? state.outcome : 'rolled_back', ended ? state.error : error)
      throw error
    }
    this.retried(span, state, state.outcome ?? 'committed', state.error)
    return result
  }

  private retried(span: Span, state: RetryState, outcome: TransactionOutcome | undefined, error: unknown): void {
    guard('setting span attributes', () =>
      span.setAttributes({ 'pg_atomic.attempts': state.attempts, 'pg_atomic.outcome': outcome }),
    )
    if (error !== undefined) markError(span, error)
    guard('ending a span', () => span.end())
  }
}

/**
 * Enables OpenTelemetry tracing and metrics for every pg-atomic database of the process.
 *
 * 1. Spans: one per outermost block (named after its `name` option, else `pg-atomic.transaction`),
 *    from checkout to the end of COMMIT / ROLLBACK, active while the block runs, so that the spans
 *    of `@opentelemetry/instrumentation-pg` (statements, including Kysely's and Drizzle's through
 *    `db.pool`, and COMMIT / ROLLBACK) are its children; a child span per nested block with a
 *    savepoint; with a retry policy, one `pg-atomic.attempt` span per attempt under the block's.
 * 2. Metrics: transactions by outcome, retries by SQLSTATE, transaction duration and
 *    connection-hold histograms (in seconds, with the buckets of {@link DURATION_BUCKETS}),
 *    savepoint rollbacks, hook failures, and each database's pool (`db.client.connection.count` by
 *    state, `db.client.connection.pending_requests`).
 *
 * No bind value, server message or password is ever put in an attribute. Only one instrumentation
 * can be enabled at a time. A tracer or meter that throws (a failing span processor, say) never
 * changes a transaction's outcome: the failure goes to OpenTelemetry's `diag` logger.
 *
 * @param options - where spans and metrics go; defaults to the global providers.
 * @returns a handle whose `disable()` turns it off again.
 * @throws AtomicError when pg-atomic/otel is already enabled.
 *
 * @example
 * ```ts
 * const otel = instrumentPgAtomic()
 * await db.atomic({ name: 'checkout' }, async () => {
 *   await db.query('select 1')
 * })
 * otel.disable()
 * ```
 */
export function instrumentPgAtomic(options: PgAtomicInstrumentationOptions = {}): PgAtomicInstrumentation {
  if (instrumentation.current !== undefined)
    throw new AtomicError(
      'pg-atomic/otel is already enabled: call disable() on the handle the first instrumentPgAtomic() ' +
        'returned before enabling it again.',
    )
  const tracer = (options.tracerProvider ?? trace.getTracerProvider()).getTracer(INSTRUMENTATION_NAME)
  const meter = (options.meterProvider ?? metrics.getMeterProvider()).getMeter(INSTRUMENTATION_NAME)
  const instruments: Instruments = {
    transactions: meter.createCounter('pg_atomic.transactions', {
      description: 'Transactions (outermost blocks, or attempts of a retried block) by outcome.',
      unit: '{transaction}',
    }),
    retries: meter.createCounter('pg_atomic.retries', {
      description: 'Automatic retries of a block, by the SQLSTATE retried.',
      unit: '{retry}',
    }),
    duration: meter.createHistogram('pg_atomic.transaction.duration', {
      description: 'Duration of a transaction, from the start of its block to the end of COMMIT or ROLLBACK.',
      unit: 's',
      valueType: ValueType.DOUBLE,
      advice: { explicitBucketBoundaries: [...DURATION_BUCKETS] },
    }),
    hold: meter.createHistogram('pg_atomic.connection.hold_time', {
      description: 'How long a transaction held its connection, from checkout to the end of COMMIT or ROLLBACK.',
      unit: 's',
      valueType: ValueType.DOUBLE,
      advice: { explicitBucketBoundaries: [...DURATION_BUCKETS] },
    }),
    savepointRollbacks: meter.createCounter('pg_atomic.savepoint.rollbacks', {
      description: "Nested blocks (and query builders' nested transactions) rolled back to their savepoint.",
      unit: '{savepoint}',
    }),
    hookFailures: meter.createCounter('pg_atomic.hook.failures', {
      description: 'onCommit and onRollback hooks that failed.',
      unit: '{hook}',
    }),
  }
  // The pool, in the stable database client conventions (db.client.connection.*).
  const connections = meter.createObservableUpDownCounter('db.client.connection.count', {
    description: 'Connections of the database pool, by state (idle or used).',
    unit: '{connection}',
  })
  const pending = meter.createObservableUpDownCounter('db.client.connection.pending_requests', {
    description: 'Checkouts waiting for a connection of the database pool.',
    unit: '{request}',
  })
  const observePools: BatchObservableCallback = (result) => {
    try {
      for (const db of registeredDatabases()) {
        const pool = db.realPool
        const name = db.alias
        const idle = pool.idleCount
        result.observe(connections, idle, { [POOL_NAME]: name, [CONNECTION_STATE]: 'idle' })
        result.observe(connections, pool.totalCount - idle, { [POOL_NAME]: name, [CONNECTION_STATE]: 'used' })
        result.observe(pending, pool.waitingCount, { [POOL_NAME]: name })
      }
    } catch (error) {
      report('observing the pools', error)
    }
  }
  meter.addBatchObservableCallback(observePools, [connections, pending])

  // Subscribers run inside the state machine's publish(): an exception here would escape there.
  const onRetry = (message: unknown): void => {
    try {
      const event = message as RetryEvent
      const attributes: Attributes = { 'pg_atomic.database': event.database }
      if (event.code !== undefined) attributes['db.response.status_code'] = event.code
      guard('recording a metric', () => instruments.retries.add(1, attributes))
      // Published inside the retried block's context, after the failed attempt's span has ended.
      const span = trace.getSpan(context.active())
      if (span !== undefined && context.active().getValue(RETRY_SCOPE) !== undefined) {
        const eventAttributes: Attributes = {
          'pg_atomic.attempt': event.attempt,
          'pg_atomic.retry.delay_ms': event.delayMs,
          'error.type': errorType(event.error),
        }
        if (event.code !== undefined) eventAttributes['db.response.status_code'] = event.code
        span.addEvent('pg_atomic.retry', eventAttributes)
      }
    } catch (error) {
      report('recording a retry', error)
    }
  }
  const onHookError = (message: unknown): void => {
    try {
      const event = message as HookErrorEvent
      instruments.hookFailures.add(1, { 'pg_atomic.database': event.database, 'pg_atomic.hook.kind': event.kind })
    } catch (error) {
      report('recording a hook failure', error)
    }
  }
  diagnostics_channel.subscribe(RETRY_CHANNEL, onRetry)
  diagnostics_channel.subscribe(HOOK_ERROR_CHANNEL, onHookError)

  const installed = new OtelInstrumentation(tracer, instruments)
  instrumentation.current = installed
  let enabled = true
  return {
    disable(): void {
      if (!enabled) return
      enabled = false
      if (instrumentation.current === installed) instrumentation.current = undefined
      diagnostics_channel.unsubscribe(RETRY_CHANNEL, onRetry)
      diagnostics_channel.unsubscribe(HOOK_ERROR_CHANNEL, onHookError)
      meter.removeBatchObservableCallback(observePools, [connections, pending])
    },
  }
}
