/**
 * Reading `pg_locks`: the rows of the queries in `../sql/insight` decoded into {@link LockInfo}
 * (relations named, advisory keys decoded, modes in `LOCK TABLE` words), in one order.
 *
 * @module
 */
import type { ResolvedAdvisoryKey } from '../locks/advisory'
import { LOCK_MODES, PG_LOCK_MODE_NAMES } from '../vocabulary'
import type { LockMode } from '../vocabulary'
import type { LockInfo, RelationRef } from './types'

/** A row of the `pg_locks` queries. @internal */
export interface LockRow {
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

/** A row of the `pg_stat_activity` queries. @internal */
export interface ActivityRow {
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

function decodeAdvisoryKey(classid: number, objid: number, objsubid: number): ResolvedAdvisoryKey | null {
  // bigint keys are split high/low into classid/objid (objsubid 1); the (int4, int4) form stores
  // key1/key2 there as unsigned oids (objsubid 2).
  if (objsubid === 1) return BigInt.asIntN(64, (BigInt(classid) << 32n) | BigInt(objid))
  if (objsubid === 2) return Object.freeze([classid | 0, objid | 0] as const)
  return null
}

/**
 * An advisory lock key for people: `advisory key 42`, `advisory key (1, 2)` (the two-key form).
 *
 * @example
 * ```ts
 * describeAdvisoryKey(-1n)    // 'advisory key -1'
 * describeAdvisoryKey([3, 4]) // 'advisory key (3, 4)'
 * ```
 */
export function describeAdvisoryKey(key: ResolvedAdvisoryKey): string {
  return typeof key === 'bigint' ? `advisory key ${key}` : `advisory key (${key[0]}, ${key[1]})`
}

function relationText(relation: RelationRef | null): string {
  if (relation === null) return 'an unknown relation'
  return relation.qualifiedName ?? `relation with oid ${relation.oid}`
}

function targetOf(type: string, relation: RelationRef | null, row: LockRow, key: ResolvedAdvisoryKey | null): string {
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
      return key === null
        ? `advisory lock (${row.classid ?? '?'}, ${row.objid ?? '?'}, ${row.objsubid ?? '?'})`
        : describeAdvisoryKey(key)
    default:
      return `${type} (${row.classid ?? '?'}, ${row.objid ?? '?'}, ${row.objsubid ?? '?'})`
  }
}

/** One `pg_locks` row, decoded and frozen. @internal */
export function lockInfoOf(row: LockRow): LockInfo {
  const relation = relationOf(row)
  const key =
    row.locktype === 'advisory' && row.classid !== null && row.objid !== null && row.objsubid !== null
      ? decodeAdvisoryKey(row.classid, row.objid, row.objsubid)
      : null
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
    object: hasObject
      ? Object.freeze({
          classId: row.classid as number,
          objectId: row.objid as number,
          objectSubId: row.objsubid as number,
        })
      : null,
    mode: row.mode,
    lockMode: MODE_BY_PG_NAME.get(row.mode) ?? null,
    granted: row.granted,
    fastPath: row.fastpath,
    waitStartedAt: row.waitstart,
    target: targetOf(row.locktype, relation, row, key),
  })
}

const TYPE_ORDER = ['relation', 'tuple', 'page', 'extend', 'advisory', 'transactionid', 'virtualxid']

const KIND_ORDER = ['table', 'view', 'materialized view', 'foreign table', 'sequence', 'index', 'toast table']

function rank(list: readonly string[], value: string | null | undefined): number {
  const i = value == null ? -1 : list.indexOf(value)
  return i === -1 ? list.length : i
}

/**
 * Relations first (tables, then views, ..., indexes, TOAST), by name, strongest mode first; then the other types.
 * @internal
 */
export function sortLocks<L extends LockInfo>(locks: L[]): L[] {
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

/** `text` cut to `max` characters, the last one `…` when cut. @internal */
export function truncate(text: string | null, max: number): string | null {
  if (text === null) return null
  return text.length > max ? `${text.slice(0, Math.max(0, max - 1))}…` : text
}
