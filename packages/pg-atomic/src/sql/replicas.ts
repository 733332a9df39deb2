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
 * A replica's health in one round trip: whether it is a standby, the WAL position it has replayed,
 * and its replay lag in ms — `now() - pg_last_xact_replay_timestamp()` while it has received WAL it
 * has not replayed yet, else 0 (an idle replica is not behind, however old its last replayed
 * transaction).
 * @internal
 */
export const REPLICA_CHECK_QUERY =
  'select pg_is_in_recovery() as standby, pg_last_wal_replay_lsn()::text as replay, ' +
  'case when not pg_is_in_recovery() or pg_last_wal_receive_lsn() is null ' +
  'or pg_last_wal_receive_lsn() <= pg_last_wal_replay_lsn() then 0 ' +
  'else coalesce(floor(extract(epoch from now() - pg_last_xact_replay_timestamp()) * 1000), 0) end::float8 as lag_ms'
