/**
 * `pg-atomic/fastify`: per-request transactions for Fastify 5 (Django's `ATOMIC_REQUESTS`).
 *
 * - `atomicRequests`: a plugin, `await app.register(atomicRequests, options)`; each route declared
 *   after it runs its handler in request blocks, and its reply is held by an `onSend` hook until
 *   the transaction's outcome is known.
 * - Per route, through the route's `config`: `config: { atomic: false }` (no request blocks, Django's
 *   `non_atomic_requests`) or `config: { atomic: { isolationLevel: 'serializable', retry: 3 } }`.
 *
 * Nothing of Fastify is imported at run time (its types only).
 *
 * @packageDocumentation
 */
import type {
  FastifyInstance,
  FastifyPluginCallback,
  FastifyReply,
  FastifyRequest,
  RouteOptions,
  onSendHookHandler,
} from 'fastify'
import { InvalidOptionError, TransactionManagementError } from './errors'
import { withReadYourWrites } from './replicas/session'
import { errorForFramework, HeldRequest, ReplySnapshot } from './held-request'
import { mergeRequestOptions, resolveRequestOptions } from './web/options'
import type { RequestOptions, ResolvedRequestOptions } from './web/options'
import { sendFailure } from './web/http'
import type { RequestScope } from './web/request'

export type { RequestOptions } from './web/options'

/**
 * Options of the {@link atomicRequests} plugin: the request options of every route, without
 * `retry` (a route opts in with `config: { atomic: { retry } }`).
 */
export type AtomicRequestsOptions = Omit<RequestOptions, 'retry'>

/**
 * What a route's `config.atomic` may be:
 * - `false`: the route runs without request blocks, in autocommit, and its reply is not held.
 * - `true` or absent: the plugin's options.
 * - options: merged over the plugin's (`retry` allowed here).
 */
export type AtomicRouteConfig = boolean | RequestOptions

declare module 'fastify' {
  interface FastifyContextConfig {
    /**
     * pg-atomic's per-request transaction for this route: `false` opts out, options are merged
     * over those of the `atomicRequests` plugin. Default: the plugin's options.
     */
    atomic?: AtomicRouteConfig
  }
}

/** Marks the routes the plugin saw (`config` is copied into the route's context with its symbols). */
const SEEN = Symbol('pg-atomic.fastify.route')

/** Fastify's own `register()` options, passed to every plugin along with its own. */
const REGISTER_OPTIONS = new Set(['prefix', 'logLevel', 'logSerializers'])

const RETRY_IN_PLUGIN =
  'retry is not accepted by the atomicRequests plugin: only the routes whose handlers may run ' +
  'again should. Give those routes config: { atomic: { retry: 3 } }, and keep their side effects ' +
  'in onCommit hooks.'

/** The run of each reply whose route has request blocks. */
const runs = new WeakMap<FastifyReply, RouteRun>()

