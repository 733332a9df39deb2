/**
 * `pg-atomic/express`: per-request transactions for Express 5 (Django's `ATOMIC_REQUESTS`).
 *
 * - `atomicRequests(options?)`: application-wide middleware; each request runs in request blocks
 *   and its response is held until COMMIT.
 * - `nonAtomic()`: a route marker; the route runs without request blocks, in autocommit (Django's
 *   `non_atomic_requests`).
 * - `atomicRoute(options)`: a route marker with the route's own options; `atomicRoute(options,
 *   handler)` wraps the handler instead, which is needed for `retry` and lets a thrown error or
 *   `next(err)` roll the request back whatever the error handler answers.
 *
 * The module imports nothing of Express at run time; its types are structural, so it works with
 * Express's own types without depending on them.
 *
 * @packageDocumentation
 */
import type { IncomingMessage, ServerResponse } from 'node:http'
import { InvalidOptionError } from './errors'
import { HttpExchange } from './web/http'
import { mergeRequestOptions, resolveRequestOptions } from './web/options'
import type { RequestOptions, ResolvedRequestOptions } from './web/options'

export type { RequestOptions } from './web/options'

/** Express's `next`, as far as pg-atomic calls it: `next()`, `next(error)`, `next('route')`. */
export type NextFunction = (error?: unknown) => void

/** A middleware as `app.use()` and the route methods take it (Express's `req` and `res` fit). */
export type Middleware = (req: IncomingMessage, res: ServerResponse, next: NextFunction) => void

/** A route handler that `atomicRoute(options, handler)` wraps: Express's own handler type fits. */
export type RouteHandler<Req extends IncomingMessage = IncomingMessage, Res extends ServerResponse = ServerResponse> = (
  req: Req,
  res: Res,
  next: NextFunction,
) => unknown

/** Options of {@link atomicRequests}: the request options, without `retry` (see `atomicRoute()`). */
export type AtomicRequestsOptions = Omit<RequestOptions, 'retry'>

/** The request state of a response: its exchange, and the application's options if the middleware ran. */
interface RequestState {
  readonly exchange: HttpExchange
  readonly base: ResolvedRequestOptions | undefined
}

const states = new WeakMap<ServerResponse, RequestState>()

const RETRY_IN_MIDDLEWARE =
  'retry is not accepted by atomicRequests(): a middleware cannot run a route handler again. Give ' +
  'the routes that may be retried their handler through atomicRoute({ retry: 3 }, handler).'
const RETRY_IN_MARKER =
  'retry needs the handler, which a route marker cannot run again: pass the handler to ' +
  'atomicRoute({ retry: 3 }, handler) instead of listing it after atomicRoute(options).'

/**
 * Express middleware that runs every request inside one outermost `atomic()` block per database
 * of `options.databases` (default `['default']`), and holds the response until the transaction's
 * outcome is known. Register it before the routes (after body parsers, which then read the body
 * before any connection is taken).
 *
 * 1. Lazy: a request that runs no statement sends nothing and checks out no connection.
 * 2. The response (status, headers, body) leaves only after COMMIT. When COMMIT fails (a deferred
 *    constraint, a serialization failure, a lost connection) the held response is discarded, its
 *    headers (cookies included) with it, and the error goes to Express's error handling
 *    (`next(err)`: a 500 by default); a `CommitOutcomeUnknownError` says the outcome is unknown.
 * 3. The request rolls back when its final status matches `rollbackOn` (default: ≥ 500, so a
 *    thrown error or `next(err)` answered by Express's error handler rolls back), when the handler
 *    called `setRollback(true)`, or when one of its statements failed; its own response is then
 *    sent after the ROLLBACK.
 * 4. A response that streams (`res.write()`, `res.flushHeaders()`, SSE, a piped file) commits at
 *    its first byte, then streams; later statements are refused. If that COMMIT fails, the
 *    request gets an error response instead.
 * 5. A client that disconnects first rolls the request back; `onCommit` hooks run after COMMIT,
 *    once the response is on its way.
 *
 * Error handlers registered after the routes run inside the request blocks (use
 * `atomicRoute(options, handler)` to run them outside). Options are validated here, before any
 * request (`InvalidOptionError`); `retry` is refused (see `atomicRoute()`).
 *
 * @example
 * ```ts
 * import express from 'express'
 * const app = express()
 * app.use(express.json())
 * app.use(atomicRequests())
 * app.post('/orders', async (req, res) => {
 *   const { rows } = await db.query('insert into orders(total_cents) values ($1) returning id', [req.body.total])
 *   res.status(201).json(rows[0]) // sent after COMMIT, or replaced by a 500 if COMMIT fails
 * })
 * ```
 */
