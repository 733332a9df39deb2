/**
 * The data lock insight returns, and its options. Plain, frozen, typed objects: the `pg-atomic`
 * command line prints the same data for people (`--json` prints it as is).
 *
 * @module
 */
import type { Database } from '../database'
import type { ResolvedAdvisoryKey } from '../locks/advisory'
import type { LockMode } from '../vocabulary'

/** Which database an insight function uses. */
export interface InsightOptions {
  /**
   * The database: its alias, or the `Database` returned by `createDatabase()`. Default: the
   * database of the innermost active `atomic()` block of the current async context; outside
   * blocks, `'default'`.
   */
  using?: string | Database
}

/** A relation (table, index, sequence, view, ...) named in a lock. */
export interface RelationRef {
  /** `pg_class.oid`. */
  readonly oid: number
  /**
   * The schema, or `null` when the relation cannot be resolved (dropped, another database's, created by an
   * uncommitted transaction).
   */
  readonly schema: string | null
  /** The relation's name, or `null` when it cannot be resolved. */
  readonly name: string | null
  /** `schema.name`, each part quoted when needed (`public."Order Lines"`), or `null` when it cannot be resolved. */
  readonly qualifiedName: string | null
  /**
   * What it is: `'table'` (partitioned tables included), `'index'`, `'sequence'`, `'view'`, `'materialized view'`,
   * `'toast table'`, `'foreign table'`, ...; `null` when unresolved.
   */
  readonly kind: string | null
}

/** One row of `pg_locks`, decoded. */
export interface LockInfo {
  /** The backend holding or awaiting the lock (`null` for a prepared transaction). */
  readonly pid: number | null
  /**
   * `pg_locks.locktype`: `'relation'`, `'tuple'` (a row, while it is being locked or waited
   * for), `'transactionid'`, `'virtualxid'`, `'advisory'`, `'object'`, `'page'`, `'extend'`, ...
   */
  readonly type: string
  /** The relation, for `relation`, `tuple`, `page` and `extend` locks; otherwise `null`. */
  readonly relation: RelationRef | null
  /** The page, for `page` and `tuple` locks. */
  readonly page: number | null
  /** The tuple number in its page, for `tuple` locks. */
  readonly tuple: number | null
  /** The transaction id locked, for `transactionid` locks (decimal text). */
  readonly transactionId: string | null
  /** The virtual transaction id locked, for `virtualxid` locks (`'3/1234'`). */
  readonly virtualTransactionId: string | null
  /**
   * The key, for `advisory` locks: a `bigint` for `pg_advisory_lock(bigint)` (objsubid 1,
   * `(classid << 32) | objid` read as signed 64-bit), a pair for `pg_advisory_lock(int, int)`
   * (objsubid 2). The two key spaces are distinct: `42n` and `[0, 42]` are different locks.
   */
  readonly advisoryKey: ResolvedAdvisoryKey | null
  /** `classid`, `objid`, `objsubid`, for `object` locks (and any other type that uses them). */
  readonly object: { readonly classId: number; readonly objectId: number; readonly objectSubId: number } | null
  /** `pg_locks.mode`, e.g. `'RowExclusiveLock'`, `'SIReadLock'`. */
  readonly mode: string
  /** The same mode in `LOCK TABLE` words (`'row exclusive'`), or `null` for `SIReadLock`. */
  readonly lockMode: LockMode | null
  /** `true` when held, `false` while waited for. */
  readonly granted: boolean
  /** Taken through the fast path (weak relation locks without conflict). */
  readonly fastPath: boolean
  /** When the wait began (PostgreSQL 14+; `null` for granted locks and older servers). */
  readonly waitStartedAt: Date | null
  /**
   * One line for people: `table public.accounts`, `row (0,3) of public.accounts`, `advisory key 42`, `transaction
   * 1234`, ...
   */
  readonly target: string
}

/** Options of `lockWaits()`. */
export interface LockWaitsOptions extends InsightOptions {
  /** Longest query text returned, in characters (longer ones end with `…`). Default: `200`. */
  queryLength?: number
}

