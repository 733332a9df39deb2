/**
 * The framework-neutral core of per-request transactions: `runRequest(options, handler)` runs a
 * request's handler inside one outermost `atomic()` block per configured database and decides,
 * from what the integration reports (the response is complete, or starts streaming, or the
 * handler failed, or the client went away), whether the blocks commit or roll back. It says when
 * the held response may leave: after COMMIT, before the `onCommit` hooks run.
 *
 * Only the public `atomic()` API is used: a request that runs no statement sends nothing and
 * checks out no connection.
 *
 * @module
 */
import { atomic, currentTransaction, inAtomicBlock } from '../ambient'
import { AtomicError, InvalidOptionError, OnCommitHookError } from '../errors'
import { withReadYourWrites } from '../replicas/session'
import type { AtomicLogger, AtomicOptions, RetryOptions } from '../options'
import { findDatabase } from '../registry'
import type { TransactionHandle } from '../types'
import { resolveRequestOptions } from './options'
import type { RequestOptions, ResolvedRequestOptions } from './options'

/**
 * What the integration tells the core about one run of the handler (an attempt). The first call
 * of {@link RequestScope.complete}, {@link RequestScope.stream}, {@link RequestScope.fail} or
 * {@link RequestScope.abort} decides how the request blocks end; later calls are ignored.
 */
export interface RequestScope {
  /** 1 for the first run of the handler, 2 and more when it runs again after a retryable failure. */
  readonly attempt: number
  /** Whether one of the four calls below has decided this attempt. */
  readonly decided: boolean
  /**
   * The response is complete and held: end the request blocks now. They roll back when
   * `rollbackOn(status)` says so or the handler called `setRollback(true)`, and commit otherwise.
   * Release the response when the outcome says so.
   */
  complete(status: number): void
  /**
   * The first bytes of the response would leave before it is complete (a write, flushed headers,
   * a piped stream): end the request blocks now, as {@link RequestScope.complete} does, and hold
   * the bytes until the outcome is known. Statements the handler runs afterwards are refused (their
   * block has ended), and the attempt is not retried.
   */
  stream(status: number): void
  /** The handler failed (threw, rejected, passed an error on): roll back; the outcome carries `error`. */
  fail(error: unknown): void
  /** The client went away before the response was complete: roll back; there is nobody to answer. */
  abort(): void
}

/** The handler of a request: called once per attempt, inside the request blocks. */
export type RequestHandler = (scope: RequestScope) => unknown

/** What every {@link RequestOutcome} says. */
export interface RequestOutcomeBase {
  /** Runs of the handler (0 when the request blocks could not be entered, so it never ran). */
  readonly attempts: number
  /**
   * Resolves when the request blocks have fully exited: after the `onCommit` hooks of a committed
   * request (a failing hook is logged, never reported here), or after the `onRollback` hooks.
   * Never rejects.
   */
  readonly settled: Promise<void>
}

/** Every request block committed: send the held response unchanged. */
export interface RequestCommitted extends RequestOutcomeBase {
  /** Always `'committed'`. */
  readonly kind: 'committed'
}

/**
 * The request blocks rolled back because the request asked for it. `reason`:
 * - `'status'`: `rollbackOn` matched the response's status; send the held response.
 * - `'set-rollback'`: the handler called `setRollback(true)`; send the held response.
 * - `'error'`: the handler failed; discard the held response and hand `error` to the framework's
 *   error handling.
 * - `'aborted'`: the client went away; there is nothing to send.
 */
export interface RequestRolledBack extends RequestOutcomeBase {
  /** Always `'rolled-back'`. */
  readonly kind: 'rolled-back'
  /** Why the request rolled back (see above). */
  readonly reason: 'status' | 'set-rollback' | 'error' | 'aborted'
  /** The handler's error (`'error'`), or what the rollback reported (`'status'`, `'aborted'`); else undefined. */
  readonly error: unknown
}

/**
 * The transaction failed where the response said it succeeded: COMMIT failed (a deferred
 * constraint, a serialization failure, a lost connection), its outcome is unknown
 * (`CommitOutcomeUnknownError`), the handler swallowed an error of a statement, or the request
 * blocks could not be entered. Discard the held response and hand `error` to the framework's error
 * handling: a 5xx, never a 2xx or 3xx. Nothing was committed, except with several databases when a
 * later one fails after an earlier one committed (there is no two-phase commit).
 */
