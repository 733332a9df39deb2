/**
 * The options of a per-request transaction (`runRequest()`, `atomicListener()`, and the framework
 * integrations): validated once, with the library's message style, and frozen. A route's options
 * are merged over the application's without validating again.
 *
 * @module
 */
import { z } from 'zod'
import { InvalidOptionError, sqlState, TransactionManagementError } from '../errors'
import type { AtomicOptions, RetryOptions, TransactionDefaults } from '../options'
import { resolveRetry, retrySchema, transactionDefaultsShape } from '../options'
import { parseOptions } from '../validation'
import { ISOLATION_LEVELS, MAX_TIMEOUT_MS } from '../vocabulary'

/**
 * Options of a per-request transaction: which databases get a request block, when a finished
 * request rolls back, how much of a response is held, and the characteristics of the blocks.
 *
 * The transaction characteristics (`isolationLevel`, `readOnly`, `deferrable`) and timeouts
 * (`statementTimeout`, `lockTimeout`, `idleInTransactionSessionTimeout`) are those of `atomic()`;
 * they apply to the request block of every listed database. Default for each: the database's
 * default, else the server's.
 */
export interface RequestOptions extends TransactionDefaults {
  /**
   * Aliases of the databases that get a request block, one outermost `atomic()` block each. The
   * first is the innermost block: it commits first, then the others in the order listed (there is
   * no two-phase commit). Default: `['default']`.
   */
  databases?: readonly string[]
  /**
   * Whether a finished response with this HTTP status rolls the request back (its response is
   * still sent, after the ROLLBACK). Default: `(status) => status >= 500`.
   */
  rollbackOn?: (status: number) => boolean
  /**
   * How many bytes of a response that has started streaming are held while its early COMMIT is in
   * flight; past it `write()` returns `false`, so a piped stream pauses until the bytes are out.
   * Used by the integrations that hold a `node:http` response (`atomicListener()`, Express).
   * Default: `1048576` (1 MiB).
   */
  bufferLimitBytes?: number
  /**
   * Run the request again when its transaction fails with a serialization failure or a deadlock
   * and nothing of its response was sent: a number of attempts, or the library's `RetryOptions`.
   * Only where the integration can call the handler again (`runRequest()`, `atomicListener()`,
   * `atomicRoute(options, handler)` in Express); a database's default `retry` never applies to
   * request blocks. Side effects belong in `onCommit` hooks. Default: no retry.
   */
  retry?: number | RetryOptions
  /** A label for the request blocks, carried in diagnostics events and error messages. Default: none. */
  name?: string
}

/** Request options after validation; frozen. @internal */
export interface ResolvedRequestOptions {
  /** What the caller passed (validated), for merging a route's options over these. */
  readonly input: Readonly<RequestOptions>
  readonly databases: readonly string[]
  readonly rollbackOn: (status: number) => boolean
  readonly bufferLimitBytes: number
  /** The `atomic()` options of each request block, without `using` and `retry`. */
  readonly atomic: Readonly<Omit<AtomicOptions, 'using' | 'retry'>>
  /** The validated retry policy's input, or `undefined` for no retry. */
  readonly retry: RetryOptions | undefined
}

/** Default of {@link RequestOptions.bufferLimitBytes}: 1 MiB. @internal */
export const DEFAULT_BUFFER_LIMIT_BYTES = 1_048_576

/** Default of {@link RequestOptions.rollbackOn}: a server error rolls back. @internal */
export function defaultRollbackOn(status: number): boolean {
  return status >= 500
}

const ALLOWED: Record<string, string> = {
  databases: 'a non-empty list of distinct database aliases such as ["default", "reports"]',
  rollbackOn: 'a function (status) => boolean',
  bufferLimitBytes: 'a whole number of bytes of at least 0',
  isolationLevel: `one of ${ISOLATION_LEVELS.map((l) => `'${l}'`).join(', ')}`,
  readOnly: 'true or false',
  deferrable: 'true or false',
  statementTimeout: `a whole number of milliseconds from 0 to ${MAX_TIMEOUT_MS} (0 disables it)`,
  lockTimeout: `a whole number of milliseconds from 0 to ${MAX_TIMEOUT_MS} (0 disables it)`,
  idleInTransactionSessionTimeout: `a whole number of milliseconds from 0 to ${MAX_TIMEOUT_MS} (0 disables it)`,
  retry: 'a whole number of attempts of at least 1, or { maxAttempts, baseDelayMs, maxDelayMs, retryOn }',
  'retry.maxAttempts': 'a whole number of at least 1',
  'retry.baseDelayMs': 'a whole number of milliseconds of at least 0',
  'retry.maxDelayMs': 'a whole number of milliseconds of at least 0',
  'retry.retryOn': 'a list of 5-character SQLSTATE codes such as 40001, or a function (error) => boolean',
  name: 'a string',
}

