/**
 * The error hierarchy of pg-atomic and SQLSTATE helpers.
 *
 * Errors raised by PostgreSQL for the user's own statements are never wrapped: they reach the caller
 * as node-postgres `DatabaseError`s with `code`, `constraint`, `detail`, ... intact. Only what the
 * library itself detects gets one of the classes below.
 *
 * @module
 */

/** Django's message for a query attempted in a block that must roll back. */
export const DOOMED_MESSAGE =
  "An error occurred in the current transaction. You can't execute queries until the end of the 'atomic' block."
/** Django's message for transaction control attempted inside a block. */
export const FORBIDDEN_IN_ATOMIC_MESSAGE = "This is forbidden when an 'atomic' block is active."
/** Django's message for `setRollback()` / `getRollback()` outside a block. */
export const ROLLBACK_FLAG_OUTSIDE_MESSAGE = "The rollback flag doesn't work outside of an 'atomic' block."
/** Django's message for a durable block entered inside another block. */
export const DURABLE_NESTED_MESSAGE = 'A durable atomic block cannot be nested within another atomic block.'

/**
 * Root of every error pg-atomic raises itself. `catch (e) { if (e instanceof AtomicError) ... }`
 * separates library-detected problems from PostgreSQL errors.
 */
export class AtomicError extends Error {
  override name = 'AtomicError'
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options)
  }
}

/**
 * Misuse of transaction management: a query in a doomed block, transaction-control SQL inside a
 * block, a durable block nested in another, a query through a block that has already ended,
 * a nested block asking for a different isolation level, ...
 *
 * `cause` carries the original error when there is one (for example the error that doomed the block).
 */
export class TransactionManagementError extends AtomicError {
  override name = 'TransactionManagementError'
}

/**
 * An option or configuration value is invalid. Raised before anything is sent to the server.
 * `field` names the offending option (dotted path for nested fields).
 */
export class InvalidOptionError extends AtomicError {
  override name = 'InvalidOptionError'
  /** The option that is invalid, e.g. `'isolationLevel'` or `'lockTimeout'`. */
  readonly field: string
  constructor(field: string, message: string) {
    super(message)
    this.field = field
  }
}

/**
 * The connection to PostgreSQL was lost while a transaction was open (the backend was terminated,
 * an idle-in-transaction timeout fired, the network failed). The server has rolled the transaction
 * back; nothing of it was committed. The connection was destroyed, not returned to the pool.
 * `cause` is the error node-postgres reported.
 */
export class ConnectionLostError extends AtomicError {
  override name = 'ConnectionLostError'
}

/**
 * The connection was lost while `COMMIT` was in flight: the transaction may or may not have been
 * committed. Never retry automatically; check the data (or make the work idempotent) first.
 */
export class CommitOutcomeUnknownError extends AtomicError {
  override name = 'CommitOutcomeUnknownError'
}

/**
 * A non-robust `onCommit` hook failed **after** the transaction was committed. The data is
 * committed (`committed` is always `true`): do not retry the transaction. Hooks registered after
 * the failing one did not run. `cause` is the hook's error.
 */
export class OnCommitHookError extends AtomicError {
  override name = 'OnCommitHookError'
  /** Always `true`: the transaction this hook belonged to was committed. */
  readonly committed = true as const
}

function sqlState(error: unknown): string | undefined {
  if (typeof error === 'object' && error !== null && 'code' in error) {
    const code = (error as { code: unknown }).code
    return typeof code === 'string' ? code : undefined
  }
  return undefined
}

/** `true` for SQLSTATE 40001 (serialization_failure): retry the whole transaction. */
export function isSerializationFailure(error: unknown): boolean {
  return sqlState(error) === '40001'
}

/** `true` for SQLSTATE 40P01 (deadlock_detected): this session was chosen as the victim. */
export function isDeadlock(error: unknown): boolean {
  return sqlState(error) === '40P01'
}

/** `true` for SQLSTATE 55P03 (lock_not_available): `NOWAIT` or `lock_timeout`. */
export function isLockNotAvailable(error: unknown): boolean {
  return sqlState(error) === '55P03'
}

/**
 * `true` when retrying the whole transaction may succeed: serialization failures (40001) and
 * deadlocks (40P01). Never true for an ambiguous commit.
 */
export function isRetryable(error: unknown): boolean {
  const code = sqlState(error)
  return code === '40001' || code === '40P01'
}

const LOST_CONNECTION_MESSAGES = [
  'Connection terminated',
  'not queryable',
  'Client was closed',
]
const LOST_CONNECTION_NODE_CODES = new Set(['ECONNRESET', 'EPIPE', 'ETIMEDOUT', 'ECONNREFUSED', 'ENOTCONN'])
/** SQLSTATEs after which the server has closed the session. */
const FATAL_SESSION_CODES = new Set(['57P01', '57P02', '57P03', '25P03', '57P05'])

/**
 * `true` when `error` means the connection is gone (FATAL session errors such as 57P01 or 25P03,
 * class 08, node socket errors, node-postgres' "Connection terminated" family).
 * @internal
 */
export function isConnectionLoss(error: unknown): boolean {
  if (error instanceof AtomicError) return error instanceof ConnectionLostError
  const code = sqlState(error)
  if (code !== undefined) {
    if (FATAL_SESSION_CODES.has(code) || code.startsWith('08') || LOST_CONNECTION_NODE_CODES.has(code)) return true
  }
  if (error instanceof Error) {
    return LOST_CONNECTION_MESSAGES.some((m) => error.message.includes(m))
  }
  return false
}
