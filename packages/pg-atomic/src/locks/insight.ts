/**
 * Lock insight: what the current transaction holds (`locksHeld`), who waits for whom
 * (`lockWaits`), which sessions sit idle in a transaction (`idleInTransaction`), and which locks
 * a statement takes (`explainLocks`). Every function returns plain typed data; the
 * `pg-atomic` command line (package `pg-atomic-cli`) prints the same data for people.
 *
 * The inspection queries read `pg_lock_status()` and `pg_stat_get_activity()` (the functions
 * behind the `pg_locks` and `pg_stat_activity` views) and name relations with
 * `pg_identify_object()`, so they take no table lock of their own: run inside a block, they leave
 * nothing behind in that block's transaction, and `locksHeld()` shows only what the transaction
 * took itself.
 *
 * @module
 */
import pg from 'pg'
import type { QueryResult, QueryResultRow } from 'pg'
import { DatabaseImpl } from '../database'
import { requireDatabase } from '../registry'
import type { Database } from '../database'
import { InvalidOptionError, TransactionManagementError } from '../errors'
import { MAX_TIMEOUT_MS } from '../vocabulary'
import { checkOptionKeys } from './common'
import { blockedStatements, conflictingModes } from './modes'
import { LOCK_MODES, PG_LOCK_MODE_NAMES } from '../vocabulary'
import type { LockMode } from '../vocabulary'

// ---- Public types -------------------------------------------------------------------------------

/** Which database an insight function uses. */
export interface InsightOptions {
  /** The database: its alias, or the `Database` returned by `createDatabase()`. Default: `'default'`. */
  using?: string | Database
}

/** A relation (table, index, sequence, view, ...) named in a lock. */
export interface RelationRef {
  /** `pg_class.oid`. */
  readonly oid: number
  /** The schema, or `null` when the relation cannot be resolved (dropped, another database's, created by an uncommitted transaction). */
  readonly schema: string | null
  /** The relation's name, or `null` when it cannot be resolved. */
  readonly name: string | null
  /** `schema.name`, each part quoted when needed (`public."Order Lines"`), or `null` when it cannot be resolved. */
  readonly qualifiedName: string | null
  /** What it is: `'table'` (partitioned tables included), `'index'`, `'sequence'`, `'view'`, `'materialized view'`, `'toast table'`, `'foreign table'`, ...; `null` when unresolved. */
  readonly kind: string | null
}

/** An advisory lock key as `pg_advisory_lock` received it: a bigint, or a pair of int4. */
export type AdvisoryLockKeyInPgLocks = bigint | readonly [number, number]

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
  readonly advisoryKey: AdvisoryLockKeyInPgLocks | null
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
  /** One line for people: `table public.accounts`, `row (0,3) of public.accounts`, `advisory key 42`, `transaction 1234`, ... */
  readonly target: string
}

/** Options of {@link lockWaits}. */
export interface LockWaitsOptions extends InsightOptions {
  /** Longest query text returned, in characters (longer ones end with `…`). Default: `200`. */
  queryLength?: number
}

/** A session in the tree of {@link lockWaits}. */
export interface LockWaitNode {
  /** The backend's process id; `0` stands for a prepared transaction (`PREPARE TRANSACTION`). */
  readonly pid: number
  /** `'session'`, or `'prepared transaction'` for pid 0. */
  readonly kind: 'session' | 'prepared transaction'
  readonly applicationName: string | null
  /** The role the session is logged in as. */
  readonly user: string | null
  /** The client's address, `null` for unix sockets and when not visible. */
  readonly clientAddress: string | null
  /** `pg_stat_activity.state`: `'active'`, `'idle in transaction'`, `'idle in transaction (aborted)'`, ... (`null` when not visible to this role). */
  readonly state: string | null
  /** `pg_stat_activity.wait_event_type` / `wait_event`: `'Lock'` / `'relation'`, `'transactionid'`, `'tuple'`, `'advisory'`, or `'IPC'` / `'SafeSnapshot'`. */
  readonly waitEventType: string | null
  readonly waitEvent: string | null
  /** When its transaction began, and its age in milliseconds when sampled. */
  readonly transactionStartedAt: Date | null
  readonly transactionAgeMs: number | null
  /** The current (or, when idle, the last) statement, truncated to `queryLength`. */
  readonly query: string | null
  /** What it waits for: `'lock'` (a heavyweight lock, see `waitingFor`), `'safe snapshot'` (a `SERIALIZABLE READ ONLY DEFERRABLE` transaction waiting for a safe snapshot), or `null` for a root. */
  readonly waitKind: 'lock' | 'safe snapshot' | null
  /** The lock it waits for (not granted), when `waitKind` is `'lock'`. */
  readonly waitingFor: LockInfo | null
  /** When the wait began and how long it has lasted, in milliseconds (PostgreSQL 14+ for lock waits). */
  readonly waitStartedAt: Date | null
  readonly waitMs: number | null
  /** Every session it waits for (it appears under each of them). */
  readonly blockedBy: readonly number[]
  /** The sessions waiting for this one. */
  readonly blocking: readonly LockWaitNode[]
  /** `true` when this session already appears above on its own branch: a wait cycle (a deadlock the server has not broken yet); its children are not repeated. */
  readonly cycle: boolean
}

/** Options of {@link idleInTransaction}. */
export interface IdleInTransactionOptions extends InsightOptions {
  /** Only sessions idle for at least this long, in milliseconds (time since their last statement ended). Default: `0` (all). */
  olderThan?: number
  /** Longest query text returned, in characters (longer ones end with `…`). Default: `200`. */
  queryLength?: number
}

/** A session idle in a transaction, from {@link idleInTransaction}. */
export interface IdleSession {
  readonly pid: number
  readonly applicationName: string | null
  readonly user: string | null
  readonly clientAddress: string | null
  /** `'idle in transaction'` or `'idle in transaction (aborted)'` (an error happened; it holds no transaction lock any more, only session advisory locks). */
  readonly state: 'idle in transaction' | 'idle in transaction (aborted)'
  /** When its transaction began, and its age in milliseconds. */
  readonly transactionStartedAt: Date | null
  readonly transactionAgeMs: number | null
  /** When it became idle (`pg_stat_activity.state_change`), and for how long, in milliseconds. */
  readonly idleSince: Date
  readonly idleMs: number
  /** Its last statement, truncated to `queryLength`. */
  readonly query: string | null
  /** The locks it holds (granted), `pg_locks` order. */
  readonly locks: readonly LockInfo[]
}

/** Options of {@link explainLocks}. */
export interface ExplainLocksOptions extends InsightOptions {
  /**
   * How long the statement may wait for a lock another session holds, in milliseconds
   * (`lock_timeout`). Short on purpose: a statement waiting for a strong lock queues every later
   * statement on that table behind it. On expiry the statement fails with PostgreSQL's 55P03,
   * passed through. `0` waits without limit. Default: `1000`.
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
  /** For relation locks: the table lock modes that conflict with it (other transactions asking for them wait). Empty for other lock types. */
  readonly conflictsWith: readonly LockMode[]
  /** What other sessions cannot do while it is held: statements for relation locks (`['ALTER TABLE (most forms)', 'VACUUM FULL', ...]`), a sentence for other types. */
  readonly blocks: readonly string[]
}

