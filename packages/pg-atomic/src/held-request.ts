/**
 * One request of a framework integration that answers through its own machinery (Fastify's
 * `reply.send()` and `onSend` hooks, NestJS's interceptors and exception filters): the request
 * blocks ({@link startRequest}), a {@link ResponseHold} on the `node:http` response for what the
 * handler writes to it directly (a stream, server-sent events), and the outcome, handed to the
 * integration, which holds the framework's own response until then.
 *
 * Built on the `pg-atomic/web` core only; shared by `pg-atomic/fastify` and `pg-atomic/nestjs`.
 *
 * @module
 * @internal
 */
import type { ServerResponse } from 'node:http'
import { CommitOutcomeUnknownError } from './errors'
import { ResponseHold } from './web/hold'
import type { HoldListener } from './web/hold'
import type { ResolvedRequestOptions } from './web/options'
import { startRequest } from './web/request'
import type { RequestOutcome, RequestScope } from './web/request'

/** What the integration does for one request. @internal */
export interface HeldRequestHandler {
  /**
   * Runs the handler for one attempt, inside the request blocks. A rejected promise (or a throw)
   * fails the attempt; a resolved one decides nothing.
   */
  invoke(scope: RequestScope): unknown
  /** Before attempt 2, 3, ...: put the framework's response back as it was before attempt 1. */
  reset?(): void
  /** `false` once the handler can no longer run again. */
  canRetry?(): boolean
}

/** The request blocks of one request, and the hold of its `node:http` response. @internal */
export class HeldRequest implements HoldListener {
  readonly hold: ResponseHold
  /** Resolves when every request block has committed or rolled back (never rejects). */
  readonly outcome: Promise<RequestOutcome>
  /** The outcome, once known. */
  settled: RequestOutcome | undefined
  /** Part of this attempt's response asked to leave through the hold (`res.write()`, `res.end()`, ...). */
  responding = false
  private scope: RequestScope | undefined

  constructor(
    private readonly res: ServerResponse,
    options: ResolvedRequestOptions,
    handler: HeldRequestHandler,
  ) {
    this.hold = new ResponseHold(res, options.bufferLimitBytes, this)
    res.once('close', () => {
      // 'close' before 'finish': the client went away (or the socket failed) mid-request.
      if (!res.writableFinished) this.scope?.abort()
    })
    this.outcome = startRequest(
      options,
      (scope) => {
        if (scope.attempt > 1) {
          // Another run of the handler (retry): nothing of the previous run left.
          this.hold.reset()
          handler.reset?.()
        }
        this.scope = scope
        this.responding = false
        return handler.invoke(scope)
      },
      { canRetry: () => !res.headersSent && handler.canRetry?.() !== false },
    )
    // First in line: the hold is released or discarded before the integration sees the outcome,
    // so that what the framework writes next goes through (or only an error response does).
    void this.outcome.then((outcome) => {
      this.settled = outcome
      if (sendsOwnResponse(outcome)) this.hold.release()
      else this.hold.discard()
    })
  }

  /** The scope of the running attempt. */
  get current(): RequestScope | undefined {
    return this.scope
  }

  complete(status: number): void {
    this.responding = true
    this.scope?.complete(status)
  }

  stream(status: number): void {
    this.responding = true
    this.scope?.stream(status)
  }
}

/**
 * Whether the request's own response is sent after this outcome: it committed, or it rolled back
 * as the request asked (its status matched `rollbackOn`, or the handler called `setRollback(true)`).
 * Otherwise the response is replaced by an error response (or there is nobody to answer).
 * @internal
 */
export function sendsOwnResponse(outcome: RequestOutcome): boolean {
  return (
    outcome.kind === 'committed' ||
    (outcome.kind === 'rolled-back' && (outcome.reason === 'status' || outcome.reason === 'set-rollback'))
  )
}

/**
 * The error a framework's error handling receives for a failed outcome. A
 * `CommitOutcomeUnknownError` gets the fields of the `http-errors` convention (`status`,
 * `statusCode` 500, `expose: true`), which the default error handlers of Express, Fastify and
 * NestJS read: the client is told that the outcome is unknown instead of a bare "Internal Server
 * Error", so that it does not send the request again blindly. Its class and message are kept.
 * @internal
 */
export function errorForFramework(error: unknown): unknown {
  if (error instanceof CommitOutcomeUnknownError && Object.isExtensible(error) && !('statusCode' in error)) {
    Object.defineProperties(error, {
      status: { value: 500, enumerable: false, configurable: true, writable: true },
      statusCode: { value: 500, enumerable: false, configurable: true, writable: true },
      expose: { value: true, enumerable: false, configurable: true, writable: true },
    })
  }
  return error
}

/** A Fastify reply, as far as its status and headers are saved and put back. @internal */
export interface ReplyHeadersLike {
  readonly statusCode: number
  code(statusCode: number): unknown
  getHeaders(): Record<string, unknown>
  header(name: string, value: unknown): unknown
  removeHeader(name: string): unknown
}

/**
 * The status and headers of a Fastify reply when the handler started, put back before another run
 * of the handler (retry) and before an error response replaces the handler's (its cookies and
 * other headers must not go out with it). Fastify keeps the headers of `reply.header()` on the
 * reply until it writes them: the hold of the `node:http` response does not see them.
 * @internal
 */
export class ReplySnapshot {
  private readonly statusCode: number
  private readonly headers: ReadonlyMap<string, unknown>

  constructor(private readonly reply: ReplyHeadersLike) {
    this.statusCode = reply.statusCode
    this.headers = new Map(Object.entries(reply.getHeaders()).filter(([, value]) => value !== undefined))
  }

  restore(): void {
    const reply = this.reply
    for (const name of Object.keys(reply.getHeaders())) if (!this.headers.has(name)) reply.removeHeader(name)
    for (const [name, value] of this.headers) if (reply.getHeaders()[name] !== value) reply.header(name, value)
    if (reply.statusCode !== this.statusCode) reply.code(this.statusCode)
  }
}