/**
 * A Fastify plugin that runs the handler of every route declared after it inside one outermost
 * `atomic()` block per database of `options.databases` (default `['default']`), and holds the
 * reply until the transaction's outcome is known. Register it before the routes, and wait for it:
 * `await app.register(atomicRequests, options)`. It applies to the instance it is registered on
 * and to every plugin registered after it (it is not encapsulated).
 *
 * 1. Lazy: a request that runs no statement sends nothing and checks out no connection. Hooks
 *    before the handler (`onRequest`, `preHandler`, validation) run outside the request blocks.
 * 2. The reply leaves only after COMMIT: its `onSend` hook (the last of the route's) waits for the
 *    outcome. When COMMIT fails (a deferred constraint, a serialization failure, a lost
 *    connection), the reply's status and headers go back to what they were before the handler
 *    and the error goes to Fastify's error handling (a 500 by default; never a 2xx or 3xx); a
 *    `CommitOutcomeUnknownError` says that the outcome is unknown.
 * 3. The request rolls back when the handler throws or rejects (the error then reaches Fastify's
 *    error handler after the ROLLBACK), when the reply's status matches `rollbackOn` (default:
 *    status ≥ 500), or when the handler called `setRollback(true)`.
 * 4. A reply that streams (`reply.send(stream)`, or writes to `reply.raw`, SSE included) commits
 *    first, before its first byte leaves; statements after that point are refused.
 * 5. A route with `config: { atomic: { retry } }` runs its handler again after a serialization
 *    failure or a deadlock (of a statement, or of COMMIT), with the same request (its parsed body)
 *    and the reply's status and headers as before the first run, as long as nothing was sent.
 * 6. A client that disconnects first rolls the request back. `onCommit` hooks run after COMMIT,
 *    once the reply is on its way.
 *
 * Options are validated when the plugin is registered, and a route's `config.atomic` when the route
 * is declared (`InvalidOptionError`). A request to a route declared before the plugin fails with a
 * `TransactionManagementError` saying so, rather than running without its transaction.
 *
 * @example
 * ```ts
 * import Fastify from 'fastify'
 * import { atomicRequests } from 'pg-atomic/fastify'
 * const app = Fastify()
 * await app.register(atomicRequests, { rollbackOn: (status) => status >= 400 })
 * app.post('/orders', async (request, reply) => {
 *   const { total } = request.body as { total: number }
 *   const { rows } = await db.query('insert into orders(total_cents) values ($1) returning id', [total])
 *   return reply.code(201).send(rows[0]) // sent after COMMIT, or replaced by a 500 if COMMIT fails
 * })
 * app.get('/health', { config: { atomic: false } }, async () => ({ ok: true }))
 * ```
 */
export const atomicRequests: FastifyPluginCallback<AtomicRequestsOptions> = Object.assign(
  function atomicRequestsPlugin(
    fastify: FastifyInstance,
    options: AtomicRequestsOptions,
    done: (error?: Error) => void,
  ): void {
    let base: ResolvedRequestOptions
    try {
      base = resolveRequestOptions(ownOptions(options), {
        name: 'the atomicRequests plugin',
        retryRefused: RETRY_IN_PLUGIN,
      })
    } catch (error) {
      done(error as Error)
      return
    }
    fastify.addHook('onRoute', (route) => prepareRoute(route, base))
    fastify.addHook('onRequest', (request, _reply, next) => {
      const config = request.routeOptions.config as unknown as Record<PropertyKey, unknown>
      if (config[SEEN] === true || config['atomic'] === false || request.is404) {
        next()
        return
      }
      next(
        new TransactionManagementError(
          `The route ${request.routeOptions.method} ${request.routeOptions.url} was declared before the ` +
            'atomicRequests plugin of pg-atomic/fastify was registered, so it has no request transaction. ' +
            'Register the plugin first and wait for it (await app.register(atomicRequests)) before ' +
            'declaring routes, or give the route config: { atomic: false } to run it in autocommit.',
        ),
      )
    })
    done()
  },
  {
    // fastify-plugin's semantics without the dependency: not encapsulated, named, for Fastify 5.
    [Symbol.for('skip-override')]: true,
    [Symbol.for('fastify.display-name')]: 'pg-atomic',
    [Symbol.for('plugin-meta')]: { name: 'pg-atomic', fastify: '5.x' },
  },
)

/** The plugin's options without those Fastify's `register()` adds for every plugin. */
function ownOptions(options: AtomicRequestsOptions | undefined): AtomicRequestsOptions {
  if (typeof options !== 'object' || options === null) return options ?? {}
  const own: Record<string, unknown> = {}
  for (const [key, value] of Object.entries(options)) if (!REGISTER_OPTIONS.has(key)) own[key] = value
  return own as AtomicRequestsOptions
}

type Handler = (this: FastifyInstance, request: FastifyRequest, reply: FastifyReply) => unknown