/** A session in the tree of `lockWaits()`. */
export interface LockWaitNode {
  /** The backend's process id; `0` stands for a prepared transaction (`PREPARE TRANSACTION`). */
  readonly pid: number
  /** `'session'`, or `'prepared transaction'` for pid 0. */
  readonly kind: 'session' | 'prepared transaction'
  /** `application_name` of the session. */
  readonly applicationName: string | null
  /** The role the session is logged in as. */
  readonly user: string | null
  /** The client's address, `null` for unix sockets and when not visible. */
  readonly clientAddress: string | null
  /**
   * `pg_stat_activity.state`: `'active'`, `'idle in transaction'`, `'idle in transaction (aborted)'`, ... (`null`
   * when not visible to this role).
   */
  readonly state: string | null
  /** `pg_stat_activity.wait_event_type`: `'Lock'`, or `'IPC'` for a safe-snapshot wait. */
  readonly waitEventType: string | null
  /** `pg_stat_activity.wait_event`: `'relation'`, `'transactionid'`, `'tuple'`, `'advisory'`, `'SafeSnapshot'`, ... */
  readonly waitEvent: string | null
  /** When its transaction began. */
  readonly transactionStartedAt: Date | null
  /** Its transaction's age in milliseconds when sampled. */
  readonly transactionAgeMs: number | null
  /** The current (or, when idle, the last) statement, truncated to `queryLength`. */
  readonly query: string | null
  /**
   * What it waits for: `'lock'` (a heavyweight lock, see `waitingFor`), `'safe snapshot'` (a `SERIALIZABLE READ
   * ONLY DEFERRABLE` transaction waiting for a safe snapshot), or `null` for a root.
   */
  readonly waitKind: 'lock' | 'safe snapshot' | null
  /** The lock it waits for (not granted), when `waitKind` is `'lock'`. */
  readonly waitingFor: LockInfo | null
  /** When the wait began (PostgreSQL 14+ for lock waits). */
  readonly waitStartedAt: Date | null
  /** How long the wait has lasted, in milliseconds (PostgreSQL 14+ for lock waits). */
  readonly waitMs: number | null
  /** Every session it waits for (it appears under each of them). */
  readonly blockedBy: readonly number[]
  /** The sessions waiting for this one. */
  readonly blocking: readonly LockWaitNode[]
  /**
   * `true` when this session already appears above on its own branch: a wait cycle (a deadlock the server has not
   * broken yet); its children are not repeated.
   */
  readonly cycle: boolean
}

/** Options of `idleInTransaction()`. */
export interface IdleInTransactionOptions extends InsightOptions {
  /**
   * Only sessions idle for at least this long, in milliseconds (time since their last statement ended). A whole
   * number of at least 0. Default: `0` (all).
   */
  olderThanMs?: number
  /** Longest query text returned, in characters (longer ones end with `…`). Default: `200`. */
  queryLength?: number
}

/** A session idle in a transaction, from `idleInTransaction()`. */
export interface IdleSession {
  /** The backend's process id. */
  readonly pid: number
  /** `application_name` of the session. */
  readonly applicationName: string | null
  /** The role the session is logged in as. */
  readonly user: string | null
  /** The client's address, `null` for unix sockets and when not visible. */
  readonly clientAddress: string | null
  /**
   * `'idle in transaction'` or `'idle in transaction (aborted)'` (an error happened; it holds no transaction lock
   * any more, only session advisory locks).
   */
  readonly state: 'idle in transaction' | 'idle in transaction (aborted)'
  /** When its transaction began. */
  readonly transactionStartedAt: Date | null
  /** Its transaction's age in milliseconds. */
  readonly transactionAgeMs: number | null
  /** When it became idle (`pg_stat_activity.state_change`). */
  readonly idleSince: Date
  /** How long it has been idle, in milliseconds. */
  readonly idleMs: number
  /** Its last statement, truncated to `queryLength`. */
  readonly query: string | null
  /** The locks it holds (granted), `pg_locks` order. */
  readonly locks: readonly LockInfo[]
}

/** Options of `terminateSessions()`. */
export interface TerminateSessionsOptions extends InsightOptions {
  /**
   * From PostgreSQL 14, how long to wait for each session to exit, in milliseconds
   * (`pg_terminate_backend(pid, timeout)`); a session still there afterwards is reported as
   * `'failed'`. `0` only signals. Ignored before PostgreSQL 14 (the session is only signalled).
   * A whole number from 0 to 2147483647. Default: `5000`.
   */
  exitTimeoutMs?: number
}