/** Options of `atomic()` that a request block cannot take, and why. */
const REFUSED: Record<string, string> = {
  durable:
    'durable is meaningless for a request block: it is always the outermost block of its ' +
    'database, so leaving it always commits. Remove the option.',
  using: 'List the databases that get a request block with the databases option, e.g. databases: ["reports"].',
  savepoint: 'A request block is the outermost block of its database, so it never has a savepoint.',
  lock:
    'Take table locks inside the handler, with lockTable() or an atomic({ lock }) block, so the ' +
    'lock names the tables of one database and is taken only when the handler needs it.',
}

const schema = z.strictObject({
  databases: z
    .array(z.string().min(1))
    .min(1)
    .refine((list) => new Set(list).size === list.length)
    .readonly()
    .optional(),
  rollbackOn: z.custom<(status: number) => boolean>((v) => typeof v === 'function').optional(),
  bufferLimitBytes: z.int().min(0).optional(),
  ...transactionDefaultsShape,
  retry: retrySchema.optional(),
  name: z.string().optional(),
})

/** Where a request's options come from; retry is refused where the handler cannot run again. @internal */
export interface OptionsSubject {
  /** The call that received the options, e.g. `'atomicRoute()'`. */
  readonly name: string
  /** Why `retry` is refused there (undefined: accepted). */
  readonly retryRefused?: string
}

const cache = new WeakMap<object, Map<string, ResolvedRequestOptions>>()

/**
 * Validates request options before any SQL; throws `InvalidOptionError` naming the field. Frozen
 * inputs are cached by identity. @internal
 */
export function resolveRequestOptions(
  input: RequestOptions | undefined,
  subject: OptionsSubject,
): ResolvedRequestOptions {
  const source = input ?? {}
  const cached = cache.get(source)?.get(subject.name)
  if (cached !== undefined) return cached
  const parsed = parseOptions(schema, source, subject.name, ALLOWED, REFUSED)
  if (parsed.retry !== undefined && subject.retryRefused !== undefined) {
    throw new InvalidOptionError('retry', subject.retryRefused)
  }
  const resolved = fromValidated(parsed as RequestOptions)
  if (input !== undefined && Object.isFrozen(input)) {
    let bySubject = cache.get(input)
    if (bySubject === undefined) cache.set(input, (bySubject = new Map()))
    bySubject.set(subject.name, resolved)
  }
  return resolved
}

const merged = new WeakMap<ResolvedRequestOptions, WeakMap<ResolvedRequestOptions, ResolvedRequestOptions>>()

/** A route's options over the application's (both already validated): route fields win. @internal */
export function mergeRequestOptions(
  base: ResolvedRequestOptions,
  route: ResolvedRequestOptions,
): ResolvedRequestOptions {
  let byRoute = merged.get(base)
  if (byRoute === undefined) merged.set(base, (byRoute = new WeakMap()))
  const cached = byRoute.get(route)
  if (cached !== undefined) return cached
  const result = fromValidated({ ...base.input, ...route.input })
  byRoute.set(route, result)
  return result
}

function fromValidated(o: RequestOptions): ResolvedRequestOptions {
  const input: RequestOptions = {}
  for (const [key, value] of Object.entries(o)) if (value !== undefined) Object.assign(input, { [key]: value })
  const atomic: Omit<AtomicOptions, 'using' | 'retry'> = {}
  if (o.isolationLevel !== undefined) atomic.isolationLevel = o.isolationLevel
  if (o.readOnly !== undefined) atomic.readOnly = o.readOnly
  if (o.deferrable !== undefined) atomic.deferrable = o.deferrable
  if (o.statementTimeout !== undefined) atomic.statementTimeout = o.statementTimeout
  if (o.lockTimeout !== undefined) atomic.lockTimeout = o.lockTimeout
  if (o.idleInTransactionSessionTimeout !== undefined)
    atomic.idleInTransactionSessionTimeout = o.idleInTransactionSessionTimeout
  if (o.name !== undefined) atomic.name = o.name
  return Object.freeze({
    input: Object.freeze(input),
    databases: Object.freeze([...(o.databases ?? ['default'])]),
    rollbackOn: o.rollbackOn ?? defaultRollbackOn,
    bufferLimitBytes: o.bufferLimitBytes ?? DEFAULT_BUFFER_LIMIT_BYTES,
    atomic: Object.freeze(atomic),
    retry: o.retry === undefined ? undefined : retryOptions(o.retry),
  })
}

/** The policy as `atomic()` retry options with a predicate, so the request can add its own conditions. */
function retryOptions(input: number | RetryOptions): RetryOptions {
  const policy = resolveRetry(input)
  if (policy === undefined) throw new TransactionManagementError('pg-atomic internal error: no retry policy.')
  const codes = policy.retryOn
  const retryOn = typeof codes === 'function' ? codes : (error: unknown): boolean => codes.has(retryCode(error) ?? '')
  return Object.freeze({
    maxAttempts: policy.maxAttempts,
    baseDelayMs: policy.baseDelayMs,
    maxDelayMs: policy.maxDelayMs,
    retryOn,
  })
}

/** The SQLSTATE that decides a retry: the error's own, or that of the error a block rejected with. */
function retryCode(error: unknown): string | undefined {
  const own = sqlState(error)
  if (own !== undefined) return own
  return error instanceof TransactionManagementError ? sqlState(error.cause) : undefined
}