export function atomicRequests(options?: AtomicRequestsOptions): Middleware {
  const base = resolveRequestOptions(options, { name: 'atomicRequests()', retryRefused: RETRY_IN_MIDDLEWARE })
  return function atomicRequestsMiddleware(req: IncomingMessage, res: ServerResponse, next: NextFunction): void {
    if (states.has(res)) {
      // Registered twice (an app and a router): the first one runs the request.
      next()
      return
    }
    const exchange = new HttpExchange(res, base.bufferLimitBytes)
    states.set(res, { exchange, base })
    // The rest of the chain runs inside the request blocks. A failed outcome comes after that chain
    // has answered: next(error) then continues from where the chain stopped, to the error handlers
    // registered after the routes (or Express's own).
    exchange.start(base, () => next(), next)
  }
}

/**
 * A route marker: the rest of the route runs without request blocks, in autocommit, and its
 * response is not held (Django's `non_atomic_requests`). Use it for long streams, exports read
 * through a cursor, or routes that manage their own `atomic()` blocks.
 *
 * It must come before the request's first statement: if a middleware between
 * {@link atomicRequests} and the marker already ran one, the request fails with
 * `TransactionManagementError`. Without `atomicRequests()` it does nothing.
 *
 * @example
 * ```ts
 * import express from 'express'
 * const app = express()
 * app.use(atomicRequests())
 * app.get('/export.csv', nonAtomic(), async (req, res) => {
 *   res.setHeader('content-type', 'text/csv')
 *   for await (const row of db.cursor<{ line: string }>('select line from export_lines')) res.write(row.line)
 *   res.end()
 * })
 * ```
 */
export function nonAtomic(): Middleware {
  return function nonAtomicMiddleware(_req: IncomingMessage, res: ServerResponse, next: NextFunction): void {
    const state = states.get(res)
    if (state === undefined) {
      next()
      return
    }
    const begun = state.exchange.begun('nonAtomic()')
    if (begun !== undefined) {
      next(begun)
      return
    }
    state.exchange.passThrough()
    state.exchange.outside(() => next())
  }
}