/** Wraps the route's handler and appends the hold's `onSend` hook, unless the route opted out. */
function prepareRoute(route: RouteOptions, base: ResolvedRequestOptions): void {
  const config = (route.config ?? {}) as Record<PropertyKey, unknown>
  route.config = { ...config, [SEEN]: true } as RouteOptions['config']
  const atomic = config['atomic']
  if (atomic === false) {
    // No request transaction, but still a read-your-writes context of its own (as every request).
    const plain = route.handler as Handler
    route.handler = function nonAtomicRouteHandler(
      this: FastifyInstance,
      request: FastifyRequest,
      reply: FastifyReply,
    ) {
      return withReadYourWrites(() => plain.call(this, request, reply))
    } as RouteOptions['handler']
    return
  }
  let options = base
  if (atomic !== undefined && atomic !== true) {
    const subject = `the config.atomic of route ${String(route.method)} ${route.url}`
    if (typeof atomic !== 'object' || atomic === null || Array.isArray(atomic)) {
      throw new InvalidOptionError(
        'atomic',
        `Invalid ${subject}: it must be false (no request transaction), true (the plugin's options) ` +
          "or the route's options, e.g. { isolationLevel: 'serializable', retry: 3 }.",
      )
    }
    options = mergeRequestOptions(base, resolveRequestOptions(atomic as RequestOptions, { name: subject }))
  }
  const handler = route.handler as Handler
  route.handler = function atomicRouteHandler(this: FastifyInstance, request: FastifyRequest, reply: FastifyReply) {
    return new RouteRun(this, handler, options, request, reply).promise
  } as RouteOptions['handler']
  const onSend = route.onSend === undefined ? [] : Array.isArray(route.onSend) ? route.onSend : [route.onSend]
  route.onSend = [...onSend, holdUntilOutcome as onSendHookHandler]
}

/** The route's last `onSend` hook: the serialized reply waits here for the transaction's outcome. */
function holdUntilOutcome(
  _request: FastifyRequest,
  reply: FastifyReply,
  payload: unknown,
  done: (error: Error | null, payload?: unknown) => void,
): void {
  const run = runs.get(reply)
  if (run === undefined) done(null, payload)
  else run.onSend(payload, done)
}

type OnSendDone = (error: Error | null, payload?: unknown) => void

/**
 * One request to a route with request blocks. The promise given to Fastify as the handler's result
 * settles only when the reply is finished (or rejects with the handler's error after the
 * ROLLBACK): the handler's value is sent by the run itself, so that another run (retry) can send
 * its own.
 */
class RouteRun {
  readonly promise: Promise<undefined>
  private readonly held: HeldRequest
  private readonly snapshot: ReplySnapshot
  /** `reply.send()` was called during the running attempt. */
  private sending = false
  /** The reply of the running attempt, waiting in `onSend` for the outcome. */
  private waiting: { readonly scope: RequestScope; readonly payload: unknown; readonly done: OnSendDone } | undefined
  private settle!: { resolve: () => void; reject: (error: unknown) => void }
  private promiseSettled = false

  constructor(
    private readonly instance: FastifyInstance,
    private readonly handler: Handler,
    options: ResolvedRequestOptions,
    private readonly request: FastifyRequest,
    private readonly reply: FastifyReply,
  ) {
    this.promise = new Promise<undefined>((resolve, reject) => {
      this.settle = { resolve: () => resolve(undefined), reject }
    })
    this.snapshot = new ReplySnapshot(reply)
    runs.set(reply, this)
    const send = reply.send
    reply.send = (payload?: unknown): FastifyReply => {
      this.sending = true
      return send.call(reply, payload)
    }
    // By then Fastify sees a sent reply: the resolution sends nothing.
    reply.raw.once('close', () => this.resolve())
    this.held = new HeldRequest(reply.raw, options, {
      invoke: (scope) => this.invoke(scope),
      reset: () => {
        this.waiting = undefined // the previous run's reply never leaves
        this.snapshot.restore()
      },
      canRetry: () => !reply.sent,
    })
    void this.held.outcome.then(() => this.outcome())
  }