export interface RequestFailed extends RequestOutcomeBase {
  /** Always `'failed'`. */
  readonly kind: 'failed'
  /** What failed: the COMMIT's error, `CommitOutcomeUnknownError`, the block's `TransactionManagementError`, .... */
  readonly error: unknown
}

/** How a request ended, known as soon as the last COMMIT or ROLLBACK is answered. */
export type RequestOutcome = RequestCommitted | RequestRolledBack | RequestFailed

/** What an integration adds to a request. @internal */
export interface RequestIntegration {
  /** `false` once the integration can no longer run the handler again (it passed the request on). */
  canRetry?(): boolean
}

/**
 * Runs a request's handler inside one outermost `atomic()` block per database of
 * `options.databases` and resolves with the request's outcome as soon as it is known.
 *
 * 1. The blocks are nested in the order listed, the first innermost: it commits first, then the
 *    others (no two-phase commit). A block that runs no statement sends nothing.
 * 2. `handler(scope)` is called inside the blocks. The blocks end at the first of
 *    `scope.complete(status)`, `scope.stream(status)`, `scope.fail(error)`, `scope.abort()`, or a
 *    rejection of the promise `handler` returns (a resolved promise decides nothing: many
 *    frameworks' handlers return before the response is complete).
 * 3. The outcome resolves right after the last COMMIT, before the `onCommit` hooks run (they run
 *    next; a failing one is logged with the database's logger and never changes the outcome), or
 *    after the ROLLBACK and its `onRollback` hooks. See {@link RequestOutcome} for what to do with
 *    the held response.
 * 4. With `retry`, an attempt that failed with a serialization failure or deadlock (by default)
 *    runs again: `handler` is called with a new scope whose `attempt` is 2, 3, ... Not after the
 *    attempt started streaming, nor after an earlier database of the request committed.
 *
 * Invalid options reject before any SQL (`InvalidOptionError`); everything that happens later is
 * an outcome, never a rejection.
 *
 * @example
 * ```ts
 * declare const reply: { status: number; body: string; send(): void; discard(): void }
 * const outcome = await runRequest({ isolationLevel: 'repeatable read' }, async (scope) => {
 *   await db.query('insert into visits(at) values (now())')
 *   scope.complete(reply.status) // the response is ready and held
 * })
 * if (outcome.kind === 'failed') reply.discard() // and answer with a 5xx
 * else reply.send()
 * ```
 */
export function runRequest(options: RequestOptions | undefined, handler: RequestHandler): Promise<RequestOutcome> {
  try {
    if (typeof handler !== 'function') {
      throw new InvalidOptionError('handler', 'runRequest() expects the request handler as its second argument.')
    }
    return startRequest(resolveRequestOptions(options, { name: 'runRequest()' }), handler)
  } catch (error) {
    return Promise.reject(error)
  }
}

/** {@link runRequest} with validated options, for the integrations. @internal */
export function startRequest(
  options: ResolvedRequestOptions,
  handler: RequestHandler,
  integration: RequestIntegration = {},
): Promise<RequestOutcome> {
  // Each request is a read-your-writes context of its own: its replica reads see its commits.
  return withReadYourWrites(() => new RequestRun(options, handler, integration).start())
}

const CLIENT_GONE_MESSAGE =
  'The client closed the connection before the response was complete, so the ' +
  "request's transaction was rolled back."

type Decision =
  | { readonly kind: 'respond'; readonly status: number }
  | { readonly kind: 'fail'; readonly error: unknown }
  | { readonly kind: 'abort'; readonly error: AtomicError }

/** One run of the handler. */
class Scope implements RequestScope {
  decided = false
  /** The response started leaving before it was complete: never run again. */
  streamed = false
  /** A database of the request other than the last committed: never run again. */
  partlyCommitted = false
  /** The request blocks, by index in `databases`. */
  readonly handles: TransactionHandle[] = []
  /** Why the blocks were told to roll back, if they were. */
  intended: 'status' | 'set-rollback' | undefined
  decision: Decision | undefined
  readonly decided$: Promise<Decision>
  private resolve!: (decision: Decision) => void

