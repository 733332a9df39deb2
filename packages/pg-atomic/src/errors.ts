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
  /** Always `'AtomicError'`. */
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
  /** Always `'TransactionManagementError'`. */
  override name = 'TransactionManagementError'
}

/**
 * An option or configuration value is invalid. Raised before anything is sent to the server.
 * `field` names the offending option (dotted path for nested fields).
 */
export class InvalidOptionError extends AtomicError {
  /** Always `'InvalidOptionError'`. */
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
  /** Always `'ConnectionLostError'`. */
  override name = 'ConnectionLostError'
}

/**
 * The connection was lost while `COMMIT` was in flight: the transaction may or may not have been
 * committed. Never retry automatically; check the data (or make the work idempotent) first.
 */
export class CommitOutcomeUnknownError extends AtomicError {
  /** Always `'CommitOutcomeUnknownError'`. */
  override name = 'CommitOutcomeUnknownError'
}

/**
 * A non-robust `onCommit` hook failed **after** the transaction was committed. The data is
 * committed (`committed` is always `true`): do not retry the transaction. Hooks registered after
 * the failing one did not run. `cause` is the hook's error.
 */
export class OnCommitHookError extends AtomicError {
  /** Always `'OnCommitHookError'`. */
  override name = 'OnCommitHookError'
  /** Always `true`: the transaction this hook belonged to was committed. */
  readonly committed = true as const
}

/**
 * No replica could serve a read that should go to one (every replica down, lagging more than
 * `maxLagMs`, or not a standby), and the database was created with
 * `replicaOptions: { whenUnavailable: 'fail' }` instead of letting the primary serve it.
 * Nothing was sent. The `cause` is the last connection error seen, if any.
 */
export class ReplicaUnavailableError extends AtomicError {
  /** Always `'ReplicaUnavailableError'`. */
  override name = 'ReplicaUnavailableError'
  /** Alias of the database. */
  readonly database: string
  /** Why each replica was skipped, by replica (`host:port/database`). */
  readonly skipped: Readonly<Record<string, 'down' | 'lagging' | 'not-standby' | 'not-streaming'>>
  constructor(
    message: string,
    fields: {
      database: string
      skipped: Readonly<Record<string, 'down' | 'lagging' | 'not-standby' | 'not-streaming'>>
    },
    options?: { cause?: unknown },
  ) {
    super(message, options)
    this.database = fields.database
    this.skipped = fields.skipped
  }
}

/**
 * No pooled connection became free within the database's `acquireTimeoutMs`. Nothing was sent.
 * The fields say how the pool was used at that moment.
 */
export class AcquireTimeoutError extends AtomicError {
  /** Always `'AcquireTimeoutError'`. */
  override name = 'AcquireTimeoutError'
  /** The pool's `max`. */
  readonly poolSize: number
  /** Connections held by atomic() blocks of this database. */
  readonly heldByBlocks: number
  /** Requests waiting for a connection, this one included. */
  readonly waiting: number
  constructor(message: string, fields: { poolSize: number; heldByBlocks: number; waiting: number }) {
    super(message)
    this.poolSize = fields.poolSize
    this.heldByBlocks = fields.heldByBlocks
    this.waiting = fields.waiting
  }
}

/**
 * A `propagation: 'requiresNew'` block waited for a lock held by the transaction it suspended: the
 * two sessions belong to one caller, which waits for the inner block before it resumes the outer
 * transaction, so neither can ever go on, and PostgreSQL cannot see it (its deadlock detector only
 * sees waits between sessions). pg-atomic checks while the inner block's statement waits, cancels
 * it, and rolls the inner block back with this error. The outer transaction is untouched.
 */
export class SuspendedTransactionDeadlockError extends AtomicError {
  /** Always `'SuspendedTransactionDeadlockError'`. */
  override name = 'SuspendedTransactionDeadlockError'
  /** Server process id of the requiresNew block's session (the one that waited). */
  readonly innerPid: number
  /** Server process id of the suspended outer transaction's session (the lock holder). */
  readonly outerPid: number
  constructor(message: string, fields: { innerPid: number; outerPid: number }, options?: { cause?: unknown }) {
    super(message, options)
    this.innerPid = fields.innerPid
    this.outerPid = fields.outerPid
  }
}