/** A row lock found by `pgrowlocks`. */
export interface RowLockInfo {
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
   * `rowLocks: false`; `'failed'`: `pgrowlocks` could not read them (see `note`).
   */
  readonly source: 'pgrowlocks' | 'none' | 'not installed' | 'disabled' | 'failed'
  readonly rows: readonly RowLockInfo[]
  /** `true` when more than `maxRowLocks` rows were locked and only the first ones are listed. */
  readonly truncated: boolean
  /** One sentence for people about how the rows were (or were not) listed. */
  readonly note: string
}

/** The report of {@link explainLocks}. */
export interface LockReport {
  /** The statement, as given. */
  readonly sql: string
  /** Its command tag (`'UPDATE'`, `'ALTER TABLE'`, ...; the last one for several statements) and row count. */
  readonly command: string | null
  readonly rowCount: number | null
  /** The locks held after the statement, relations first (strongest mode first), then the others. The transaction's own `virtualxid` lock, held by every transaction, is left out. */
  readonly locks: readonly ExplainedLock[]
  /** Row locks (which `pg_locks` does not show). */
  readonly rowLocks: RowLocksReport
  /** Sentences for people: how to read the report, what was not listed. */
  readonly notes: readonly string[]
}

// ---- Shared helpers -----------------------------------------------------------------------------

const DEFAULT_QUERY_LENGTH = 200

function resolveUsing(using: unknown, subject: string): DatabaseImpl {
  if (using === undefined) return requireDatabase('default')
  if (typeof using === 'string' && using !== '') return requireDatabase(using)
  if (using instanceof DatabaseImpl) return using
  throw new InvalidOptionError('using', `Invalid option "using" for ${subject}: it must be the alias of a registered database (a non-empty string) or a Database returned by createDatabase().`)
}

function wholeNumber(value: unknown, field: string, subject: string, min: number, max: number, fallback: number, unit: string): number {
  if (value === undefined) return fallback
  if (typeof value === 'number' && Number.isInteger(value) && value >= min && value <= max) return value
  throw new InvalidOptionError(field, `Invalid option "${field}" for ${subject}: it must be a whole number of ${unit} from ${min} to ${max}.`)
}

function queryLengthOf(value: unknown, subject: string): number {
  return wholeNumber(value, 'queryLength', subject, 1, 1_000_000, DEFAULT_QUERY_LENGTH, 'characters')
}

/** Runs an inspection statement: in the current block of `db` when there is one, else autocommit. */
function inspect<R extends QueryResultRow>(db: DatabaseImpl, text: string, values: readonly unknown[]): Promise<QueryResult<R>> {
  return db.query<R>(text, values)
}

/** The current database's oid, without reading `pg_database` (which would take a lock). */
const MY_DATABASE = '(SELECT a.datid FROM pg_catalog.pg_stat_get_activity(pg_catalog.pg_backend_pid()) a)'

/**
 * `pg_locks` decoded, relations named. `pg_identify_object` resolves through the syscache, which
 * releases its catalog locks at once; relations of other databases are not looked up (their oids
 * mean nothing here).
 */
const LOCK_SELECT = `SELECT l.pid, l.locktype, l.relation, o.type AS rel_type, o.schema AS rel_schema, o.name AS rel_name,
       o.identity AS rel_identity, l.page, l.tuple, l.virtualxid, l.transactionid::text AS transactionid,
       l.classid, l.objid, l.objsubid, l.virtualtransaction, l.mode, l.granted, l.fastpath,
       (pg_catalog.to_jsonb(l) ->> 'waitstart')::timestamptz AS waitstart
  FROM pg_catalog.pg_lock_status() l
  LEFT JOIN LATERAL pg_catalog.pg_identify_object('pg_catalog.pg_class'::pg_catalog.regclass,
         CASE WHEN l.database = 0 OR l.database = ${MY_DATABASE} THEN l.relation END, 0) o ON true`

interface LockRow {
  pid: number | null
  locktype: string
  relation: number | null
  rel_type: string | null
  rel_schema: string | null
  rel_name: string | null
  rel_identity: string | null
  page: number | null
  tuple: number | null
  virtualxid: string | null
  transactionid: string | null
  classid: number | null
  objid: number | null
  objsubid: number | null
  virtualtransaction: string | null
  mode: string
  granted: boolean
  fastpath: boolean
  waitstart: Date | null
}

const MODE_BY_PG_NAME = new Map<string, LockMode>(LOCK_MODES.map((m) => [PG_LOCK_MODE_NAMES[m], m]))

function relationOf(row: LockRow): RelationRef | null {
  if (row.relation === null) return null
  const resolved = row.rel_identity !== null
  return Object.freeze({
    oid: row.relation,
    schema: resolved ? row.rel_schema : null,
    name: resolved ? row.rel_name : null,
    qualifiedName: row.rel_identity,
    kind: resolved ? row.rel_type : null,
  })
}

function decodeAdvisoryKey(classid: number, objid: number, objsubid: number): AdvisoryLockKeyInPgLocks | null {
  // postgres-facts §2.2: bigint keys are split high/low into classid/objid (objsubid 1); the
  // (int4, int4) form stores key1/key2 there as unsigned oids (objsubid 2).
  if (objsubid === 1) return BigInt.asIntN(64, (BigInt(classid) << 32n) | BigInt(objid))
  if (objsubid === 2) return Object.freeze([classid | 0, objid | 0] as const)
  return null
}

/** `advisory key 42`, `advisory key (1, 2)`. */
export function describeAdvisoryKey(key: AdvisoryLockKeyInPgLocks): string {
  return typeof key === 'bigint' ? `advisory key ${key}` : `advisory key (${key[0]}, ${key[1]})`
}

function relationText(relation: RelationRef | null): string {
  if (relation === null) return 'an unknown relation'
  return relation.qualifiedName ?? `relation with oid ${relation.oid}`
}

function targetOf(type: string, relation: RelationRef | null, row: LockRow, key: AdvisoryLockKeyInPgLocks | null): string {
  switch (type) {
    case 'relation':
      return `${relation?.kind ?? 'relation'} ${relationText(relation)}`
    case 'tuple':
      return `row (${row.page ?? '?'},${row.tuple ?? '?'}) of ${relationText(relation)}`
    case 'page':
      return `page ${row.page ?? '?'} of ${relationText(relation)}`
    case 'extend':
      return `extension of ${relationText(relation)}`
    case 'transactionid':
      return `transaction ${row.transactionid ?? '?'}`
    case 'virtualxid':
      return `virtual transaction ${row.virtualxid ?? '?'}`
    case 'advisory':
      return key === null ? `advisory lock (${row.classid ?? '?'}, ${row.objid ?? '?'}, ${row.objsubid ?? '?'})` : describeAdvisoryKey(key)
    default:
      return `${type} (${row.classid ?? '?'}, ${row.objid ?? '?'}, ${row.objsubid ?? '?'})`
  }
}

