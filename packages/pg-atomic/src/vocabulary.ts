/**
 * PostgreSQL's words as data: one `as const` array per vocabulary, the single source of both the
 * TypeScript type and the runtime check. A leaf: imports nothing of the library.
 *
 * @module
 */

/**
 * What a block does with a transaction of its database that encloses it (`propagation` option):
 * `'nested'` joins it (a savepoint, or none with `savepoint: false`) or begins one; `'requiresNew'`
 * suspends it and runs an independent transaction on another connection; `'mandatory'` joins it and
 * refuses to run without one; `'notSupported'` suspends it and runs without a transaction;
 * `'never'` refuses to run inside one and runs without a transaction.
 */
export const PROPAGATIONS = ['nested', 'requiresNew', 'mandatory', 'notSupported', 'never'] as const
/** One of {@link PROPAGATIONS}. */
export type Propagation = (typeof PROPAGATIONS)[number]

/** Isolation levels accepted by `atomic()` and `createDatabase()` (PostgreSQL's words, lower case). */
export const ISOLATION_LEVELS = ['read committed', 'repeatable read', 'serializable', 'read uncommitted'] as const
/** One of {@link ISOLATION_LEVELS}. */
export type IsolationLevel = (typeof ISOLATION_LEVELS)[number]

/** Largest value PostgreSQL accepts for a millisecond timeout setting. @internal */
export const MAX_TIMEOUT_MS = 2_147_483_647

/** Per-transaction settings applied with `SET LOCAL`, option name → PostgreSQL setting. @internal */
export const TIMEOUT_SETTINGS = {
  statementTimeout: 'statement_timeout',
  lockTimeout: 'lock_timeout',
  idleInTransactionSessionTimeout: 'idle_in_transaction_session_timeout',
} as const
/** Name of a timeout option: `'statementTimeout' | 'lockTimeout' | 'idleInTransactionSessionTimeout'`. @internal */
export type TimeoutOption = keyof typeof TIMEOUT_SETTINGS
/** The names of the timeout options, in the order their SET LOCALs are sent. @internal */
export const TIMEOUT_OPTIONS = Object.freeze(Object.keys(TIMEOUT_SETTINGS) as TimeoutOption[])

/** SQLSTATEs retried by default: serialization_failure (40001) and deadlock_detected (40P01). */
export const DEFAULT_RETRY_CODES = ['40001', '40P01'] as const

/** The eight table lock modes, weakest first, in `LOCK TABLE ... IN <mode> MODE` words (lower case). */
export const LOCK_MODES = [
  'access share',
  'row share',
  'row exclusive',
  'share update exclusive',
  'share',
  'share row exclusive',
  'exclusive',
  'access exclusive',
] as const
/** One of {@link LOCK_MODES}. */
export type LockMode = (typeof LOCK_MODES)[number]

/** `pg_locks.mode` for each table lock mode (e.g. `'AccessShareLock'`). */
export const PG_LOCK_MODE_NAMES: Readonly<Record<LockMode, string>> = Object.freeze({
  'access share': 'AccessShareLock',
  'row share': 'RowShareLock',
  'row exclusive': 'RowExclusiveLock',
  'share update exclusive': 'ShareUpdateExclusiveLock',
  share: 'ShareLock',
  'share row exclusive': 'ShareRowExclusiveLock',
  exclusive: 'ExclusiveLock',
  'access exclusive': 'AccessExclusiveLock',
})

/** Row lock strengths, strongest first, in PostgreSQL's words (lower case): `FOR <strength>`. */
export const ROW_LOCK_STRENGTHS = ['update', 'no key update', 'share', 'key share'] as const
/** One of {@link ROW_LOCK_STRENGTHS}. */
export type RowLockStrength = (typeof ROW_LOCK_STRENGTHS)[number]

/** PostgreSQL's limit on identifier length, in bytes (NAMEDATALEN − 1): longer names are truncated by the server. */
export const MAX_IDENTIFIER_BYTES = 63
