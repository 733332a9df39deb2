/**
 * `instrumentPgAtomic()`: spans and metrics for pg-atomic's transactions, on the instrumentation
 * seam of `src/instrumentation.ts`.
 *
 * @module
 */
import diagnostics_channel from 'node:diagnostics_channel'
import { SpanKind, SpanStatusCode, ValueType, context, createContextKey, metrics, trace } from '@opentelemetry/api'
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
import { AtomicError, CommitOutcomeUnknownError, OnCommitHookError, sqlState } from '../errors'
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
   * running finish their spans), and removes the pool gauges' callback. Calling it again does
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

interface Instruments {
  readonly transactions: Counter
  readonly retries: Counter
  readonly duration: Histogram
  readonly hold: Histogram
  readonly savepointRollbacks: Counter
  readonly hookFailures: Counter
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

/** Sets `error.type`, `db.response.status_code` and the error status. */
function markError(span: Span, error: unknown): void {
  const code = statusCode(error)
  const attributes: Attributes = { 'error.type': errorType(error) }
  if (code !== undefined) attributes['db.response.status_code'] = code
  span.setAttributes(attributes)
  span.setStatus({ code: SpanStatusCode.ERROR })
}

/** One attempt's position in a retried block (stored in the context of the block's span). */
interface RetryState {
  attempts: number
}

class Scope implements TransactionScope {
  private readonly span: Span
  private readonly context: Context
  private readonly started = performance.now()
  private connectedAt: number | undefined = undefined
  private ended = false
  /** The nested blocks that rolled back to their savepoint. */
  private readonly savepointsRolledBack = new WeakSet<NestedBlockView>()
  private readonly metricAttributes: Attributes

  constructor(
    private readonly tracer: Tracer,
    private readonly instruments: Instruments,
    private readonly parent: Context,
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
    if (retry !== undefined) attributes['pg_atomic.attempt'] = ++retry.attempts
    const name = retry !== undefined ? ATTEMPT_SPAN_NAME : (start.name ?? TRANSACTION_SPAN_NAME)
    this.span = tracer.startSpan(name, { kind: SpanKind.INTERNAL, attributes }, parent)
    this.context = trace.setSpan(parent, this.span)
    this.metricAttributes = { 'pg_atomic.database': start.database }
  }

  run<T>(work: () => Promise<T>): Promise<T> {
    // The block's own promise goes back to the caller (observed on the side, no extra turn): which
    // error Promise.all reports must not depend on whether tracing is on.
    const promise = context.with(this.context, work)
    promise.then(undefined, (error: unknown) => {
      // A non-robust onCommit hook failed after COMMIT (the span has ended as committed).
      if (error instanceof OnCommitHookError)
        this.instruments.hookFailures.add(1, { ...this.metricAttributes, 'pg_atomic.hook.kind': 'commit' })
      // An exit path that did not report its outcome (an internal error): the span still ends.
      if (!this.ended) this.end('rolled_back', error, 0)
    })
    return promise
  }

  connected(client: PoolClient): void {
    this.connectedAt = performance.now()
    const p = (client as PoolClient & { connectionParameters?: ConnectionParameters }).connectionParameters
    if (p === undefined) return
    const attributes: Attributes = {}
    if (typeof p.database === 'string') attributes['db.namespace'] = p.database
    if (typeof p.host === 'string') attributes['server.address'] = p.host
    if (typeof p.port === 'number') attributes['server.port'] = p.port
    this.span.setAttributes(attributes)
  }

  nested<T>(block: NestedBlockView, work: () => Promise<T>): Promise<T> {
    const attributes: Attributes = { 'pg_atomic.depth': block.depth }
    if (block.savepointName !== undefined) attributes['pg_atomic.savepoint'] = block.savepointName
    if (block.name !== undefined) attributes['pg_atomic.name'] = block.name
    const span = this.tracer.startSpan(
      block.name ?? SAVEPOINT_SPAN_NAME,
      { kind: SpanKind.INTERNAL, attributes },
      context.active(),
    )
    const done = (error: unknown, failed: boolean): void => {
      const rolledBack = this.savepointsRolledBack.has(block)
      span.setAttribute('pg_atomic.outcome', failed || rolledBack ? 'rolled_back' : 'released')
      if (failed) markError(span, error)
      if (rolledBack) this.instruments.savepointRollbacks.add(1, this.metricAttributes)
      span.end()
    }
    const promise = context.with(trace.setSpan(context.active(), span), work)
    promise.then(
      () => done(undefined, false),
      (error: unknown) => done(error, true),
    )
    return promise
  }

  rolledBack(block: NestedBlockView): void {
    this.savepointsRolledBack.add(block)
  }