function lockInfoOf(row: LockRow): LockInfo {
  const relation = relationOf(row)
  const key = row.locktype === 'advisory' && row.classid !== null && row.objid !== null && row.objsubid !== null ? decodeAdvisoryKey(row.classid, row.objid, row.objsubid) : null
  const hasObject = row.locktype !== 'advisory' && row.classid !== null && row.objid !== null && row.objsubid !== null
  return Object.freeze({
    pid: row.pid,
    type: row.locktype,
    relation,
    page: row.page,
    tuple: row.tuple,
    transactionId: row.transactionid,
    virtualTransactionId: row.virtualxid,
    advisoryKey: key,
    object: hasObject ? Object.freeze({ classId: row.classid as number, objectId: row.objid as number, objectSubId: row.objsubid as number }) : null,
    mode: row.mode,
    lockMode: MODE_BY_PG_NAME.get(row.mode) ?? null,
    granted: row.granted,
    fastPath: row.fastpath,
    waitStartedAt: row.waitstart,
    target: targetOf(row.locktype, relation, row, key),
  })
}

function truncate(text: string | null, max: number): string | null {
  if (text === null) return null
  return text.length > max ? `${text.slice(0, Math.max(0, max - 1))}…` : text
}

interface ActivityRow {
  pid: number
  application_name: string | null
  usename: string | null
  client_addr: string | null
  state: string | null
  wait_event_type: string | null
  wait_event: string | null
  xact_start: Date | null
  xact_age_ms: number | null
  state_change: Date | null
  idle_ms: number | null
  query: string | null
}

/** `pg_stat_activity` columns, from the function (no lock on the view or on pg_authid / pg_database). */
const ACTIVITY_COLUMNS = `s.pid, s.application_name, pg_catalog.pg_get_userbyid(s.usesysid) AS usename, s.client_addr::text AS client_addr,
       s.state, s.wait_event_type, s.wait_event, s.xact_start,
       (extract(epoch FROM pg_catalog.clock_timestamp() - s.xact_start) * 1000)::float8 AS xact_age_ms,
       s.state_change, (extract(epoch FROM pg_catalog.clock_timestamp() - s.state_change) * 1000)::float8 AS idle_ms,
       s.query`

/**
 * Inside a block, `pg_stat_activity` data is a snapshot taken at its first use in the transaction;
 * clear it so that a second call sees the present.
 */
async function freshActivity(db: DatabaseImpl): Promise<void> {
  if (db.activeBlock() !== undefined) await inspect(db, 'SELECT pg_catalog.pg_stat_clear_snapshot()', [])
}

// ---- locksHeld ----------------------------------------------------------------------------------

/** The message of `locksHeld()` outside a block. */
const LOCKS_HELD_OUTSIDE_MESSAGE =
  'locksHeld() cannot be used outside of a transaction: call it inside an atomic() block to list the locks of that transaction (outside a block every statement is its own transaction, which holds nothing once it ends).'

/**
 * The locks the current transaction holds: every `pg_locks` row of its backend, decoded.
 *
 * 1. Must be called inside an `atomic()` block of the database (it runs in the block, after the
 *    block's statements); outside: `TransactionManagementError`, before anything is sent.
 * 2. Row locks are not in `pg_locks`: a row locked with `FOR UPDATE` shows as a `RowShareLock` on
 *    its table (and a `transactionid` lock), an updated row as a `RowExclusiveLock`.
 * 3. The inspection itself takes no lock, so nothing in the list comes from it. Every transaction
 *    holds an `ExclusiveLock` on its own `virtualxid`; a transaction that wrote (or locked rows)
 *    also holds one on its `transactionid`.
 * 4. Order: relations first (by name), then the other types.
 *
 * Default: `using: 'default'`.
 *
 * @example
 * ```ts
 * await atomic(async () => {
 *   await db.query('update accounts set balance = balance - 1 where id = $1', [1])
 *   for (const lock of await locksHeld()) console.log(lock.target, lock.mode)
 *   // table public.accounts RowExclusiveLock
 *   // index public.accounts_pkey RowExclusiveLock
 *   // transaction 1234 ExclusiveLock
 *   // virtual transaction 3/17 ExclusiveLock
 * })
 * ```
 */
export async function locksHeld(options?: InsightOptions): Promise<readonly LockInfo[]> {
  const o = checkOptionKeys(options, ['using'], '', 'locksHeld()')
  const db = resolveUsing(o['using'], 'locksHeld()')
  if (db.activeBlock() === undefined) throw new TransactionManagementError(LOCKS_HELD_OUTSIDE_MESSAGE)
  const result = await inspect<LockRow>(db, `${LOCK_SELECT} WHERE l.pid = pg_catalog.pg_backend_pid()`, [])
  return Object.freeze(sortLocks(result.rows.map(lockInfoOf)))
}

const TYPE_ORDER = ['relation', 'tuple', 'page', 'extend', 'advisory', 'transactionid', 'virtualxid']

const KIND_ORDER = ['table', 'view', 'materialized view', 'foreign table', 'sequence', 'index', 'toast table']

function rank(list: readonly string[], value: string | null | undefined): number {
  const i = value == null ? -1 : list.indexOf(value)
  return i === -1 ? list.length : i
}

/** Relations first (tables, then views, ..., indexes, TOAST), by name, strongest mode first; then the other types. */
function sortLocks<L extends LockInfo>(locks: L[]): L[] {
  const strength = (l: LockInfo): number => (l.lockMode === null ? -1 : LOCK_MODES.indexOf(l.lockMode))
  const name = (l: LockInfo): string => l.relation?.qualifiedName ?? l.target
  return locks.sort(
    (a, b) =>
      rank(TYPE_ORDER, a.type) - rank(TYPE_ORDER, b.type) ||
      rank(KIND_ORDER, a.relation?.kind) - rank(KIND_ORDER, b.relation?.kind) ||
      (name(a) < name(b) ? -1 : name(a) > name(b) ? 1 : 0) ||
      strength(b) - strength(a) ||
      (a.target < b.target ? -1 : a.target > b.target ? 1 : 0),
  )
}

// ---- lockWaits ----------------------------------------------------------------------------------

interface WaitRow {
  pid: number
  lock_blockers: number[]
  snapshot_blockers: number[]
}

