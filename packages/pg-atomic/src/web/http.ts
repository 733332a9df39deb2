/**
 * One `node:http` exchange under a per-request transaction: the response is held
 * ({@link ResponseHold}) while the request blocks run ({@link startRequest}), and released,
 * discarded or replaced by an error response according to the outcome. Shared by
 * `atomicListener()` and the Express integration (and meant for any integration whose handler
 * writes to a `ServerResponse`).
 *
 * @module
 */
import { AsyncResource } from 'node:async_hooks'
import type { IncomingMessage, ServerResponse } from 'node:http'
import { currentTransaction } from '../ambient'
import { CommitOutcomeUnknownError, InvalidOptionError, TransactionManagementError } from '../errors'
import { withReadYourWrites } from '../replicas/session'
import { ResponseHold } from './hold'
import type { HoldListener } from './hold'
import { resolveRequestOptions } from './options'
import type { RequestOptions, ResolvedRequestOptions } from './options'
import { startRequest } from './request'
import type { RequestOutcome, RequestScope } from './request'

/** What to do with an error once the request blocks have ended and the held response is discarded. @internal */
export type ErrorSink = (error: unknown) => void

/**
 * The per-request state of a held `node:http` response. `start()` may be called again (a route
 * marker replacing the application's options) as long as the running request blocks sent nothing.
 * @internal
 */
export class HttpExchange implements HoldListener {
  readonly hold: ResponseHold
  /** The options of the running request blocks (`undefined` when none run). */
  options: ResolvedRequestOptions | undefined
  private scope: RequestScope | undefined
  private generation = 0
  /** The request was passed on to other handlers: running the handler again is no longer possible. */
  private passedOn = false
  /** The async context the exchange was created in: outside the request blocks. */
  /**
   * The request's own async context, outside any block: a read-your-writes context of its own, so
   * that routes running outside the request blocks (nonAtomic()) still read their own commits.
   */
  private readonly outsideContext = withReadYourWrites(() => new AsyncResource('pg-atomic.request'))

  constructor(
    private readonly res: ServerResponse,
    bufferLimitBytes: number,
  ) {
    this.hold = new ResponseHold(res, bufferLimitBytes, this)
    res.once('close', () => {
      // 'close' before 'finish': the client went away (or the socket failed) mid-request.
      if (!res.writableFinished) this.scope?.abort()
    })
  }

  complete(status: number): void {
    this.scope?.complete(status)
  }

  stream(status: number): void {
    this.scope?.stream(status)
  }

  /** Runs `fn` in the async context the exchange was created in, outside the request blocks. */
  outside<R>(fn: () => R): R {
    // In a resource of its own: AsyncLocalStorage.run() sets its store on the resource it runs in
    // until it returns, so a block entered by `fn` must not mark the captured context itself (a
    // marker calling outside() again while that block's callback is still on the stack would
    // see it).
    return this.outsideContext.runInAsyncScope(() => new AsyncResource('pg-atomic.request').runInAsyncScope(fn))
  }

  /** The request was handed to other handlers: never run the handler again. */
  passOn(): void {
    this.passedOn = true
  }

  /**
   * Runs `invoke` in new request blocks with `options`, outside any block entered before; the
   * request blocks running until now (which ran no statement: see {@link HttpExchange.begun}) end
   * with nothing sent, and their outcome is ignored.
   */
  start(options: ResolvedRequestOptions, invoke: (scope: RequestScope) => unknown, onError: ErrorSink): void {
    const generation = ++this.generation
    this.scope?.abort()
    this.scope = undefined
    this.options = options
    this.hold.limitBytes = options.bufferLimitBytes
    const handler = (scope: RequestScope): unknown => {
      if (generation !== this.generation) {
        scope.abort()
        return undefined
      }
      // Another run of the handler (retry): the response of the previous run never left.
      if (scope.attempt > 1) this.hold.reset()
      this.scope = scope
      return invoke(scope)
    }
    const outcome = this.outside(() => startRequest(options, handler, { canRetry: () => !this.passedOn }))
    outcome.then((result) => {
      if (generation === this.generation) this.settle(result, onError)
    }, onError)
  }

  /** No request blocks any more (a route that opted out): what the handler writes goes straight out. */
  passThrough(): void {
    this.generation++
    this.scope?.abort()
    this.scope = undefined
    this.options = undefined
    this.hold.release()
  }

