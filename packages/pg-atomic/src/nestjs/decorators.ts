/**
 * `@NonAtomic()` and `@AtomicRoute(options)`: what a NestJS handler (or every handler of a
 * controller) asks of its request blocks. Kept in a registry of this module keyed by the method
 * (or the class), so that they work without `reflect-metadata` and with any NestJS version.
 *
 * @module
 */
import { InvalidOptionError } from '../errors'
import { resolveRequestOptions } from '../web/options'
import type { RequestOptions, ResolvedRequestOptions } from '../web/options'

/** `false`: no request blocks; options: merged over the interceptor's. */
type RouteSetting = false | ResolvedRequestOptions

const settings = new WeakMap<object, RouteSetting>()

/** What a handler asks: its own setting, else its controller's, else nothing. @internal */
export function routeSetting(handler: object, controller: object): RouteSetting | undefined {
  return settings.get(handler) ?? settings.get(controller)
}

function routeDecorator(name: string, setting: RouteSetting): MethodDecorator & ClassDecorator {
  return ((target: object, _key?: string | symbol, descriptor?: PropertyDescriptor) => {
    const subject: unknown = descriptor === undefined ? target : descriptor.value
    if (typeof subject !== 'function') {
      throw new InvalidOptionError(
        'target',
        `${name} decorates a controller class or one of its route handlers (a method), with ` +
          'experimentalDecorators as NestJS requires.',
      )
    }
    settings.set(subject, setting)
  }) as MethodDecorator & ClassDecorator
}

/**
 * The handler (or, on a controller, each of its handlers) runs without request blocks, in
 * autocommit, and its response is not held (Django's `non_atomic_requests`). Use it for long
 * streams, exports read through a cursor, or handlers that manage their own `atomic()` blocks.
 *
 * @example
 * ```ts legacy-decorators
 * import { Controller, Get } from '@nestjs/common'
 * @Controller('health')
 * class HealthController {
 *   @Get()
 *   @NonAtomic()
 *   check() {
 *     return { ok: true }
 *   }
 * }
 * ```
 */
export function NonAtomic(): MethodDecorator & ClassDecorator {
  return routeDecorator('@NonAtomic()', false)
}

/**
 * The handler's (or the controller's handlers') own options for the request blocks, merged over
 * those of the interceptor: `isolationLevel`, `readOnly`, `deferrable`, timeouts, `databases`,
 * `rollbackOn`, `name`, and `retry`, which runs the handler again (with the same request) after a
 * serialization failure or a deadlock, of a statement or of COMMIT, as long as nothing was sent.
 * Side effects belong in `onCommit` hooks. A handler's decorator wins over its controller's.
 *
 * Options are validated when the decorator is applied (`InvalidOptionError`); `durable`,
 * `using`, `savepoint` and `lock` are refused.
 *
 * @example
 * ```ts legacy-decorators
 * import { Body, Controller, Post } from '@nestjs/common'
 * @Controller('transfers')
 * class TransfersController {
 *   @Post()
 *   @AtomicRoute({ isolationLevel: 'serializable', retry: 3 })
 *   async create(@Body() body: { from: number; to: number; cents: number }) {
 *     await db.query('update accounts set balance = balance - $1 where id = $2', [body.cents, body.from])
 *     await db.query('update accounts set balance = balance + $1 where id = $2', [body.cents, body.to])
 *     return { ok: true } // sent after COMMIT
 *   }
 * }
 * ```
 */
export function AtomicRoute(options: RequestOptions): MethodDecorator & ClassDecorator {
  return routeDecorator('@AtomicRoute()', resolveRequestOptions(options, { name: '@AtomicRoute()' }))
}
