/**
 * pg-atomic: Django-grade transaction management for PostgreSQL on node-postgres.
 *
 * @packageDocumentation
 */
export { createDatabase, getDatabase } from './database'
export type { CloseOptions, Database, ReplicaReader } from './database'
export { atomic, onCommit, onRollback, setRollback, getRollback, inAtomicBlock, currentTransaction } from './ambient'
export type { AmbientOptions, AtomicCallback, AtomicFunction } from './ambient'
export { Atomic } from './decorator'
export type { AsyncMethod, AtomicMethodDecorator } from './decorator'
export {
  AtomicError,
  TransactionManagementError,
  InvalidOptionError,
  ConnectionLostError,
  CommitOutcomeUnknownError,
  OnCommitHookError,
  AcquireTimeoutError,
  SuspendedTransactionDeadlockError,
  ReplicaUnavailableError,
  isSerializationFailure,
  isDeadlock,
  isLockNotAvailable,
  isRetryable,
  isStatementTimeout,
  isIdleInTransactionTimeout,
  isConnectionError,
} from './errors'
export { ISOLATION_LEVELS, DEFAULT_RETRY_CODES, PROPAGATIONS } from './vocabulary'
export type { IsolationLevel, Propagation } from './vocabulary'
export type {
  AtomicLogger,
  AtomicOptions,
  DatabaseConfig,
  ReplicaConfig,
  ReplicaOptions,
  RetryOptions,
  TransactionDefaults,
} from './options'
export { STATEMENT_CHANNEL, HOOK_ERROR_CHANNEL, RETRY_CHANNEL, REPLICA_CHANNEL } from './events'
export type {
  HookErrorEvent,
  ReplicaEvent,
  ReplicaEventReason,
  RetryEvent,
  StatementEvent,
  StatementKind,
} from './events'
export { withReadYourWrites } from './replicas/session'
export type { CursorOptions, Hook, OnCommitOptions, TransactionHandle, TransactionInfo } from './types'
// ---- Locks: table, row and advisory locks; lock insight is in 'pg-atomic/insight' ----
export { LockNotAvailableError } from './errors'
export type { LockNotAvailableReason } from './errors'
export { lockTable } from './locks/table'
export type { LockTableOptions } from './locks/table'
export type { TableLockInput, TableLockOptions } from './locks/table-lock'
export { forUpdate, selectForUpdate } from './locks/rows'
export { ROW_LOCK_STRENGTHS, LOCK_MODES } from './vocabulary'
export type { RowLockStrength, LockMode } from './vocabulary'
export type { ForUpdateOptions, SelectForUpdateOptions } from './locks/rows'
export { ADVISORY_KEY_NAMESPACE, ADVISORY_KEY_SQL, advisoryKey, advisoryLock, withAdvisoryLock } from './locks/advisory'
export type {
  AdvisoryLockContext,
  AdvisoryLockKey,
  AdvisoryLockOptions,
  ResolvedAdvisoryKey,
  WithAdvisoryLockOptions,
} from './locks/advisory'
