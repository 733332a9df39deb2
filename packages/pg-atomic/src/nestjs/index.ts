/**
 * `pg-atomic/nestjs`: per-request transactions and databases for NestJS 11 and 12, on the Express
 * and the Fastify platform.
 *
 * - `PgAtomicModule.forRoot({ databases, requests })` / `forRootAsync(...)`: the databases,
 *   created when the application starts and closed when it shuts down, injectable with
 *   `@Inject(getDatabaseToken(alias))`, and the global {@link AtomicRequestsInterceptor}.
 * - `@NonAtomic()`: a handler (or controller) without request blocks, in autocommit.
 * - `@AtomicRoute(options)`: a handler's (or controller's) own options, `retry` included.
 *
 * `@Atomic()` from `pg-atomic` works on providers as anywhere else. Nothing of NestJS is imported
 * at run time (its types only); `rxjs` is.
 *
 * @packageDocumentation
 */
export { PgAtomicModule, getDatabaseToken } from './module'
export type { PgAtomicModuleAsyncOptions, PgAtomicModuleOptions } from './module'
export { AtomicRequestsInterceptor } from './interceptor'
export type { AtomicRequestsOptions } from './interceptor'
export { AtomicRoute, NonAtomic } from './decorators'
export type { RequestOptions } from '../web/options'