/**
 * Who is waiting for whom in the current database, as a tree.
 *
 * 1. Sessions waiting for a lock are found with `pg_blocking_pids()`; sessions of a
 *    `SERIALIZABLE READ ONLY DEFERRABLE` transaction waiting for a safe snapshot with
 *    `pg_safe_snapshot_blocking_pids()`.
 * 2. Roots are the sessions that block others and wait for nobody (often `idle in transaction`:
 *    the transaction someone forgot to end). Each node's `blocking` lists the sessions waiting for
 *    it; a session waiting for several appears under each (`blockedBy` lists them all).
 * 3. A wait cycle (a deadlock PostgreSQL has not detected yet, within `deadlock_timeout`) has no
 *    root: its lowest pid is shown as one, and the repeated session is marked `cycle: true`.
 * 4. Query texts are truncated to `queryLength` characters. Sessions of other roles show
 *    `null` state and `<insufficient privilege>` as query unless the caller has
 *    `pg_read_all_stats`.
 * 5. Inside a block it runs in the block (and clears its statistics snapshot first, so a second
 *    call is not stale); outside, on a pooled connection.
 *
 * Returns `[]` when nobody waits. Default: `queryLength: 200`, `using: 'default'`.
 *
 * @example
 * ```ts
 * for (const root of await lockWaits()) {
 *   console.log(root.pid, root.state, root.query)              // 4711 idle in transaction update accounts ...
 *   for (const waiter of root.blocking) {
 *     console.log('  ', waiter.pid, waiter.waitingFor?.mode, waiter.waitingFor?.target, waiter.waitMs)
 *     // 4712 AccessExclusiveLock table public.accounts 5123.4
 *   }
 * }
 * ```
 */
export async function lockWaits(options?: LockWaitsOptions): Promise<readonly LockWaitNode[]> {
  const subject = 'lockWaits()'
  const o = checkOptionKeys(options, ['using', 'queryLength'], '', subject)
  const db = resolveUsing(o['using'], subject)
  const queryLength = queryLengthOf(o['queryLength'], subject)
  await freshActivity(db)
  const waits = await inspect<WaitRow>(
    db,
    `SELECT w.pid, w.lock_blockers, w.snapshot_blockers
       FROM (SELECT s.pid,
                    CASE WHEN s.wait_event_type = 'Lock' THEN pg_catalog.pg_blocking_pids(s.pid) ELSE '{}'::int[] END AS lock_blockers,
                    CASE WHEN s.wait_event = 'SafeSnapshot' THEN pg_catalog.pg_safe_snapshot_blocking_pids(s.pid) ELSE '{}'::int[] END AS snapshot_blockers
               FROM pg_catalog.pg_stat_get_activity(NULL) s
              WHERE s.datid = ${MY_DATABASE} AND (s.wait_event_type = 'Lock' OR s.wait_event = 'SafeSnapshot')) w
      WHERE pg_catalog.cardinality(w.lock_blockers) > 0 OR pg_catalog.cardinality(w.snapshot_blockers) > 0
      ORDER BY w.pid`,
    [],
  )
  if (waits.rows.length === 0) return Object.freeze([])
  const blockers = new Map<number, number[]>()
  const snapshotWaiters = new Set<number>()
  for (const row of waits.rows) {
    const all = [...new Set([...row.lock_blockers, ...row.snapshot_blockers])].sort((a, b) => a - b)
    blockers.set(row.pid, all)
    if (row.lock_blockers.length === 0) snapshotWaiters.add(row.pid)
  }
  const involved = new Set<number>()
  for (const [pid, by] of blockers) {
    involved.add(pid)
    for (const b of by) involved.add(b)
  }
  const pids = [...involved].filter((p) => p !== 0)
  const activity = await inspect<ActivityRow>(db, `SELECT ${ACTIVITY_COLUMNS} FROM pg_catalog.pg_stat_get_activity(NULL) s WHERE s.pid = ANY($1::int[])`, [pids])
  const waited = await inspect<LockRow & { wait_ms: number | null }>(
    db,
    `SELECT x.*, (extract(epoch FROM pg_catalog.clock_timestamp() - x.waitstart) * 1000)::float8 AS wait_ms
       FROM (${LOCK_SELECT} WHERE NOT l.granted AND l.pid = ANY($1::int[])) x`,
    [[...blockers.keys()]],
  )
  const sessions = new Map<number, ActivityRow>(activity.rows.map((r) => [r.pid, r]))
  const waitedLocks = new Map<number, { lock: LockInfo; waitMs: number | null }>()
  for (const row of waited.rows) {
    if (row.pid !== null && !waitedLocks.has(row.pid)) waitedLocks.set(row.pid, { lock: lockInfoOf(row), waitMs: row.wait_ms })
  }
  const children = new Map<number, number[]>()
  for (const [pid, by] of blockers) {
    for (const b of by) {
      const list = children.get(b) ?? []
      list.push(pid)
      children.set(b, list)
    }
  }
  for (const list of children.values()) list.sort((a, b) => a - b)

  // Expansion budget: a pathological wait graph (many sessions waiting for many) cannot explode.
  let budget = 10_000
  const reached = new Set<number>()
  const build = (pid: number, path: ReadonlySet<number>): LockWaitNode => {
    budget--
    reached.add(pid)
    const cycle = path.has(pid)
    const nextPath = new Set(path).add(pid)
    const kids = cycle || budget <= 0 ? [] : (children.get(pid) ?? []).map((c) => build(c, nextPath))
    return nodeOf(pid, cycle, kids)
  }
  const nodeOf = (pid: number, cycle: boolean, kids: LockWaitNode[]): LockWaitNode => {
    const s = sessions.get(pid)
    const waiting = blockers.get(pid)
    const lock = waitedLocks.get(pid)
    const waitKind = waiting === undefined ? null : snapshotWaiters.has(pid) ? 'safe snapshot' : 'lock'
    return Object.freeze({
      pid,
      kind: pid === 0 ? 'prepared transaction' : 'session',
      applicationName: s?.application_name ?? null,
      user: s?.usename ?? null,
      clientAddress: s?.client_addr ?? null,
      state: s?.state ?? null,
      waitEventType: s?.wait_event_type ?? null,
      waitEvent: s?.wait_event ?? null,
      transactionStartedAt: s?.xact_start ?? null,
      transactionAgeMs: s?.xact_age_ms ?? null,
      query: truncate(s?.query ?? null, queryLength),
      waitKind,
      waitingFor: waitKind === 'lock' ? (lock?.lock ?? null) : null,
      waitStartedAt: waitKind === 'lock' ? (lock?.lock.waitStartedAt ?? null) : null,
      waitMs: waitKind === 'lock' ? (lock?.waitMs ?? null) : null,
      blockedBy: Object.freeze(waiting ?? []),
      blocking: Object.freeze(kids),
      cycle,
    } satisfies LockWaitNode)
  }
  const roots: LockWaitNode[] = []
  const rootPids = [...involved].filter((p) => !blockers.has(p)).sort((a, b) => a - b)
  for (const pid of rootPids) roots.push(build(pid, new Set()))
  // Sessions not reachable from a root wait in a cycle: show each cycle from its lowest pid.
  for (const pid of [...blockers.keys()].sort((a, b) => a - b)) {
    if (!reached.has(pid)) roots.push(build(pid, new Set()))
  }
  return Object.freeze(roots)
}

// ---- idleInTransaction --------------------------------------------------------------------------

