/**
 * The statements of lock insight (`pg-atomic/insight`) and of `pg-atomic`'s command line, as pure
 * builders: reading `pg_locks` and `pg_stat_activity`, the wait graph, sessions idle in
 * transaction, their termination, and the transaction `explainLocks()` runs a statement in.
 * A leaf module.
 *
 * The queries read `pg_lock_status()` and `pg_stat_get_activity()` (the functions behind the
 * `pg_locks` and `pg_stat_activity` views) and name relations with `pg_identify_object()`, so they
 * take no table lock of their own: run inside a block, they leave nothing behind in its
 * transaction. Values are parameters; the only interpolated numbers are validated integers.
 *
 * @module
 * @internal
 */

/** The current database's oid, without reading `pg_database` (which would take a lock). */
const MY_DATABASE = '(SELECT a.datid FROM pg_catalog.pg_stat_get_activity(pg_catalog.pg_backend_pid()) a)'

/**
 * `pg_locks` decoded, relations named. `pg_identify_object` resolves through the syscache, which
 * releases its catalog locks at once; relations of other databases are not looked up (their oids
 * mean nothing here). Continue with a `WHERE` on `l`.
 */
const LOCK_SELECT = `SELECT l.pid, l.locktype, l.relation,
       o.type AS rel_type, o.schema AS rel_schema, o.name AS rel_name, o.identity AS rel_identity,
       l.page, l.tuple, l.virtualxid, l.transactionid::text AS transactionid,
       l.classid, l.objid, l.objsubid, l.virtualtransaction, l.mode, l.granted, l.fastpath,
       (pg_catalog.to_jsonb(l) ->> 'waitstart')::timestamptz AS waitstart
  FROM pg_catalog.pg_lock_status() l
  LEFT JOIN LATERAL pg_catalog.pg_identify_object('pg_catalog.pg_class'::pg_catalog.regclass,
         CASE WHEN l.database = 0 OR l.database = ${MY_DATABASE} THEN l.relation END, 0) o ON true`

/** `pg_stat_activity` columns, from the function (no lock on the view or on pg_authid / pg_database). */
const ACTIVITY_COLUMNS = `s.pid, s.application_name, pg_catalog.pg_get_userbyid(s.usesysid) AS usename,
       s.client_addr::text AS client_addr, s.state, s.wait_event_type, s.wait_event, s.xact_start,
       (extract(epoch FROM pg_catalog.clock_timestamp() - s.xact_start) * 1000)::float8 AS xact_age_ms,
       s.state_change,
       (extract(epoch FROM pg_catalog.clock_timestamp() - s.state_change) * 1000)::float8 AS idle_ms,
       s.query`

/** Every lock of the calling backend (its transaction's locks). @internal */
export const LOCKS_OF_THIS_BACKEND_SQL = `${LOCK_SELECT} WHERE l.pid = pg_catalog.pg_backend_pid()`

/**
 * The same, with the backend's pid as `me` (at least one row: every transaction holds its own
 * virtualxid). @internal
 */
export const LOCKS_OF_THIS_BACKEND_WITH_PID_SQL = `SELECT x.*, pg_catalog.pg_backend_pid() AS me
  FROM (${LOCKS_OF_THIS_BACKEND_SQL}) x`

/**
 * Inside a transaction, `pg_stat_activity` data is a snapshot taken at its first use; this clears
 * it so that a second reading sees the present. @internal
 */
export const CLEAR_STATS_SNAPSHOT_SQL = 'SELECT pg_catalog.pg_stat_clear_snapshot()'

/**
 * The sessions of the current database that wait: for a heavyweight lock (`pg_blocking_pids`), or
 * for a safe snapshot (`pg_safe_snapshot_blocking_pids`), each with the pids it waits for. @internal
 */
export const WAITING_SESSIONS_SQL = `SELECT w.pid, w.lock_blockers, w.snapshot_blockers
  FROM (SELECT s.pid,
               CASE WHEN s.wait_event_type = 'Lock' THEN pg_catalog.pg_blocking_pids(s.pid)
                    ELSE '{}'::int[] END AS lock_blockers,
               CASE WHEN s.wait_event = 'SafeSnapshot' THEN pg_catalog.pg_safe_snapshot_blocking_pids(s.pid)
                    ELSE '{}'::int[] END AS snapshot_blockers
          FROM pg_catalog.pg_stat_get_activity(NULL) s
         WHERE s.datid = ${MY_DATABASE} AND (s.wait_event_type = 'Lock' OR s.wait_event = 'SafeSnapshot')) w
 WHERE pg_catalog.cardinality(w.lock_blockers) > 0 OR pg_catalog.cardinality(w.snapshot_blockers) > 0
 ORDER BY w.pid`

/** The activity of the sessions whose pids are `$1` (`int[]`). @internal */
export const ACTIVITY_OF_SESSIONS_SQL = `SELECT ${ACTIVITY_COLUMNS}
  FROM pg_catalog.pg_stat_get_activity(NULL) s
 WHERE s.pid = ANY($1::int[])`