  /**
   * A `TransactionManagementError` when a request block has already sent a statement, so that
   * `subject` (a route marker) can no longer replace it; `undefined` otherwise.
   */
  begun(subject: string): TransactionManagementError | undefined {
    for (const alias of this.options?.databases ?? []) {
      if (currentTransaction({ using: alias })?.begun === true) {
        return new TransactionManagementError(
          `${subject} must run before the first statement of the request: a middleware before it ` +
            "already ran a statement in the request's transaction, which was begun with the " +
            `application's options. Put ${subject} before that middleware, or give its options to ` +
            'the application-wide middleware.',
        )
      }
    }
    return undefined
  }

  private settle(outcome: RequestOutcome, onError: ErrorSink): void {
    if (outcome.kind === 'committed') {
      this.hold.release()
      return
    }
    if (outcome.kind === 'rolled-back' && (outcome.reason === 'status' || outcome.reason === 'set-rollback')) {
      // Rolled back as the request asked: its own response says what happened.
      this.hold.release()
      return
    }
    this.hold.discard()
    if (outcome.kind === 'rolled-back' && outcome.reason === 'aborted') return
    if (this.res.headersSent) {
      // Cannot happen while the response is held; never turn a sent response into another one.
      this.res.destroy()
      return
    }
    onError(outcome.error)
  }
}

/** A `node:http` request listener, as `http.createServer()` takes it. */
export type RequestListener<
  Req extends IncomingMessage = IncomingMessage,
  Res extends ServerResponse = ServerResponse,
> = (req: Req, res: Res) => unknown

const OUTCOME_UNKNOWN_BODY =
  "The outcome of the request's transaction is unknown: the connection to the database was lost " +
  'while COMMIT was in flight, so it may or may not have been committed. Check before sending the ' +
  'request again.\n'
const FAILED_BODY = 'The request failed, and its transaction was not committed.\n'

/**
 * Wraps a `node:http` request listener so that each request runs inside request blocks
 * ({@link runRequest}) and its response is held until the transaction's outcome is known.
 *
 * 1. `res.end()` completes the response: the blocks commit, or roll back when `rollbackOn`
 *    matches the status (default ≥ 500) or the listener called `setRollback(true)`; then the
 *    response leaves unchanged.
 * 2. `res.write()`, `res.flushHeaders()` or a stream piped into `res` start streaming: the blocks
 *    commit (or roll back) first, at the first byte, then the response streams. Statements after
 *    that point are refused.
 * 3. When the listener throws or rejects, or COMMIT fails, the held response is discarded (with
 *    the headers it set) and a `500 text/plain` response says the request failed; when the outcome
 *    of COMMIT is unknown, it says so. A failure after streaming began destroys the connection.
 * 4. A client that disconnects before the response is complete rolls the request back.
 * 5. With `retry`, a serialization failure or deadlock runs the listener again with the same
 *    `req` and a reset `res` (status and headers as before the first run), if nothing was sent.
 *
 * Options are validated here, before any request (`InvalidOptionError`).
 *
 * @example
 * ```ts
 * import { createServer } from 'node:http'
 * const server = createServer(
 *   atomicListener({ retry: 3, isolationLevel: 'serializable' }, async (req, res) => {
 *     await db.query('update counters set hits = hits + 1 where path = $1', [req.url])
 *     res.setHeader('content-type', 'text/plain')
 *     res.end('counted\n') // leaves after COMMIT
 *   }),
 * )
 * server.listen(8080)
 * ```
 */
export function atomicListener<Req extends IncomingMessage, Res extends ServerResponse>(
  options: RequestOptions | undefined,
  listener: RequestListener<Req, Res>,
): (req: Req, res: Res) => void {
  const resolved = resolveRequestOptions(options, { name: 'atomicListener()' })
  if (typeof listener !== 'function') {
    throw new InvalidOptionError('listener', 'atomicListener() expects the request listener as its second argument.')
  }
  return function atomicRequestListener(req: Req, res: Res): void {
    const exchange = new HttpExchange(res, resolved.bufferLimitBytes)
    exchange.start(
      resolved,
      () => listener(req, res),
      (error) => sendFailure(res, error),
    )
  }
}

/** The response of a request that failed, when no framework renders it. @internal */
export function sendFailure(res: ServerResponse, error: unknown): void {
  if (res.headersSent) {
    res.destroy()
    return
  }
  const body = error instanceof CommitOutcomeUnknownError ? OUTCOME_UNKNOWN_BODY : FAILED_BODY
  res.statusCode = 500
  res.setHeader('content-type', 'text/plain; charset=utf-8')
  res.setHeader('content-length', Buffer.byteLength(body))
  res.end(body)
}