/**
 * The sessions of the current database that are idle inside a transaction: a transaction began,
 * a statement ran, and nothing has happened since. Such a session keeps its locks (and holds back
 * `VACUUM`); an `ALTER TABLE` waiting behind it makes every later query of the table wait too.
 *
 * 1. States `idle in transaction` and `idle in transaction (aborted)` (an error happened: it
 *    holds no transaction lock any more, but its connection is still unusable until it rolls
 *    back). The calling session is never listed.
 * 2. `olderThan` keeps the sessions idle for at least that many milliseconds, measured from
 *    their last statement (`state_change`), like `idle_in_transaction_session_timeout`.
 * 3. Each session comes with the locks it holds (granted) and its last query (truncated).
 * 4. Sorted by idle time, longest first. Sessions of other roles are only visible with
 *    `pg_read_all_stats` (or as superuser).
 *
 * Default: `olderThan: 0`, `queryLength: 200`, `using: 'default'`.
 *
 * @example
 * ```ts
 * for (const s of await idleInTransaction({ olderThan: 60_000 })) {
 *   console.log(s.pid, s.applicationName, `${Math.round(s.idleMs / 1000)} s`, s.query, s.locks.length)
 * }
 * ```
 */
export async function idleInTransaction(options?: IdleInTransactionOptions): Promise<readonly IdleSession[]> {
  const subject = 'idleInTransaction()'
  const o = checkOptionKeys(options, ['using', 'olderThan', 'queryLength'], '', subject)
  const db = resolveUsing(o['using'], subject)
  const olderThan = o['olderThan']
  if (olderThan !== undefined && !(typeof olderThan === 'number' && Number.isInteger(olderThan) && olderThan >= 0 && olderThan <= Number.MAX_SAFE_INTEGER)) {
    throw new InvalidOptionError('olderThan', `Invalid option "olderThan" for ${subject}: it must be a whole number of milliseconds of at least 0.`)
  }
  const queryLength = queryLengthOf(o['queryLength'], subject)
  await freshActivity(db)
  const activity = await inspect<ActivityRow>(
    db,
    `SELECT ${ACTIVITY_COLUMNS}
       FROM pg_catalog.pg_stat_get_activity(NULL) s
      WHERE s.datid = ${MY_DATABASE}
        AND s.state IN ('idle in transaction', 'idle in transaction (aborted)')
        AND s.pid <> pg_catalog.pg_backend_pid()
        AND s.state_change <= pg_catalog.clock_timestamp() - $1::float8 * interval '1 millisecond'
      ORDER BY s.state_change, s.pid`,
    [olderThan ?? 0],
  )
  if (activity.rows.length === 0) return Object.freeze([])
  const locks = await inspect<LockRow>(db, `${LOCK_SELECT} WHERE l.granted AND l.pid = ANY($1::int[])`, [activity.rows.map((r) => r.pid)])
  const byPid = new Map<number, LockInfo[]>()
  for (const row of locks.rows) {
    if (row.pid === null) continue
    const list = byPid.get(row.pid) ?? []
    list.push(lockInfoOf(row))
    byPid.set(row.pid, list)
  }
  return Object.freeze(
    activity.rows.map((s) =>
      Object.freeze({
        pid: s.pid,
        applicationName: s.application_name,
        user: s.usename,
        clientAddress: s.client_addr,
        state: s.state as IdleSession['state'],
        transactionStartedAt: s.xact_start,
        transactionAgeMs: s.xact_age_ms,
        idleSince: s.state_change as Date,
        idleMs: s.idle_ms ?? 0,
        query: truncate(s.query, queryLength),
        locks: Object.freeze(sortLocks(byPid.get(s.pid) ?? [])),
      } satisfies IdleSession),
    ),
  )
}

// ---- explainLocks: refusals ---------------------------------------------------------------------

interface Token {
  readonly kind: 'word' | 'string' | 'other'
  /** Upper case for words. */
  readonly text: string
  /** Parenthesis depth within the statement. */
  readonly depth: number
}

/**
 * Splits SQL into statements of tokens: words (upper case), string literals and other symbols.
 * Quoted identifiers, dollar-quoted bodies and comments are skipped; `;` splits only at
 * parenthesis depth 0 and outside `BEGIN ATOMIC ... END` bodies.
 * @internal
 */
export function tokenizeStatements(sql: string): Token[][] {
  const statements: Token[][] = []
  let current: Token[] = []
  let depth = 0
  let atomicDepth = 0
  let i = 0
  const n = sql.length
  const isWordStart = (c: string): boolean => /[A-Za-z_\u0080-\uffff]/.test(c)
  const isWordChar = (c: string): boolean => /[A-Za-z0-9_$\u0080-\uffff]/.test(c)
  while (i < n) {
    const c = sql[i] as string
    const next = sql[i + 1]
    if (/\s/.test(c)) {
      i++
    } else if (c === '-' && next === '-') {
      const nl = sql.indexOf('\n', i)
      i = nl === -1 ? n : nl + 1
    } else if (c === '/' && next === '*') {
      let nest = 1
      i += 2
      while (i < n && nest > 0) {
        if (sql[i] === '/' && sql[i + 1] === '*') { nest++; i += 2 }
        else if (sql[i] === '*' && sql[i + 1] === '/') { nest--; i += 2 }
        else i++
      }
    } else if (c === "'") {
      const prev = current[current.length - 1]
      const escapes = i > 0 && /[eE]/.test(sql[i - 1] as string) && prev?.kind === 'word' && prev.text === 'E'
      if (escapes) current.pop()
      i++
      while (i < n) {
        const d = sql[i]
        if (d === "'") {
          if (sql[i + 1] === "'") i += 2
          else break
        } else if (escapes && d === '\\') i += 2
        else i++
      }
      i++
      current.push({ kind: 'string', text: "'", depth })
    } else if (c === '"') {
      const end = sql.indexOf('"', i + 1)
      i = end === -1 ? n : end + 1
      current.push({ kind: 'other', text: '"', depth })
    } else if (c === '$' && (i === 0 || !isWordChar(sql[i - 1] as string))) {
      const m = /^\$([A-Za-z_][A-Za-z_0-9]*)?\$/.exec(sql.slice(i, i + 64))
      if (m === null) {
        i++
        current.push({ kind: 'other', text: '$', depth })
        continue
      }
      const end = sql.indexOf(m[0], i + m[0].length)
      i = end === -1 ? n : end + m[0].length
      current.push({ kind: 'string', text: '$$', depth })
    } else if (isWordStart(c)) {
      let j = i + 1
      while (j < n && isWordChar(sql[j] as string)) j++
      const word = sql.slice(i, j).toUpperCase()
      i = j
      const prev = current[current.length - 1]
      if (word === 'ATOMIC' && prev?.kind === 'word' && prev.text === 'BEGIN' && current.length > 1) atomicDepth++
      else if (atomicDepth > 0 && word === 'CASE') atomicDepth++
      else if (atomicDepth > 0 && word === 'END') atomicDepth--
      current.push({ kind: 'word', text: word, depth })
    } else if (c === ';' && depth === 0 && atomicDepth === 0) {
      if (current.length > 0) statements.push(current)
      current = []
      i++
    } else {
      if (c === '(') depth++
      else if (c === ')') depth = Math.max(0, depth - 1)
      current.push({ kind: 'other', text: c, depth })
      i++
    }
  }
  if (current.length > 0) statements.push(current)
  return statements
}

type RefusalKind = 'transaction control' | 'no transaction block' | 'irreversible'