  constructor(readonly attempt: number) {
    this.decided$ = new Promise<Decision>((resolve) => (this.resolve = resolve))
  }

  complete(status: number): void {
    this.decide({ kind: 'respond', status: checkStatus(status, 'complete') })
  }

  stream(status: number): void {
    const checked = checkStatus(status, 'stream')
    if (!this.decided) this.streamed = true
    this.decide({ kind: 'respond', status: checked })
  }

  fail(error: unknown): void {
    this.decide({ kind: 'fail', error })
  }

  abort(): void {
    this.decide({ kind: 'abort', error: new AtomicError(CLIENT_GONE_MESSAGE) })
  }

  private decide(decision: Decision): void {
    if (this.decided) return
    this.decided = true
    this.decision = decision
    this.resolve(decision)
  }
}

function checkStatus(status: number, method: string): number {
  if (!Number.isInteger(status) || status < 100 || status > 999) {
    throw new InvalidOptionError(
      'status',
      `RequestScope.${method}() expects the HTTP status code of the response, a whole number from 100 to 999.`,
    )
  }
  return status
}

/** `atomic()` options by alias, for requests without retry: validated once, then reused. */
const blockOptionsCache = new WeakMap<ResolvedRequestOptions, Map<string, AtomicOptions>>()

/** One request: its blocks, its attempts, its outcome. */
class RequestRun {
  /** Attempts begun (the outermost block entered). */
  private attempts = 0
  /** Runs of the handler. */
  private runs = 0
  private scope: Scope | undefined
  private outcome: RequestOutcome | undefined
  private resolveOutcome!: (outcome: RequestOutcome) => void
  private resolveSettled!: () => void
  private readonly settled = new Promise<void>((resolve) => (this.resolveSettled = resolve))
  private readonly retry: RetryOptions | undefined

  constructor(
    private readonly options: ResolvedRequestOptions,
    private readonly handler: RequestHandler,
    private readonly integration: RequestIntegration,
  ) {
    const retry = options.retry
    this.retry =
      retry === undefined
        ? undefined
        : {
            ...retry,
            retryOn: (error) => this.mayRetry() && (retry.retryOn as (error: unknown) => boolean)(error),
          }
  }

  start(): Promise<RequestOutcome> {
    const outcome = new Promise<RequestOutcome>((resolve) => (this.resolveOutcome = resolve))
    this.enter(this.options.databases.length - 1).then(
      () => this.finished(false, undefined),
      (error: unknown) => this.finished(true, error),
    )
    return outcome
  }

  /** Whether the attempt that just failed may run again (the library asks after its ROLLBACK). */
  private mayRetry(): boolean {
    const scope = this.scope
    if (scope === undefined || scope.streamed || scope.partlyCommitted) return false
    return this.integration.canRetry?.() !== false
  }

  /** The block of `databases[index]`, with the blocks of the databases before it nested inside. */
  private enter(index: number): Promise<void> {
    const alias = this.options.databases[index] as string
    const outermost = index === this.options.databases.length - 1
    return atomic(this.blockOptions(alias, outermost), async (tx) => {
      if (outermost) this.scope = new Scope(++this.attempts)
      const scope = this.scope as Scope
      scope.handles[index] = tx
      let begun = false
      if (outermost) {
        // The first hook of the last database to commit: it runs right after the last COMMIT,
        // before any hook of the handler's, which is when the response may leave.
        tx.onCommit(() => this.committed(), { robust: true })
      } else {
        tx.onCommit(
          () => {
            if (begun) scope.partlyCommitted = true
          },
          { robust: true },
        )
      }
      try {
        if (index === 0) await this.body(scope)
        else await this.enterInner(index - 1)
      } finally {
        begun = currentTransaction({ using: alias })?.begun === true
      }
    })
  }

  private async enterInner(index: number): Promise<void> {
    try {
      await this.enter(index)
    } catch (error) {
      // The inner database committed and one of its hooks failed: its data is committed, so the
      // other databases commit too rather than turning a committed request into a failed one.
      if (!(error instanceof OnCommitHookError)) throw error
      this.logger(this.options.databases[index] as string).error(
        `The request block of database '${this.options.databases[index] as string}' was committed, ` +
          'but one of its onCommit hooks failed and the hooks after it were not run; the error is ' +
          'attached. The request was not rolled back or retried: its data is committed.',
        error,
      )
    }
  }