/** The SQLSTATE (or node error code) of `error`, if it has one. @internal */
export function sqlState(error: unknown): string | undefined {
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
 * `true` for SQLSTATE 57014 (query_canceled) caused by `statement_timeout` (the `statementTimeout`
 * option); `false` for a cancel by `pg_cancel_backend`, which has the same code.
 */
export function isStatementTimeout(error: unknown): boolean {
  return sqlState(error) === '57014' && error instanceof Error && error.message.includes('statement timeout')
}

/**
 * `true` when the server ended the session because it sat idle in a transaction longer than
 * `idleInTransactionSessionTimeout` (SQLSTATE 25P03): the error itself, or the
 * `ConnectionLostError` pg-atomic raised for it (whose `cause` has that code).
 */
export function isIdleInTransactionTimeout(error: unknown): boolean {
  if (sqlState(error) === '25P03') return true
  return error instanceof ConnectionLostError && sqlState(error.cause) === '25P03'
}

/**
 * `true` when retrying the whole transaction may succeed: serialization failures (40001) and
 * deadlocks (40P01). Never true for an ambiguous commit.
 */
export function isRetryable(error: unknown): boolean {
  const code = sqlState(error)
  return code === '40001' || code === '40P01'
}

const LOST_CONNECTION_MESSAGES = ['Connection terminated', 'not queryable', 'Client was closed']
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

/** Node socket codes that mean no connection could be made (the server is not reachable there). */
const CONNECT_FAILURE_NODE_CODES = new Set([
  'ECONNREFUSED',
  'ENOTFOUND',
  'EAI_AGAIN',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'ENOENT',
  'EACCES',
  'ETIMEDOUT',
])

/**
 * `true` when `error` means the connection to PostgreSQL is gone or could not be made, so the
 * statement did not run (or its outcome is unknown) and retrying needs a new connection:
 *
 * 1. pg-atomic's `ConnectionLostError` (and `CommitOutcomeUnknownError`: the connection was lost
 *    during `COMMIT`);
 * 2. server errors that end the session (SQLSTATE class 08, 57P01 `admin_shutdown`, 57P02, 57P03,
 *    57P05, 25P03 `idle_in_transaction_session_timeout`);
 * 3. Node socket errors (`ECONNRESET`, `EPIPE`, `ECONNREFUSED`, `ENOTFOUND`, `ETIMEDOUT`, ...,
 *    also inside the `AggregateError` of a multi-address connect);
 * 4. node-postgres' "Connection terminated" family (including a connect timeout).
 *
 * Errors of the statement itself (syntax, constraint, lock timeout, permission) are `false`.
 *
 * @example
 * ```ts
 * try {
 *   await db.query('select 1')
 * } catch (error) {
 *   if (isConnectionError(error)) console.error('PostgreSQL is unreachable')
 *   else throw error
 * }
 * ```
 */
export function isConnectionError(error: unknown): boolean {
  if (error instanceof CommitOutcomeUnknownError) return true
  if (isConnectionLoss(error)) return true
  const code = sqlState(error)
  if (code !== undefined && CONNECT_FAILURE_NODE_CODES.has(code)) return true
  if (error instanceof AggregateError) return error.errors.some((e) => isConnectionError(e))
  return (
    error instanceof Error &&
    !(error instanceof AtomicError) &&
    /timeout expired|timeout exceeded when trying to connect/i.test(error.message)
  )
}

// ---- Locks (issue 4) ----------------------------------------------------------------------------

/** Why a lock was not obtained: `'nowait'` (`NOWAIT`, or a try form) or `'lock_timeout'` (waited too long). */
export type LockNotAvailableReason = 'nowait' | 'lock_timeout'

/**
 * A lock requested by one of pg-atomic's lock helpers (`lockTable()`, `selectForUpdate()`,
 * `advisoryLock()`, `withAdvisoryLock()`) could not be obtained: another transaction holds a
 * conflicting lock and the request used `NOWAIT` (or a try form), or `lock_timeout` expired.
 *
 * 1. `code` is always `'55P03'` (lock_not_available), so `isLockNotAvailable(error)` is `true`.
 * 2. `relation` names the table when PostgreSQL names it (`could not obtain lock on relation "x"`,
 *    `... on row in relation "x"`, or the `while locking tuple ... in relation "x"` context), or
 *    when the helper asked for exactly one table; otherwise `undefined` (advisory locks).
 * 3. `cause` is node-postgres' `DatabaseError` (absent when `withAdvisoryLock()`'s try form found
 *    the lock taken: nothing failed on the server).
 *
 * Inside an `atomic()` block the failed statement dooms the block, as every failed statement does.
 */
export class LockNotAvailableError extends AtomicError {
  /** Always `'LockNotAvailableError'`. */
  override name = 'LockNotAvailableError'
  /** SQLSTATE `55P03` (lock_not_available). */
  readonly code = '55P03' as const
  /** The table PostgreSQL could not lock, when known. */
  readonly relation: string | undefined
  /** `'nowait'` (`NOWAIT` / try form) or `'lock_timeout'`. */
  readonly reason: LockNotAvailableReason
  constructor(
    message: string,
    fields: { relation?: string | undefined; reason: LockNotAvailableReason; cause?: unknown },
  ) {
    super(message, fields.cause === undefined ? undefined : { cause: fields.cause })
    this.relation = fields.relation
    this.reason = fields.reason
  }
}

const RELATION_IN_MESSAGE = /^could not obtain lock on (row in )?relation "(.*)"$/s
const RELATION_IN_CONTEXT = /tuple \([0-9]+,[0-9]+\) in relation "([^"]*)"/