function classify(tokens: readonly Token[]): { kind: RefusalKind; command: string; why?: string } | undefined {
  const words = tokens.filter((t) => t.kind === 'word').map((t) => t.text)
  const top = tokens.filter((t) => t.kind === 'word' && t.depth === 0).map((t) => t.text)
  const [w0, w1, w2] = words
  if (w0 === undefined) return undefined
  const control = ['BEGIN', 'START', 'COMMIT', 'END', 'ROLLBACK', 'ABORT', 'SAVEPOINT', 'RELEASE']
  if (control.includes(w0)) {
    const command = w0 === 'START' ? 'START TRANSACTION' : (w0 === 'COMMIT' || w0 === 'ROLLBACK') && w1 === 'PREPARED' ? `${w0} PREPARED` : w0
    return { kind: 'transaction control', command }
  }
  if (w0 === 'PREPARE' && w1 === 'TRANSACTION') return { kind: 'transaction control', command: 'PREPARE TRANSACTION' }
  if (w0 === 'VACUUM') return { kind: 'no transaction block', command: 'VACUUM' }
  if ((w0 === 'CREATE' || w0 === 'DROP') && (w1 === 'DATABASE' || w1 === 'TABLESPACE')) return { kind: 'no transaction block', command: `${w0} ${w1}` }
  if (w0 === 'ALTER' && w1 === 'SYSTEM') return { kind: 'no transaction block', command: 'ALTER SYSTEM' }
  if (w0 === 'ALTER' && w1 === 'DATABASE' && top.some((w, i) => w === 'SET' && top[i + 1] === 'TABLESPACE')) {
    return { kind: 'no transaction block', command: 'ALTER DATABASE ... SET TABLESPACE' }
  }
  if (w0 === 'CREATE') {
    const at = w1 === 'INDEX' ? 1 : w1 === 'UNIQUE' && w2 === 'INDEX' ? 2 : -1
    if (at !== -1 && words[at + 1] === 'CONCURRENTLY') return { kind: 'no transaction block', command: 'CREATE INDEX CONCURRENTLY' }
  }
  if (w0 === 'DROP' && w1 === 'INDEX' && w2 === 'CONCURRENTLY') return { kind: 'no transaction block', command: 'DROP INDEX CONCURRENTLY' }
  if (w0 === 'REINDEX') {
    if (top.includes('CONCURRENTLY')) return { kind: 'no transaction block', command: 'REINDEX ... CONCURRENTLY' }
    if (top[1] === 'DATABASE' || top[1] === 'SYSTEM') return { kind: 'no transaction block', command: `REINDEX ${top[1]}` }
  }
  if (w0 === 'ALTER' && w1 === 'TABLE' && top.includes('DETACH') && top.includes('CONCURRENTLY')) {
    return { kind: 'no transaction block', command: 'ALTER TABLE ... DETACH PARTITION ... CONCURRENTLY' }
  }
  if (w0 === 'CLUSTER' && top.filter((w) => w !== 'CLUSTER' && w !== 'VERBOSE').length === 0) return { kind: 'no transaction block', command: 'CLUSTER (without a table)' }
  if (w0 === 'DISCARD' && w1 === 'ALL') return { kind: 'no transaction block', command: 'DISCARD ALL' }
  if (w0 === 'CHECKPOINT') return { kind: 'irreversible', command: 'CHECKPOINT', why: 'a checkpoint is written at once and is not part of any transaction' }
  if ((w0 === 'CREATE' || w0 === 'ALTER' || w0 === 'DROP') && w1 === 'SUBSCRIPTION') {
    return { kind: 'irreversible', command: `${w0} SUBSCRIPTION`, why: 'it can act on the publisher (replication slots), which no rollback here undoes' }
  }
  if (w0 === 'COPY') {
    if (top.includes('PROGRAM')) return { kind: 'irreversible', command: 'COPY ... PROGRAM', why: 'the program runs on the server and its effects are not undone' }
    const to = tokens.findIndex((t) => t.kind === 'word' && t.depth === 0 && t.text === 'TO')
    if (to !== -1 && tokens[to + 1]?.kind === 'string') return { kind: 'irreversible', command: 'COPY ... TO a file', why: 'the file is written on the server and is not removed by ROLLBACK' }
  }
  return undefined
}

/**
 * Throws when `sql` contains a statement `explainLocks()` must not run: transaction control,
 * statements that cannot run in a transaction block, statements whose effect a rollback does not
 * undo. Nothing is sent. @internal
 */
export function refuseUnexplainable(sql: string): void {
  for (const tokens of tokenizeStatements(sql)) {
    const refusal = classify(tokens)
    if (refusal === undefined) continue
    switch (refusal.kind) {
      case 'transaction control':
        throw new TransactionManagementError(
          `explainLocks() refuses ${refusal.command}: it runs the statement in a transaction of its own and always rolls it back, so transaction control cannot be part of it. Pass only the statement whose locks you want to see. Nothing was sent to the server.`,
        )
      case 'no transaction block':
        throw new TransactionManagementError(
          `explainLocks() cannot explain ${refusal.command}: it cannot run inside a transaction block (PostgreSQL refuses it with SQLSTATE 25001), so it could not be rolled back afterwards. Nothing was sent to the server.`,
        )
      case 'irreversible':
        throw new TransactionManagementError(
          `explainLocks() refuses ${refusal.command}: rolling back would not undo it (${refusal.why ?? 'its effect is outside the transaction'}). Nothing was sent to the server.`,
        )
    }
  }
}

// ---- explainLocks -------------------------------------------------------------------------------

const ROW_BLOCKS: Readonly<Record<string, readonly string[]>> = Object.freeze({
  'for key share': ['SELECT ... FOR UPDATE', 'DELETE', 'UPDATE of a key column'],
  'for share': ['SELECT ... FOR UPDATE / FOR NO KEY UPDATE', 'UPDATE', 'DELETE'],
  'for no key update': ['SELECT ... FOR UPDATE / FOR NO KEY UPDATE / FOR SHARE', 'UPDATE', 'DELETE'],
  'no key update': ['SELECT ... FOR UPDATE / FOR NO KEY UPDATE / FOR SHARE', 'UPDATE', 'DELETE'],
  'for update': ['SELECT ... FOR UPDATE / FOR NO KEY UPDATE / FOR SHARE / FOR KEY SHARE', 'UPDATE', 'DELETE', 'INSERT or UPDATE of a row referencing it by foreign key'],
  update: ['SELECT ... FOR UPDATE / FOR NO KEY UPDATE / FOR SHARE / FOR KEY SHARE', 'UPDATE', 'DELETE', 'INSERT or UPDATE of a row referencing it by foreign key'],
})

function rowBlocks(modes: readonly string[]): readonly string[] {
  const out = new Set<string>()
  for (const m of modes) for (const b of ROW_BLOCKS[m] ?? []) out.add(b)
  return Object.freeze([...out])
}

