/**
 * Diagnostics: every control statement pg-atomic sends is published on `node:diagnostics_channel`.
 * Publishing is skipped entirely (no object built) when nobody subscribes.
 *
 * @module
 */
import diagnostics_channel from 'node:diagnostics_channel'

/**
 * Channel name for control statements (`BEGIN`, `SET LOCAL`, `SAVEPOINT`, `RELEASE`, `ROLLBACK TO`,
 * `COMMIT`, `ROLLBACK`).
 */
export const STATEMENT_CHANNEL = 'pg-atomic:statement'
/** Channel name for errors of robust `onCommit` hooks and of `onRollback` hooks. */
export const HOOK_ERROR_CHANNEL = 'pg-atomic:hook-error'

/** Channel name for automatic retries of a block (one event per retry, before its backoff). */
export const RETRY_CHANNEL = 'pg-atomic:retry'

/** Payload published on {@link RETRY_CHANNEL}. */
export interface RetryEvent {
  /** The attempt that failed (1 for the first). */
  readonly attempt: number
  /** Attempts allowed in all. */
  readonly maxAttempts: number
  /** SQLSTATE of the error that is retried (e.g. '40001'), if it has one. */
  readonly code: string | undefined
  /** The error of the failed attempt. */
  readonly error: unknown
  /** The backoff before the next attempt, in ms. */
  readonly delayMs: number
  /** Alias of the database. */
  readonly database: string
  /** The `name` option of the block. */
  readonly name: string | undefined
}

/** Kind of control statement. */
export type StatementKind = 'begin' | 'set-local' | 'savepoint' | 'release' | 'rollback-to' | 'commit' | 'rollback'

/** Payload published on {@link STATEMENT_CHANNEL}, one per statement. */
export interface StatementEvent {
  /** What the statement does. */
  readonly kind: StatementKind
  /** The exact SQL of this statement (several may share one round trip). */
  readonly sql: string
  /** Process-unique id of the transaction (outermost block). */
  readonly transactionId: number
  /** Alias of the database. */
  readonly database: string
  /** Depth of the block the statement belongs to: 1 for the outermost block. */
  readonly depth: number
  /** Savepoint name for savepoint statements. */
  readonly savepoint: string | undefined
  /** The `name` option of the block, if any. */
  readonly name: string | undefined
  /** Duration of the round trip that carried the statement, in milliseconds. */
  readonly durationMs: number
  /** Number of control statements sent in the same round trip. */
  readonly batchSize: number
  /**
   * `true` when the control statements rode in the same round trip as a user statement, before the
   * same Sync (pipelined: if one of them fails, the user statement does not run); `false` for a
   * round trip of control statements alone.
   */
  readonly withStatement: boolean
  /**
   * `undefined` when the statement succeeded; otherwise the error of the round trip. In a pipelined
   * round trip, the control statements that completed before the one that failed have `undefined`;
   * the failed one and those the server skipped after it carry the error. When the user statement
   * itself failed, every control statement of its round trip succeeded.
   */
  readonly error: unknown
}

/** Payload published on {@link HOOK_ERROR_CHANNEL}. */
export interface HookErrorEvent {
  /** `'commit'` for a robust `onCommit` hook, `'rollback'` for an `onRollback` hook. */
  readonly kind: 'commit' | 'rollback'
  /** The transaction the hook belonged to, or `undefined` when it ran outside a block. */
  readonly transactionId: number | undefined
  /** Alias of the database. */
  readonly database: string
  /** The hook's error. */
  readonly error: unknown
}

/** @internal */
export const statementChannel = diagnostics_channel.channel(STATEMENT_CHANNEL)
/** @internal */
export const hookErrorChannel = diagnostics_channel.channel(HOOK_ERROR_CHANNEL)
/** @internal */
export const retryChannel = diagnostics_channel.channel(RETRY_CHANNEL)

/**
 * Channel name for read-replica routing: a replica skipped because it is down or lags too much,
 * and reads sent to the primary because no replica could take them.
 */
export const REPLICA_CHANNEL = 'pg-atomic:replica'

/** Why a replica was skipped, or why a read went to the primary. */
export type ReplicaEventReason = 'down' | 'lagging' | 'not-standby' | 'not-streaming' | 'no-replica'

/** Payload published on {@link REPLICA_CHANNEL}. */
export interface ReplicaEvent {
  /**
   * `'skipped'`: the replica `replica` was not used for this read (`reason` says why: `'down'` —
   * connecting or checking it failed, `error` says how, or it failed less than
   * `replicaOptions.checkIntervalMs` ago; `'lagging'` — its replay lags more than `maxLagMs`;
   * `'not-standby'` — it is not in recovery, e.g. promoted; `'not-streaming'` — a standby whose WAL
   * receiver is not streaming from the primary, so its replay position and lag say nothing of how far
   * behind it is). `'fallback'`: no replica was usable
   * and the primary serves the read (`reason` `'no-replica'`).
   */
  readonly kind: 'skipped' | 'fallback'
  /** See {@link ReplicaEvent.kind}. */
  readonly reason: ReplicaEventReason
  /** Alias of the database. */
  readonly database: string
  /** The replica (`host:port/database`, never a password); `undefined` for a fallback. */
  readonly replica: string | undefined
  /** The replica's replay lag in ms when it was last checked, if known. */
  readonly lagMs: number | undefined
  /** The connection or check error of a replica that is down, if this read saw it. */
  readonly error: unknown
}

/** @internal */
export const replicaChannel = diagnostics_channel.channel(REPLICA_CHANNEL)
