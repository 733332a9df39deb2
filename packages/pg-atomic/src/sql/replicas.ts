/**
 * The statements of read-replica routing.
 *
 * @module
 * @internal
 */

/**
 * The primary's WAL insert position, as text (`16/B374D848`). Sent right after COMMIT (in the same
 * simple-protocol string) or after an autocommit statement: it is at or past the end of the commit
 * record just written, so a replica that has replayed it sees the commit. The insert position
 * rather than `pg_current_wal_lsn()` (the write position): with `synchronous_commit = off` the
 * commit record may not be written yet when COMMIT returns. On a server in recovery, where the
 * function raises an error, the CASE answers NULL instead (and nothing is remembered). It can still
 * fail after a COMMIT that succeeded (cancelled, statement_timeout, EXECUTE revoked, connection
 * lost): the wire tells that from a failed COMMIT by COMMIT's CommandComplete, and reports the block
 * as committed with its position unknown (wire.ts, `commitPositionUnknown`).
 * @internal
 */
export const WAL_INSERT_LSN_QUERY =
  'select case when pg_is_in_recovery() then null else pg_current_wal_insert_lsn()::text end as lsn'

/**
 * A replica's health in one round trip: whether it is a standby, whether its WAL receiver streams
 * from the primary, the WAL position it has replayed, and its replay lag in ms — `now() -
 * pg_last_xact_replay_timestamp()` while it has received WAL it has not replayed yet, else 0 (an idle
 * replica is not behind, however old its last replayed transaction). The lag says nothing once the
 * replication link is broken (received = replayed: 0 forever), hence `streaming`: a row of
 * `pg_stat_wal_receiver` (there is one only while the receiver process runs) whose status is
 * `'streaming'` — or NULL, which is what a role without `pg_read_all_stats` sees.
 * @internal
 */
export const REPLICA_CHECK_QUERY =
  'select pg_is_in_recovery() as standby, pg_last_wal_replay_lsn()::text as replay, ' +
  "exists (select from pg_stat_wal_receiver where coalesce(status, 'streaming') = 'streaming') as streaming, " +
  'case when not pg_is_in_recovery() or pg_last_wal_receive_lsn() is null ' +
  'or pg_last_wal_receive_lsn() <= pg_last_wal_replay_lsn() then 0 ' +
  'else coalesce(floor(extract(epoch from now() - pg_last_xact_replay_timestamp()) * 1000), 0) end::float8 as lag_ms'

/**
 * Makes the current transaction read-only: sent before a `db.replica` statement outside blocks that
 * the primary serves (no replica usable), in the same round trip and before the same Sync, so the
 * statement runs in the same implicit transaction and a write fails with 25006 as on a standby.
 * `set_config(..., true)` rather than `SET LOCAL`: not a top-level utility statement, so no
 * "can only be used in transaction blocks" warning; it ends with the implicit transaction (safe
 * under PgBouncer's transaction pooling). It also takes the transaction's snapshot, so the statement
 * can no longer switch the transaction back to read-write (25001).
 * @internal
 */
export const READ_ONLY_TRANSACTION_QUERY = "select set_config('transaction_read_only', 'on', true)"

/**
 * The same, for a statement that cannot share a round trip (several statements, a named prepared
 * statement, COPY): an explicit read-only transaction whose snapshot is taken at once, ended by
 * COMMIT (or ROLLBACK) after the statement.
 * @internal
 */
export const BEGIN_READ_ONLY_QUERY = `BEGIN READ ONLY; ${READ_ONLY_TRANSACTION_QUERY}`