  private blockOptions(alias: string, outermost: boolean): AtomicOptions {
    // Inside an enclosing block of this database (a test wrapping requests in a transaction) the
    // request block is a savepoint: retry is then not allowed, and not needed.
    const nested = inAtomicBlock({ using: alias })
    if (outermost && this.retry !== undefined && !nested)
      return { ...this.options.atomic, using: alias, retry: this.retry }
    let byAlias = blockOptionsCache.get(this.options)
    if (byAlias === undefined) blockOptionsCache.set(this.options, (byAlias = new Map()))
    const key = `${nested ? 'nested' : 'outermost'}:${alias}`
    let options = byAlias.get(key)
    if (options === undefined) {
      // retry: 1 so that a database's default retry never runs a handler twice on its own.
      options = Object.freeze(
        nested ? { ...this.options.atomic, using: alias } : { ...this.options.atomic, using: alias, retry: 1 },
      )
      byAlias.set(key, options)
    }
    return options
  }

  /** Runs the handler in the innermost block and waits for what decides the attempt. */
  private async body(scope: Scope): Promise<void> {
    this.runs++
    try {
      const result = this.handler(scope)
      if (isPromiseLike(result)) result.then(undefined, (error: unknown) => scope.fail(error))
    } catch (error) {
      scope.fail(error)
    }
    const decision = await scope.decided$
    if (decision.kind !== 'respond') throw decision.error
    const byStatus = this.options.rollbackOn(decision.status)
    // setRollback(true) reaches the innermost block only; the request rolls back as a whole.
    const flagged = scope.handles.some((handle) => handle.getRollback())
    if (byStatus || flagged) {
      scope.intended = byStatus ? 'status' : 'set-rollback'
      // A block already marked keeps its mark: a doom by a failed statement must stay one (the
      // block then rejects with it, so a swallowed error is reported and a 40001 retried).
      for (const handle of scope.handles) if (!handle.getRollback()) handle.setRollback(true)
    }
  }

  private committed(): void {
    this.settle({ kind: 'committed', attempts: this.runs, settled: this.settled })
  }

  /** The outermost block has exited: everything has run, hooks included. */
  private finished(rejected: boolean, error: unknown): void {
    const scope = this.scope
    if (this.outcome !== undefined) {
      // Committed, and the response already released: a hook's failure can only be logged.
      if (rejected) {
        this.logger(this.options.databases[this.options.databases.length - 1] as string).error(
          "The request's transaction was committed and its response released, but an onCommit hook " +
            'failed and the hooks after it were not run; the error is attached. The response was not ' +
            'changed and the request was not retried: its data is committed.',
          error,
        )
      }
    } else if (scope === undefined) {
      this.settle({ kind: 'failed', attempts: 0, error, settled: this.settled })
    } else if (scope.decision?.kind === 'fail') {
      this.settle({ kind: 'rolled-back', reason: 'error', error, attempts: this.runs, settled: this.settled })
    } else if (scope.decision?.kind === 'abort') {
      this.settle({ kind: 'rolled-back', reason: 'aborted', error, attempts: this.runs, settled: this.settled })
    } else if (!rejected || scope.intended === 'status') {
      // Rolled back as asked (a silent rollback resolves; a doomed block rejects, which the
      // failure status already reports).
      const reason = scope.intended ?? 'set-rollback'
      this.settle({ kind: 'rolled-back', reason, error, attempts: this.runs, settled: this.settled })
    } else {
      this.settle({ kind: 'failed', error, attempts: this.runs, settled: this.settled })
    }
    this.resolveSettled()
  }

  private settle(outcome: RequestOutcome): void {
    if (this.outcome !== undefined) return
    this.outcome = outcome
    this.resolveOutcome(outcome)
  }

  private logger(alias: string): AtomicLogger {
    return findDatabase(alias)?.logger ?? console
  }
}

function isPromiseLike(value: unknown): value is PromiseLike<unknown> {
  return (
    (typeof value === 'object' || typeof value === 'function') &&
    value !== null &&
    typeof (value as PromiseLike<unknown>).then === 'function'
  )
}