/**
 * Converts a 55P03 error of a lock helper's own statement into a {@link LockNotAvailableError};
 * returns `undefined` for any other error (which the helper rethrows unchanged).
 *
 * `requested` is what the statement asked for: `'table'` (with the tables, used as `relation` when
 * there is exactly one and PostgreSQL did not name it), `'row'` or `'advisory'`.
 * @internal
 */
export function lockNotAvailableFrom(
  error: unknown,
  requested: { kind: 'table'; tables: readonly string[] } | { kind: 'row' } | { kind: 'advisory' },
): LockNotAvailableError | undefined {
  if (error instanceof AtomicError || sqlState(error) !== '55P03') return undefined
  const message = error instanceof Error ? error.message : ''
  const where = typeof (error as { where?: unknown }).where === 'string' ? (error as { where: string }).where : ''
  const named = RELATION_IN_MESSAGE.exec(message)
  const reason: LockNotAvailableReason = named !== null || !message.includes('lock timeout') ? 'nowait' : 'lock_timeout'
  let relation = named?.[2] ?? RELATION_IN_CONTEXT.exec(where)?.[1]
  if (relation === undefined && requested.kind === 'table' && requested.tables.length === 1)
    relation = requested.tables[0]
  const rowLock = requested.kind === 'row' || named?.[1] !== undefined
  const what =
    requested.kind === 'advisory'
      ? 'an advisory lock'
      : relation === undefined
        ? rowLock
          ? 'a row lock'
          : 'a table lock'
        : rowLock
          ? `a row lock in relation "${relation}"`
          : `a lock on relation "${relation}"`
  const how =
    reason === 'nowait'
      ? `Could not obtain ${what} without waiting (NOWAIT): another transaction holds a conflicting lock.`
      : `Gave up waiting for ${what} when lock_timeout expired: another transaction holds a conflicting lock.`
  return new LockNotAvailableError(
    `${how} The statement failed, so the enclosing atomic() block must roll back; ` +
      `try again later, or catch the error outside a nested atomic() block to let the ` +
      `rest of the transaction continue.`,
    { relation, reason, cause: error },
  )
}