/**
 * Per-route options for the request blocks (`isolationLevel`, `readOnly`, `deferrable`, timeouts,
 * `databases`, `rollbackOn`, `bufferLimitBytes`, `name`), merged over those of
 * {@link atomicRequests}; without `atomicRequests()` the route gets request blocks of its own.
 *
 * - `atomicRoute(options)` is a marker placed before the handler. It must come before the
 *   request's first statement (as {@link nonAtomic}), and it refuses `retry`: only the wrapping
 *   form can run the handler again.
 * - `atomicRoute(options, handler)` wraps the handler. A thrown or rejected handler and
 *   `next(err)` roll back whatever status the error handler answers with; the error reaches
 *   Express's error handling after the ROLLBACK, outside the request blocks. With `retry`, a
 *   serialization failure or deadlock (of a statement, or of COMMIT) runs the handler again with
 *   the same `req` (already-parsed body) and a reset `res` (status and headers as before the
 *   handler), as long as nothing was sent and the handler did not pass the request on with
 *   `next()`. Side effects belong in `onCommit` hooks, which run once, after the COMMIT that
 *   succeeded.
 *
 * `durable`, `using`, `savepoint` and `lock` are refused with an `InvalidOptionError`, as are
 * unknown options, when `atomicRoute()` is called. A wrapped handler gets its parameter types from
 * its own annotations (this module does not depend on Express's types): annotate `req` and `res`
 * with Express's `Request` and `Response`.
 *
 * @example
 * ```ts
 * import express from 'express'
 * import type { Request, Response } from 'express'
 * const app = express()
 * app.use(express.json())
 * app.use(atomicRequests())
 * app.get('/report', atomicRoute({ readOnly: true, statementTimeout: 5_000 }), async (_req, res) => {
 *   res.json((await db.query('select count(*) from orders')).rows[0])
 * })
 * app.post(
 *   '/transfer',
 *   atomicRoute({ isolationLevel: 'serializable', retry: 3 }, async (req: Request, res: Response) => {
 *     const { from, to, cents } = req.body as { from: number; to: number; cents: number }
 *     await db.query('update accounts set balance = balance - $1 where id = $2', [cents, from])
 *     await db.query('update accounts set balance = balance + $1 where id = $2', [cents, to])
 *     res.status(204).end()
 *   }),
 * )
 * ```
 */
export function atomicRoute(options: RequestOptions): Middleware
/**
 * Wraps a route handler so that it runs in request blocks with `options` (see the first overload):
 * its errors roll the request back, and with `retry` it runs again after a serialization failure
 * or deadlock.
 */
export function atomicRoute<Req extends IncomingMessage, Res extends ServerResponse>(
  options: RequestOptions,
  handler: RouteHandler<Req, Res>,
): (req: Req, res: Res, next: NextFunction) => void
export function atomicRoute(options: RequestOptions, handler?: RouteHandler): Middleware {
  if (handler === undefined) {
    const route = resolveRequestOptions(options, { name: 'atomicRoute()', retryRefused: RETRY_IN_MARKER })
    return function atomicRouteMarker(_req: IncomingMessage, res: ServerResponse, next: NextFunction): void {
      const state = enterRoute(res, route, 'atomicRoute()', next)
      if (state !== undefined) state.exchange.start(routeOptions(state, route), () => next(), next)
    }
  }
  if (typeof handler !== 'function') {
    throw new InvalidOptionError('handler', 'atomicRoute() expects the route handler as its second argument.')
  }
  const route = resolveRequestOptions(options, { name: 'atomicRoute()' })
  return function atomicRouteHandler(req: IncomingMessage, res: ServerResponse, next: NextFunction): void {
    const state = enterRoute(res, route, 'atomicRoute()', next)
    if (state === undefined) return
    const exchange = state.exchange
    exchange.start(
      routeOptions(state, route),
      (scope) => {
        // Errors are the request's to roll back; the rest (next(), next('route')) hands the request
        // on, inside the request blocks, and rules out running the handler again.
        const own: NextFunction = (error) => {
          if (error && error !== 'route' && error !== 'router') {
            scope.fail(error)
            return
          }
          exchange.passOn()
          next(error)
        }
        return handler(req, res, own)
      },
      next,
    )
  }
}

/** The request state for a route marker, or `undefined` when the request already failed. */
function enterRoute(
  res: ServerResponse,
  route: ResolvedRequestOptions,
  subject: string,
  next: NextFunction,
): RequestState | undefined {
  const state = states.get(res)
  if (state === undefined) {
    const created: RequestState = { exchange: new HttpExchange(res, route.bufferLimitBytes), base: undefined }
    states.set(res, created)
    return created
  }
  const begun = state.exchange.begun(subject)
  if (begun !== undefined) {
    next(begun)
    return undefined
  }
  return state
}

function routeOptions(state: RequestState, route: ResolvedRequestOptions): ResolvedRequestOptions {
  return state.base === undefined ? route : mergeRequestOptions(state.base, route)
}