/** The locks the sessions `$1` (`int[]`) wait for (not granted), with the wait so far in ms. @internal */
export const AWAITED_LOCKS_SQL = `SELECT x.*,
       (extract(epoch FROM pg_catalog.clock_timestamp() - x.waitstart) * 1000)::float8 AS wait_ms
  FROM (${LOCK_SELECT} WHERE NOT l.granted AND l.pid = ANY($1::int[])) x`

/**
 * The sessions of the current database idle in a transaction (aborted or not) for at least `$1`
 * milliseconds (`float8`), other than the calling one; longest idle first. @internal
 */
export const IDLE_IN_TRANSACTION_SQL = `SELECT ${ACTIVITY_COLUMNS}
  FROM pg_catalog.pg_stat_get_activity(NULL) s
 WHERE s.datid = ${MY_DATABASE}
   AND s.state IN ('idle in transaction', 'idle in transaction (aborted)')
   AND s.pid <> pg_catalog.pg_backend_pid()
   AND s.state_change <= pg_catalog.clock_timestamp() - $1::float8 * interval '1 millisecond'
 ORDER BY s.state_change, s.pid`

/** The locks held (granted) by the sessions `$1` (`int[]`). @internal */
export const GRANTED_LOCKS_OF_SESSIONS_SQL = `${LOCK_SELECT} WHERE l.granted AND l.pid = ANY($1::int[])`

/** `server_version_num` as an integer (`150004`). @internal */
export const SERVER_VERSION_SQL = "SELECT pg_catalog.current_setting('server_version_num')::int AS version"

/** The database, role and server version of the connection. @internal */
export const SERVER_INFO_SQL = `SELECT pg_catalog.current_database() AS database, current_user AS role,
       pg_catalog.current_setting('server_version_num')::int AS version`

/**
 * Terminates session `$1` (`int`) only if it is still idle in the same transaction: its
 * `state_change` is the `$2` (`timestamptz`) it was listed with (a JS `Date` has millisecond
 * precision, PostgreSQL microseconds, hence the one-millisecond window). No row: it was left alone.
 *
 * From PostgreSQL 14, `pg_terminate_backend(pid, timeout)` waits up to `$3` (`bigint`, ms) for the
 * session to exit and returns `false` if it did not; before 14 it only signals. @internal
 */
export function terminateIfStillIdleSql(waitForExit: boolean): string {
  return `SELECT pg_catalog.pg_terminate_backend(s.pid${waitForExit ? ', $3::bigint' : ''}) AS terminated
  FROM pg_catalog.pg_stat_get_activity($1::int) s
 WHERE s.datid = ${MY_DATABASE}
   AND s.state IN ('idle in transaction', 'idle in transaction (aborted)')
   AND s.state_change >= $2::timestamptz AND s.state_change < $2::timestamptz + interval '1 millisecond'`
}

/**
 * `BEGIN` with the `lock_timeout` and `statement_timeout` of the statement `explainLocks()` runs
 * (validated ms). @internal
 */
export function explainPreludeSql(lockTimeoutMs: number, statementTimeoutMs: number): string {
  return `BEGIN; SET LOCAL lock_timeout = ${lockTimeoutMs}; SET LOCAL statement_timeout = ${statementTimeoutMs}`
}

/** Session settings of the connection that reads row locks with `pgrowlocks` (validated ms). @internal */
export function rowLockObserverSettingsSql(statementTimeoutMs: number): string {
  return `SET lock_timeout = 1000; SET statement_timeout = ${statementTimeoutMs}`
}

/** The schema `pgrowlocks` is installed in (no row: not installed). @internal */
export const PGROWLOCKS_SCHEMA_SQL = `SELECT n.nspname AS schema
  FROM pg_catalog.pg_extension e JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace
 WHERE e.extname = 'pgrowlocks'`

/**
 * Which of the relations `$1` (`oid[]`) are plain tables (`relkind 'r'`), the only ones
 * `pgrowlocks` reads. @internal
 */
export const PLAIN_TABLES_SQL =
  "SELECT c.oid::int AS oid FROM pg_catalog.pg_class c WHERE c.oid = ANY($1::oid[]) AND c.relkind = 'r'"

/**
 * The rows of table `$1` (its qualified name, `text`) locked by backend `$2` (`int`), first `$3`
 * by physical order; `quotedSchema` is the schema of `pgrowlocks`, already quoted. @internal
 */
export function rowLocksOfTableSql(quotedSchema: string): string {
  return `SELECT r.locked_row::text AS ctid, r.modes
  FROM ${quotedSchema}.pgrowlocks($1) r
 WHERE $2::int = ANY(r.pids)
 ORDER BY r.locked_row
 LIMIT $3`
}

/**
 * Whether session `$2` waits for a lock session `$1` holds: the self-deadlock check of a requiresNew
 * block (its session `$2`, the suspended transaction's `$1`).
 */
export function blockedByStatement(): string {
  return 'SELECT $1::int = ANY (pg_catalog.pg_blocking_pids($2::int)) AS blocked'
}
