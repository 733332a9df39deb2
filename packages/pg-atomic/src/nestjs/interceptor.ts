/**
 * The NestJS interceptor of per-request transactions. NestJS writes a handler's response after
 * the Observable of its interceptors completes: this one runs the handler (`next.handle()`, with
 * the interceptors after it) inside the request blocks, and emits what the handler produced only
 * after COMMIT — or fails with the COMMIT's error, which NestJS's exception filters turn into a
 * 5xx. What the handler writes to the response itself (`@Res()`, server-sent events) is held at
 * the `node:http` level and commits first, at its first byte.
 *
 * @module
 */
import type { ServerResponse } from 'node:http'
import type { CallHandler, ExecutionContext, NestInterceptor } from '@nestjs/common' with {
  'resolution-mode': 'import',
}
import { Observable } from 'rxjs'
import type { Subscriber } from 'rxjs'
import { errorForFramework, HeldRequest, ReplySnapshot, sendsOwnResponse } from '../held-request'
import { withReadYourWrites } from '../replicas/session'
import type { ReplyHeadersLike } from '../held-request'
import { mergeRequestOptions, resolveRequestOptions } from '../web/options'
import type { RequestOptions, ResolvedRequestOptions } from '../web/options'
import type { RequestOutcome, RequestScope } from '../web/request'
import { routeSetting } from './decorators'

/**
 * Options of the interceptor (and of `PgAtomicModule.forRoot({ requests })`): the request options
 * of every handler, without `retry` (a handler opts in with `@AtomicRoute({ retry })`).
 */
export type AtomicRequestsOptions = Omit<RequestOptions, 'retry'>

const RETRY_IN_INTERCEPTOR =
  'retry is not accepted for every handler at once: only the handlers that may run again should. ' +
  'Decorate those with @AtomicRoute({ retry: 3 }), and keep their side effects in onCommit hooks.'

/** NestJS's metadata key of `@Sse()` handlers (`SSE_METADATA` of `@nestjs/common`). */
const SSE_METADATA = '__sse__'

/**
 * Runs each HTTP request's handler inside one outermost `atomic()` block per database of
 * `options.databases` (default `['default']`), and holds its response until the transaction's
 * outcome is known. `PgAtomicModule.forRoot()` registers it as a global interceptor; without the
 * module, register it with `app.useGlobalInterceptors(new AtomicRequestsInterceptor(options))`.
 *
 * 1. Lazy: a request that runs no statement sends nothing and checks out no connection. Guards and
 *    middleware run before, outside the request blocks; pipes, the interceptors registered after
 *    it and the handler run inside.
 * 2. Async handlers and handlers returning an Observable alike: what the handler emits is passed on
 *    after COMMIT. When COMMIT fails, the error goes to NestJS's exception filters (a 500 by
 *    default, never a 2xx); a `CommitOutcomeUnknownError` carries the `http-errors` fields, so the
 *    default filter answers with its message (the outcome is unknown).
 * 3. The request rolls back when the handler throws or its Observable errors (the exception then
 *    reaches the filters after the ROLLBACK), when the response's status matches `rollbackOn`
 *    (default: status ≥ 500), or when the handler called `setRollback(true)`.
 * 4. A response the handler writes itself (`@Res()`), a `StreamableFile` and server-sent events
 *    (`@Sse()`) commit first, before the first byte leaves; statements after that are refused.
 * 5. A client that disconnects first rolls the request back. `onCommit` hooks run after COMMIT.
 *
 * Handlers decorated with `@NonAtomic()` run without request blocks; `@AtomicRoute(options)`
 * merges its options over these. Only HTTP requests are intercepted. Options are validated by the
 * constructor (`InvalidOptionError`).
 *
 * @example
 * ```ts
 * import { NestFactory } from '@nestjs/core'
 * declare class AppModule {}
 * const app = await NestFactory.create(AppModule)
 * app.useGlobalInterceptors(new AtomicRequestsInterceptor({ rollbackOn: (status) => status >= 400 }))
 * ```
 */
export class AtomicRequestsInterceptor implements NestInterceptor {
  private readonly base: ResolvedRequestOptions

  constructor(options?: AtomicRequestsOptions) {
    this.base = resolveRequestOptions(options, {
      name: 'AtomicRequestsInterceptor',
      retryRefused: RETRY_IN_INTERCEPTOR,
    })
  }

  /** The aliases of the databases that get a request block. */
  get databases(): readonly string[] {
    return this.base.databases
  }

