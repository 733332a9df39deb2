/**
 * `pg-atomic/web`: per-request transactions for any web framework. `runRequest()` is the
 * framework-neutral core the integrations (`pg-atomic/express`, ...) are built on;
 * `atomicListener()` applies it to a plain `node:http` request listener.
 *
 * @packageDocumentation
 */
export { runRequest } from './request'
export type {
  RequestCommitted,
  RequestFailed,
  RequestHandler,
  RequestOutcome,
  RequestOutcomeBase,
  RequestRolledBack,
  RequestScope,
} from './request'
export { atomicListener } from './http'
export type { RequestListener } from './http'
export type { RequestOptions } from './options'