/** What `terminateSessions()` did to one session. */
export interface SessionTermination {
  /** The session's process id. */
  readonly pid: number
  /**
   * `'terminated'`; `'skipped'`: no longer idle in the same transaction (it ran a statement or
   * ended since it was listed), so it was left alone; `'failed'`: see `reason`, `code`, `error`.
   */
  readonly outcome: 'terminated' | 'skipped' | 'failed'
  /** Why it was skipped or failed, one sentence for people (never the server's message); `null` when terminated. */
  readonly reason: string | null
  /** The SQLSTATE of a failure the server reported, e.g. `'42501'` (permission denied); otherwise `null`. */
  readonly code: string | null
  /**
   * The error of a failure (node-postgres' `DatabaseError`, with the server's message and fields), otherwise
   * `null`.
   */
  readonly error: Error | null
}

/** Options of `explainLocks()`. */
export interface ExplainLocksOptions extends InsightOptions {
  /**
   * How long the statement may wait for a lock another session holds, in milliseconds
   * (`lock_timeout`, hence the name). Short on purpose: a statement waiting for a strong lock
   * queues every later statement on that table behind it. On expiry the statement fails with
   * PostgreSQL's 55P03, passed through. `0` waits without limit. Default: `1000`.
   */
  lockTimeout?: number
  /** `statement_timeout` for the statement, in milliseconds; `0` for none. Default: `30000`. */
  statementTimeout?: number
  /**
   * List row locks with the `pgrowlocks` extension when it is installed in the database. It reads
   * every row of each table the statement locked rows in, from a second connection. Default: `true`.
   */
  rowLocks?: boolean
  /** At most this many row locks are listed. Default: `100`. */
  maxRowLocks?: number
}

/** A lock of {@link LockReport}, with what it blocks. */
export interface ExplainedLock extends LockInfo {
  /**
   * For relation locks: the table lock modes that conflict with it (other transactions asking for them wait). Empty
   * for other lock types.
   */
  readonly conflictsWith: readonly LockMode[]
  /**
   * What other sessions cannot do while it is held: statements for relation locks (`['ALTER TABLE (most forms)',
   * 'VACUUM FULL', ...]`), a sentence for other types.
   */
  readonly blocks: readonly string[]
}

/** A row lock found by `pgrowlocks`. */
export interface RowLockInfo {
  /** The table of the row. */
  readonly relation: RelationRef
  /** The row's physical address, e.g. `'(0,3)'`. */
  readonly ctid: string
  /**
   * How it is locked, lower case, as `pgrowlocks` says: `'for key share'`, `'for share'`,
   * `'for no key update'`, `'for update'` (explicit locks), `'no key update'` (an `UPDATE` of
   * non-key columns), `'update'` (an `UPDATE` of a key column, or a `DELETE`).
   */
  readonly modes: readonly string[]
  /** What other sessions cannot do to this row while it is locked. */
  readonly blocks: readonly string[]
}

/** The row-level part of {@link LockReport}. */
export interface RowLocksReport {
  /**
   * `'pgrowlocks'`: listed in `rows`; `'none'`: the statement locked no table's rows;
   * `'not installed'`: the extension is missing, rows are not listed; `'disabled'`:
   * `rowLocks: false`; `'failed'`: `pgrowlocks` could not read them (see `error`).
   */
  readonly source: 'pgrowlocks' | 'none' | 'not installed' | 'disabled' | 'failed'
  /** The row locks found (empty unless `source` is `'pgrowlocks'`). */
  readonly rows: readonly RowLockInfo[]
  /** `true` when more than `maxRowLocks` rows were locked and only the first ones are listed. */
  readonly truncated: boolean
  /** One sentence for people about how the rows were (or were not) listed. */
  readonly note: string
  /** With `source: 'failed'`, why `pgrowlocks` failed (the server's error); otherwise `null`. */
  readonly error: Error | null
}

/** The report of `explainLocks()`. */
export interface LockReport {
  /** The statement, as given. */
  readonly sql: string
  /** Its command tag (`'UPDATE'`, `'ALTER TABLE'`, ...; the last one for several statements). */
  readonly command: string | null
  /** Its row count (the last statement's). */
  readonly rowCount: number | null
  /**
   * The locks held after the statement, relations first (strongest mode first), then the others. The transaction's
   * own `virtualxid` lock, held by every transaction, is left out.
   */
  readonly locks: readonly ExplainedLock[]
  /** Row locks (which `pg_locks` does not show). */
  readonly rowLocks: RowLocksReport
  /** Sentences for people: how to read the report, what was not listed. */
  readonly notes: readonly string[]
}

/** What `serverInfo()` returns. */
export interface ServerInfo {
  /** `current_database()`. */
  readonly database: string
  /** `current_user`: the role statements run as. */
  readonly role: string
  /** `server_version_num`, e.g. `150004` for 15.4. */
  readonly serverVersion: number
}
