/**
 * `lockWaits()`: who is waiting for whom, as a tree.
 *
 * @module
 */
import { ACTIVITY_OF_SESSIONS_SQL, AWAITED_LOCKS_SQL, WAITING_SESSIONS_SQL } from '../sql/insight'
import {
  INSIGHT_DEFAULTS,
  freshActivity,
  insightDatabase,
  insightFields,
  inspect,
  parseInsightOptions,
} from './options'
import { lockInfoOf, truncate } from './pg-locks'
import type { ActivityRow, LockRow } from './pg-locks'
import type { LockInfo, LockWaitNode, LockWaitsOptions } from './types'

interface WaitRow {
  pid: number
  lock_blockers: number[]
  snapshot_blockers: number[]
}

/**
 * Who is waiting for whom in the database, as a tree.
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
 * 5. Inside a block of the database it runs in the block (and clears its statistics snapshot
 *    first, so a second call is not stale); outside, on a pooled connection.
 *
 * Returns `[]` when nobody waits. Default: `queryLength: 200`; the database of the innermost
 * active block, else `'default'`.
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
  const o = parseInsightOptions(
    { using: insightFields.using, queryLength: insightFields.queryLength },
    options,
    'lockWaits()',
  )
  const db = insightDatabase(o.using)
  const queryLength = o.queryLength ?? INSIGHT_DEFAULTS.queryLength
  await freshActivity(db)
  const waits = await inspect<WaitRow>(db, WAITING_SESSIONS_SQL)
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
  const activity = await inspect<ActivityRow>(db, ACTIVITY_OF_SESSIONS_SQL, [pids])
  const waited = await inspect<LockRow & { wait_ms: number | null }>(db, AWAITED_LOCKS_SQL, [[...blockers.keys()]])
  const sessions = new Map<number, ActivityRow>(activity.rows.map((r) => [r.pid, r]))
  const waitedLocks = new Map<number, { lock: LockInfo; waitMs: number | null }>()
  for (const row of waited.rows) {
    if (row.pid !== null && !waitedLocks.has(row.pid))
      waitedLocks.set(row.pid, { lock: lockInfoOf(row), waitMs: row.wait_ms })
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
  const roots: LockWaitNode[] = []
  const rootPids = [...involved].filter((p) => !blockers.has(p)).sort((a, b) => a - b)
  for (const pid of rootPids) roots.push(build(pid, new Set()))
  // Sessions not reachable from a root wait in a cycle: show each cycle from its lowest pid.
  for (const pid of [...blockers.keys()].sort((a, b) => a - b)) {
    if (!reached.has(pid)) roots.push(build(pid, new Set()))
  }
  return Object.freeze(roots)
}