function explained(lock: LockInfo): ExplainedLock {
  let conflictsWith: readonly LockMode[] = []
  let blocks: readonly string[] = []
  if (lock.relation !== null && lock.type === 'relation' && lock.lockMode !== null) {
    conflictsWith = conflictingModes(lock.lockMode)
    blocks = blockedStatements(lock.lockMode)
  } else if (lock.type === 'advisory') {
    blocks = [lock.mode === 'ShareLock' ? 'exclusive advisory locks on the same key' : 'advisory locks on the same key (shared or exclusive)']
  } else if (lock.type === 'transactionid') {
    blocks = ['transactions waiting to lock or change the rows this one changed or locked (until it ends)']
  }
  return Object.freeze({ ...lock, conflictsWith: Object.freeze([...conflictsWith]), blocks: Object.freeze([...blocks]) })
}

const EXPLAIN_KEYS = ['using', 'lockTimeout', 'statementTimeout', 'rowLocks', 'maxRowLocks'] as const

/** A connection of its own (never a pooled one: the pool may be exhausted by the caller's blocks). */
async function openClient(db: DatabaseImpl): Promise<pg.Client> {
  const pool = db.realPool as pg.Pool & { Client?: typeof pg.Client; options?: pg.PoolConfig }
  const Client = pool.Client ?? pg.Client
  const options = pool.options ?? {}
  const client = new Client({ ...options, connectionTimeoutMillis: options.connectionTimeoutMillis || 10_000 })
  client.on('error', () => {
    // A failing query rejects with the error; without a listener a dropped socket would crash.
  })
  await client.connect()
  return client
}

/** Ends a connection; when its state is unknown, destroys the socket so that the server rolls back at once. */
async function closeClient(client: pg.Client, destroy: boolean): Promise<void> {
  if (destroy) {
    const stream = (client as unknown as { connection?: { stream?: { destroy?: () => void } } }).connection?.stream
    stream?.destroy?.()
  }
  try {
    await client.end()
  } catch {
    // Already closed: nothing left to release.
  }
}

interface ExplainSettings {
  readonly lockTimeout: number
  readonly statementTimeout: number
  readonly rowLocks: boolean
  readonly maxRowLocks: number
}

/**
 * Runs `sql` in a transaction that is always rolled back, and reports the locks it took.
 *
 * **It executes the statement.** Everything inside the database is undone by the rollback, but not
 * what escapes the transaction: sequence values taken by `nextval()` (and serial / identity
 * columns), functions with outside effects (`dblink`, `pg_terminate_backend()`, writing files),
 * and the time the statement held locks other sessions waited for. (`NOTIFY` is transactional:
 * nothing is sent.) Point it at a copy of production when in doubt.
 *
 * 1. Refused before anything is sent (`TransactionManagementError`): transaction control (`BEGIN`,
 *    `COMMIT`, `SAVEPOINT`, `PREPARE TRANSACTION`, ...), statements that cannot run in a
 *    transaction block (`VACUUM`, `CREATE INDEX CONCURRENTLY`, `DROP INDEX CONCURRENTLY`,
 *    `REINDEX ... CONCURRENTLY`, `REINDEX DATABASE/SYSTEM`, `CREATE/DROP DATABASE`,
 *    `CREATE/DROP TABLESPACE`, `ALTER SYSTEM`, `DETACH PARTITION ... CONCURRENTLY`, `CLUSTER`
 *    without a table, `DISCARD ALL`) and statements a rollback does not undo (`CHECKPOINT`,
 *    `COPY ... PROGRAM`, `COPY ... TO` a server file, subscriptions). A 25001 error from the
 *    server (a statement not recognised here) becomes a `TransactionManagementError` too.
 * 2. It runs on a connection of its own, outside any block and its pool: `BEGIN`, `SET LOCAL`
 *    `lock_timeout` and `statement_timeout`, the statement (with `params` as `$1, $2, ...`),
 *    the inspection of `pg_locks` for that connection, then `ROLLBACK` in a `finally`. The
 *    connection is closed afterwards (destroyed if `ROLLBACK` failed), so nothing the statement
 *    did to the session (session advisory locks, prepared statements) survives.
 * 3. The report lists relation locks (tables, their indexes, sequences, ...) with the modes
 *    they conflict with and the statements they block, then the other locks (advisory keys,
 *    the `transactionid` of a statement that wrote). Row locks are not in `pg_locks`: with the
 *    `pgrowlocks` extension installed they are read from a second connection while the
 *    transaction is still open; otherwise the report says they are not listed.
 * 4. Errors of the statement itself (syntax, constraint, lock timeout 55P03) are passed through
 *    unchanged after the rollback.
 *
 * Defaults: `lockTimeout: 1000`, `statementTimeout: 30000`, `rowLocks: true`, `maxRowLocks: 100`,
 * `using: 'default'`.
 *
 * @example
 * ```ts
 * const report = await explainLocks('alter table accounts add column note text')
 * for (const lock of report.locks) console.log(lock.target, lock.mode, 'blocks', lock.blocks.join(', '))
 * // table public.accounts AccessExclusiveLock blocks SELECT, SELECT ... FOR UPDATE / ..., INSERT, ...
 * ```
 */
export async function explainLocks(sql: string, params?: readonly unknown[], options?: ExplainLocksOptions): Promise<LockReport> {
  const subject = 'explainLocks()'
  if (typeof sql !== 'string' || tokenizeStatements(sql).length === 0) {
    throw new InvalidOptionError('sql', `${subject} needs the SQL statement to explain, as a non-empty string.`)
  }
  if (params !== undefined && !Array.isArray(params)) {
    throw new InvalidOptionError('params', `Invalid "params" for ${subject}: it must be an array of values for $1, $2, ... (or undefined).`)
  }
  const o = checkOptionKeys(options, EXPLAIN_KEYS, '', subject)
  const db = resolveUsing(o['using'], subject)
  const rowLocks = o['rowLocks']
  if (rowLocks !== undefined && typeof rowLocks !== 'boolean') throw new InvalidOptionError('rowLocks', `Invalid option "rowLocks" for ${subject}: it must be true or false.`)
  const settings: ExplainSettings = {
    lockTimeout: wholeNumber(o['lockTimeout'], 'lockTimeout', subject, 0, MAX_TIMEOUT_MS, 1000, 'milliseconds'),
    statementTimeout: wholeNumber(o['statementTimeout'], 'statementTimeout', subject, 0, MAX_TIMEOUT_MS, 30_000, 'milliseconds'),
    rowLocks: rowLocks ?? true,
    maxRowLocks: wholeNumber(o['maxRowLocks'], 'maxRowLocks', subject, 1, 1_000_000, 100, 'rows'),
  }
  refuseUnexplainable(sql)

  const client = await openClient(db)
  let rollbackFailed = false
  try {
    await client.query(`BEGIN; SET LOCAL lock_timeout = ${settings.lockTimeout}; SET LOCAL statement_timeout = ${settings.statementTimeout}`)
    let result: QueryResult | QueryResult[]
    try {
      result = await client.query(params === undefined ? sql : { text: sql, values: params as unknown[] })
    } catch (error) {
      if ((error as { code?: unknown }).code === '25001') {
        throw new TransactionManagementError(
          `explainLocks() cannot explain this statement: it cannot run inside a transaction block (PostgreSQL: "${(error as Error).message}"), so it could not be rolled back afterwards. Nothing was changed.`,
          { cause: error },
        )
      }
      throw error
    }
    const last = Array.isArray(result) ? result[result.length - 1] : result
    const inspected = await client.query<LockRow & { me: number }>(
      `SELECT x.*, pg_catalog.pg_backend_pid() AS me FROM (${LOCK_SELECT} WHERE l.pid = pg_catalog.pg_backend_pid()) x`,
    )
    const own = inspected.rows.filter((r) => !(r.locktype === 'virtualxid' && r.virtualxid === r.virtualtransaction))
    const locks = sortLocks(own.map((r) => explained(lockInfoOf(r))))
    // The own virtualxid lock is always there, so the inspection returns at least one row.
    const pid = inspected.rows[0]?.me ?? 0
    const rows = await rowLocksOf(db, locks, pid, settings)
    return Object.freeze({
      sql,
      command: last?.command ?? null,
      rowCount: last?.rowCount ?? null,
      locks: Object.freeze(locks),
      rowLocks: rows,
      notes: Object.freeze(notesFor(locks, rows)),
    })
  } finally {
    try {
      await client.query('ROLLBACK')
    } catch {
      rollbackFailed = true
    }
    await closeClient(client, rollbackFailed)
  }
}