  end(outcome: TransactionOutcome, error: unknown, roundTrips: number): void {
    if (this.ended) return
    this.ended = true
    const now = performance.now()
    this.span.setAttributes({ 'pg_atomic.outcome': outcome, 'pg_atomic.round_trips': roundTrips })
    if (error !== undefined) markError(this.span, error)
    this.span.end()
    const attributes = { ...this.metricAttributes, 'pg_atomic.outcome': outcome }
    this.instruments.transactions.add(1, attributes)
    this.instruments.duration.record((now - this.started) / 1000, attributes)
    if (this.connectedAt !== undefined)
      this.instruments.hold.record((now - this.connectedAt) / 1000, this.metricAttributes)
  }

  outside<T>(hook: () => T): T {
    return context.with(this.parent, hook)
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

  transaction(start: TransactionStart): TransactionScope {
    return new Scope(this.tracer, this.instruments, context.active(), start)
  }

  retrying<T>(start: BlockStart, attempts: () => Promise<T>): Promise<T> {
    const state: RetryState = { attempts: 0 }
    const attributes: Attributes = { 'db.system.name': 'postgresql', 'pg_atomic.database': start.database }
    if (start.name !== undefined) attributes['pg_atomic.name'] = start.name
    const span = this.tracer.startSpan(start.name ?? TRANSACTION_SPAN_NAME, { kind: SpanKind.INTERNAL, attributes })
    const ctx = trace.setSpan(context.active(), span).setValue(RETRY_SCOPE, state)
    const promise = context.with(ctx, attempts)
    promise.then(
      () => {
        span.setAttributes({ 'pg_atomic.attempts': state.attempts, 'pg_atomic.outcome': 'committed' })
        span.end()
      },
      (error: unknown) => {
        // Like the last attempt's span: a failed onCommit hook ran after a COMMIT (no error status).
        const committed = error instanceof OnCommitHookError
        const outcome = committed ? 'committed' : error instanceof CommitOutcomeUnknownError ? 'unknown' : 'rolled_back'
        span.setAttributes({ 'pg_atomic.attempts': state.attempts, 'pg_atomic.outcome': outcome })
        if (!committed) markError(span, error)
        span.end()
      },
    )
    return promise
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
 *    connection-hold histograms, savepoint rollbacks, hook failures, and each database's pool
 *    (total, idle, waiting).
 *
 * No bind value, server message or password is ever put in an attribute. Only one instrumentation
 * can be enabled at a time.
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
    }),
    hold: meter.createHistogram('pg_atomic.connection.hold_time', {
      description: 'How long a transaction held its connection, from checkout to the end of COMMIT or ROLLBACK.',
      unit: 's',
      valueType: ValueType.DOUBLE,
    }),
    savepointRollbacks: meter.createCounter('pg_atomic.savepoint.rollbacks', {
      description: 'Nested blocks rolled back to their savepoint.',
      unit: '{savepoint}',
    }),
    hookFailures: meter.createCounter('pg_atomic.hook.failures', {
      description: 'onCommit and onRollback hooks that failed.',
      unit: '{hook}',
    }),
  }
  const total = meter.createObservableGauge('pg_atomic.pool.total', {
    description: 'Connections of the database pool, idle or checked out.',
    unit: '{connection}',
  })
  const idle = meter.createObservableGauge('pg_atomic.pool.idle', {
    description: 'Idle connections of the database pool.',
    unit: '{connection}',
  })
  const waiting = meter.createObservableGauge('pg_atomic.pool.waiting', {
    description: 'Checkouts waiting for a connection of the database pool.',
    unit: '{request}',
  })
  const observePools: BatchObservableCallback = (result) => {
    for (const db of registeredDatabases()) {
      const pool = db.realPool
      const attributes = { 'pg_atomic.database': db.alias }
      result.observe(total, pool.totalCount, attributes)
      result.observe(idle, pool.idleCount, attributes)
      result.observe(waiting, pool.waitingCount, attributes)
    }
  }
  meter.addBatchObservableCallback(observePools, [total, idle, waiting])

  const onRetry = (message: unknown): void => {
    const event = message as RetryEvent
    const attributes: Attributes = { 'pg_atomic.database': event.database }
    if (event.code !== undefined) attributes['db.response.status_code'] = event.code
    instruments.retries.add(1, attributes)
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
  }
  const onHookError = (message: unknown): void => {
    const event = message as HookErrorEvent
    instruments.hookFailures.add(1, { 'pg_atomic.database': event.database, 'pg_atomic.hook.kind': event.kind })
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
      meter.removeBatchObservableCallback(observePools, [total, idle, waiting])
    },
  }
}