  /** One run of the route's handler, inside the request blocks. */
  private invoke(scope: RequestScope): unknown {
    this.sending = false
    const result = this.handler.call(this.instance, this.request, this.reply)
    if (!isThenable(result)) {
      // A synchronous handler: its value is the reply; `undefined` means it sends by itself.
      if (result !== undefined) this.sendValue(scope, result)
      return undefined
    }
    return Promise.resolve(result).then((value) => {
      if (value !== undefined) this.sendValue(scope, value)
      else if (this.held.current === scope && !this.sending && !this.held.responding && !this.reply.sent) {
        // An async handler that resolved without sending: Fastify answers with an empty reply.
        const socket = this.request.socket as { destroyed?: boolean } | undefined
        if (!this.reply.raw.headersSent && socket?.destroyed !== true) this.sendValue(scope, undefined)
      }
    })
  }

  /** What Fastify does with a handler's value (`wrapThenable`), for the running attempt only. */
  private sendValue(scope: RequestScope, value: unknown): void {
    if (this.held.current !== scope || this.reply.sent || value === this.reply) return
    if (this.sending && value !== undefined) {
      this.reply.log.warn(
        'The handler both called reply.send() and returned a value; the value was not sent. Return ' +
          'the reply (return reply.send(...)) or the value, not both.',
      )
      return
    }
    try {
      this.reply.send(value)
    } catch (error) {
      this.reply.send(error instanceof Error ? error : new TransactionManagementError(String(error)))
    }
  }

  /** The reply reached its last `onSend` hook. */
  onSend(payload: unknown, done: OnSendDone): void {
    const outcome = this.held.settled
    if (outcome !== undefined) {
      // An error response after the outcome, or a reply sent after an early COMMIT: let it go,
      // but never as a success when the transaction failed.
      if (outcome.kind === 'failed' && this.reply.statusCode < 400) this.reply.code(500)
      done(null, payload)
      return
    }
    const scope = this.held.current
    if (scope === undefined) {
      done(null, payload)
      return
    }
    this.held.responding = true
    this.waiting = { scope, payload, done }
    // The reply is complete: end the request blocks (a decision taken earlier stands).
    scope.complete(this.reply.statusCode)
  }

  /** The request blocks have ended: let the reply go, or hand the error to Fastify. */
  private outcome(): void {
    const outcome = this.held.settled
    if (outcome === undefined) return
    const waiting = this.waiting
    this.waiting = undefined
    if (outcome.kind === 'committed' || (outcome.kind === 'rolled-back' && outcome.reason !== 'error')) {
      // Committed, or rolled back as asked (its own reply says so), or nobody left to answer.
      waiting?.done(null, waiting.payload)
      if (outcome.kind === 'rolled-back' && outcome.reason === 'aborted') this.resolve()
      return
    }
    // The handler failed, or COMMIT did: the handler's reply must not leave.
    this.snapshot.restore()
    const error = errorForFramework(outcome.error)
    if (this.reply.sent) {
      // Hijacked (reply.hijack()): Fastify's error handling is off; answer as node:http would.
      sendFailure(this.reply.raw, error)
    } else if (waiting !== undefined) {
      // Fastify's onSend error path: its error handler answers (a 500 by default).
      waiting.done(error instanceof Error ? error : new TransactionManagementError(String(error)))
    } else if (!this.promiseSettled) {
      this.promiseSettled = true
      this.settle.reject(error)
    } else if (!this.reply.sent) {
      this.reply.send(error instanceof Error ? error : new TransactionManagementError(String(error)))
    }
  }

  private resolve(): void {
    if (this.promiseSettled) return
    this.promiseSettled = true
    this.settle.resolve()
  }
}

function isThenable(value: unknown): value is PromiseLike<unknown> {
  return (
    (typeof value === 'object' || typeof value === 'function') &&
    value !== null &&
    typeof (value as PromiseLike<unknown>).then === 'function'
  )
}
