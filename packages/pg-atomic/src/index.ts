/**
 * pg-atomic: Django-grade transaction management for PostgreSQL on node-postgres.
 *
 * @packageDocumentation
 */
export { createDatabase, getDatabase } from './database'
export type { CloseOptions, Database } from './database'
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
  isSerializationFailure,
  isDeadlock,
  isLockNotAvailable,
  isRetryable,
} from './errors'
export { ISOLATION_LEVELS, DEFAULT_RETRY_CODES } from './options'
export type { AtomicLogger, AtomicOptions, DatabaseConfig, IsolationLevel, RetryOptions, TransactionDefaults } from './options'
export { STATEMENT_CHANNEL, HOOK_ERROR_CHANNEL, RETRY_CHANNEL } from './events'
export type { HookErrorEvent, RetryEvent, StatementEvent, StatementKind } from './events'
export type { CursorOptions, Hook, OnCommitOptions, TransactionHandle, TransactionInfo } from './types'