  /** Runs the handler inside the request blocks, and passes on what it emits after the outcome. */
  intercept(context: ExecutionContext, next: CallHandler): Observable<unknown> {
    if (context.getType() !== 'http') return next.handle()
    const handler = context.getHandler()
    const setting = routeSetting(handler, context.getClass())
    if (setting === false) {
      // No request blocks, but a read-your-writes context of its own, as every request (subscribing
      // runs the handler, so it subscribes inside the context).
      return new Observable<unknown>((subscriber) => withReadYourWrites(() => next.handle().subscribe(subscriber)))
    }
    const response: unknown = context.switchToHttp().getResponse()
    const raw = nodeResponse(response)
    if (raw === undefined) return next.handle()
    const options = setting === undefined ? this.base : mergeRequestOptions(this.base, setting)
    const reply = isReply(response) ? response : undefined
    const sse = readMetadata(SSE_METADATA, handler) === true
    return new Observable<unknown>((subscriber) => new HeldHandler(subscriber, next, raw, options, reply, sse).start())
  }
}

/** One request through the interceptor: the handler's emissions are held until the outcome. */
class HeldHandler {
  private values: unknown[] = []
  /** The handler's Observable completed (or errored) in the running attempt. */
  private finished = false
  private inner: { unsubscribe(): void } | undefined
  private outcome: RequestOutcome | undefined
  private readonly snapshot: ReplySnapshot | undefined

  constructor(
    private readonly subscriber: Subscriber<unknown>,
    private readonly next: CallHandler,
    private readonly raw: ServerResponse,
    private readonly options: ResolvedRequestOptions,
    reply: ReplyHeadersLike | undefined,
    /** Server-sent events: every event is passed on at once (the first write commits). */
    private readonly sse: boolean,
  ) {
    this.snapshot = reply === undefined ? undefined : new ReplySnapshot(reply)
  }

  start(): () => void {
    const held = new HeldRequest(this.raw, this.options, {
      invoke: (scope) => this.invoke(scope),
      reset: () => this.snapshot?.restore(),
      canRetry: () => !this.sse,
    })
    void held.outcome.then((outcome) => this.settle(outcome))
    return () => this.inner?.unsubscribe()
  }

  /** One run of the handler: `next.handle()` is called here, inside the request blocks. */
  private invoke(scope: RequestScope): Promise<void> {
    this.values = []
    this.finished = false
    return new Promise<void>((resolve, reject) => {
      this.inner = this.next.handle().subscribe({
        next: (value) => {
          if (this.sse || this.passing()) this.subscriber.next(value)
          else this.values.push(value)
        },
        error: (error: unknown) => {
          this.finished = true
          // Decided already (the response was streaming): the error goes on as it is.
          if (this.passing()) this.subscriber.error(error)
          reject(error)
        },
        complete: () => {
          this.finished = true
          scope.complete(this.raw.statusCode)
          if (this.passing()) this.subscriber.complete()
          resolve()
        },
      })
    })
  }

  /** The outcome is known and the handler's response may go: emissions are passed on at once. */
  private passing(): boolean {
    return this.outcome !== undefined && sendsOwnResponse(this.outcome)
  }

  private settle(outcome: RequestOutcome): void {
    this.outcome = outcome
    if (this.subscriber.closed) return
    if (sendsOwnResponse(outcome)) {
      for (const value of this.values) this.subscriber.next(value)
      this.values = []
      // A handler that wrote its response itself may still be running: it completes later.
      if (this.finished) this.subscriber.complete()
      return
    }
    this.snapshot?.restore()
    this.subscriber.error(errorForFramework(outcome.kind === 'committed' ? undefined : outcome.error))
  }
}

/** The `node:http` response of the platform's response object (Express's `res`, Fastify's `reply.raw`). */
function nodeResponse(response: unknown): ServerResponse | undefined {
  if (typeof response !== 'object' || response === null) return undefined
  const candidate = 'raw' in response ? (response as { raw: unknown }).raw : response
  const res = candidate as Partial<ServerResponse> | null
  return typeof res?.writeHead === 'function' && typeof res.end === 'function' ? (res as ServerResponse) : undefined
}

/** Whether the response object is a Fastify reply (its headers live on it until written). */
function isReply(response: unknown): response is ReplyHeadersLike {
  return (
    typeof response === 'object' &&
    response !== null &&
    'raw' in response &&
    typeof (response as Partial<ReplyHeadersLike>).getHeaders === 'function' &&
    typeof (response as Partial<ReplyHeadersLike>).removeHeader === 'function' &&
    typeof (response as Partial<ReplyHeadersLike>).code === 'function'
  )
}

/** NestJS's own metadata of a handler, through `reflect-metadata` (which NestJS loads). */
function readMetadata(key: string, target: object): unknown {
  const reflect = Reflect as unknown as { getMetadata?: (key: string, target: object) => unknown }
  return typeof reflect.getMetadata === 'function' ? reflect.getMetadata(key, target) : undefined
}