/** Tables in which the statement may have locked or changed rows: RowShareLock / RowExclusiveLock, not AccessExclusiveLock. */
function rowCandidates(locks: readonly ExplainedLock[]): RelationRef[] {
  const byOid = new Map<number, { relation: RelationRef; modes: Set<string> }>()
  for (const l of locks) {
    if (l.type !== 'relation' || l.relation === null || l.relation.kind !== 'table' || l.relation.qualifiedName === null) continue
    const entry = byOid.get(l.relation.oid) ?? { relation: l.relation, modes: new Set<string>() }
    entry.modes.add(l.mode)
    byOid.set(l.relation.oid, entry)
  }
  return [...byOid.values()]
    .filter((e) => (e.modes.has('RowShareLock') || e.modes.has('RowExclusiveLock')) && !e.modes.has('AccessExclusiveLock'))
    .map((e) => e.relation)
}

async function rowLocksOf(db: DatabaseImpl, locks: readonly ExplainedLock[], pid: number, settings: ExplainSettings): Promise<RowLocksReport> {
  const candidates = rowCandidates(locks)
  const report = (source: RowLocksReport['source'], rows: RowLockInfo[], truncated: boolean, note: string): RowLocksReport =>
    Object.freeze({ source, rows: Object.freeze(rows), truncated, note })
  if (candidates.length === 0) return report('none', [], false, 'The statement took no RowShareLock or RowExclusiveLock on a table, so it locked no rows.')
  const names = candidates.map((c) => c.qualifiedName).join(', ')
  if (!settings.rowLocks) return report('disabled', [], false, `Row locks are not listed (rowLocks: false); the RowShareLock / RowExclusiveLock on ${names} shows the statement locked or changed rows there.`)
  // A second session sees the rows this transaction changed or locked as locked (its own session
  // would not see the rows it updated or deleted); the transaction stays open meanwhile.
  let observer: pg.Client | undefined
  try {
    observer = await openClient(db)
    await observer.query(`SET lock_timeout = 1000; SET statement_timeout = ${settings.statementTimeout}`)
    const ext = await observer.query<{ schema: string }>("SELECT n.nspname AS schema FROM pg_catalog.pg_extension e JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'pgrowlocks'")
    const schema = ext.rows[0]?.schema
    if (schema === undefined) {
      return report(
        'not installed',
        [],
        false,
        `Row locks are not kept in pg_locks and the pgrowlocks extension is not installed, so they are not listed; the RowShareLock / RowExclusiveLock on ${names} shows the statement locked or changed rows there (CREATE EXTENSION pgrowlocks lists them).`,
      )
    }
    const plain = await observer.query<{ oid: number }>("SELECT c.oid::int AS oid FROM pg_catalog.pg_class c WHERE c.oid = ANY($1::oid[]) AND c.relkind = 'r'", [candidates.map((c) => c.oid)])
    const heap = new Set(plain.rows.map((r) => r.oid))
    const rows: RowLockInfo[] = []
    let truncated = false
    for (const relation of candidates) {
      if (!heap.has(relation.oid)) continue
      const left = settings.maxRowLocks - rows.length
      const found = await observer.query<{ ctid: string; modes: string[] }>(
        `SELECT r.locked_row::text AS ctid, r.modes FROM ${pg.escapeIdentifier(schema)}.pgrowlocks($1) r WHERE $2::int = ANY(r.pids) ORDER BY r.locked_row LIMIT $3`,
        [relation.qualifiedName, pid, left + 1],
      )
      for (const r of found.rows.slice(0, left)) {
        const modes = Object.freeze(r.modes.map((m) => m.toLowerCase()))
        rows.push(Object.freeze({ relation, ctid: r.ctid, modes, blocks: rowBlocks(modes) }))
      }
      if (found.rows.length > left) {
        truncated = true
        break
      }
    }
    const note =
      rows.length === 0
        ? `pgrowlocks found no row locked by the statement in ${names} (an INSERT locks no existing row: new rows stay invisible to others until commit).`
        : `Row locks listed by pgrowlocks${truncated ? `, the first ${settings.maxRowLocks} only` : ''}; pg_locks shows them only as the RowShareLock / RowExclusiveLock on ${names}.`
    return report('pgrowlocks', rows, truncated, note)
  } catch (error) {
    return report('failed', [], false, `Row locks could not be listed with pgrowlocks (${error instanceof Error ? error.message : String(error)}); the RowShareLock / RowExclusiveLock on ${names} shows the statement locked or changed rows there.`)
  } finally {
    if (observer !== undefined) await closeClient(observer, false)
  }
}

function notesFor(locks: readonly ExplainedLock[], rows: RowLocksReport): string[] {
  const notes: string[] = []
  if (locks.length === 0) notes.push('The statement holds no lock other than its own virtual transaction id.')
  const strongest = locks.find((l) => l.type === 'relation' && l.lockMode === 'access exclusive')
  if (strongest !== undefined) {
    notes.push(`AccessExclusiveLock on ${strongest.relation?.qualifiedName ?? 'a relation'} blocks every other statement on it, even SELECT, until the transaction ends; while it waits for the lock, statements queued behind it wait too.`)
  }
  const sequences = locks.filter((l) => l.type === 'relation' && l.relation?.kind === 'sequence' && l.mode === 'RowExclusiveLock')
  if (sequences.length > 0) {
    notes.push(`${sequences.map((l) => l.relation?.qualifiedName ?? 'a sequence').join(', ')} ${sequences.length === 1 ? 'was' : 'were'} used: the values nextval() took are not given back by the rollback.`)
  }
  if (rows.source !== 'none') notes.push(rows.note)
  notes.push('The statement was executed and rolled back: changes outside the transaction (sequence values, external side effects) were not undone.')
  return notes
}
