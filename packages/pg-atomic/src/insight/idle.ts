/**
 * Sessions idle in a transaction: `idleInTransaction()` lists them, `terminateSessions()` ends
 * the ones that are still idle in the same transaction.
 *
 * @module
 */
import { z } from 'zod'
import { AtomicError, TransactionManagementError, isConnectionError, sqlState } from '../errors'
import {
  GRANTED_LOCKS_OF_SESSIONS_SQL,
  IDLE_IN_TRANSACTION_SQL,
  SERVER_VERSION_SQL,
  terminateIfStillIdleSql,
} from '../sql/insight'
import { parseOptions } from '../validation'
import {
  INSIGHT_DEFAULTS,
  INSIGHT_EXPECTATIONS,
  freshActivity,
  insightBlock,
  insightDatabase,
  insightFields,
  inspect,
  parseInsightOptions,
} from './options'
import { lockInfoOf, sortLocks, truncate } from './pg-locks'
import type { ActivityRow, LockRow } from './pg-locks'
import type {
  IdleInTransactionOptions,
  IdleSession,
  LockInfo,
  SessionTermination,
  TerminateSessionsOptions,
} from './types'

/**
 * The sessions of the database that are idle inside a transaction: a transaction began, a
 * statement ran, and nothing has happened since. Such a session keeps its locks (and holds back
 * `VACUUM`); an `ALTER TABLE` waiting behind it makes every later query of the table wait too.
 *
 * 1. States `idle in transaction` and `idle in transaction (aborted)` (an error happened: it
 *    holds no transaction lock any more, but its connection is still unusable until it rolls
 *    back). The calling session is never listed.
 * 2. `olderThanMs` keeps the sessions idle for at least that many milliseconds, measured from
 *    their last statement (`state_change`), like `idle_in_transaction_session_timeout`.
 * 3. Each session comes with the locks it holds (granted) and its last query (truncated).
 * 4. Sorted by idle time, longest first. Sessions of other roles are only visible with
 *    `pg_read_all_stats` (or as superuser).
 * 5. Like `lockWaits()`, it runs in the current block of the database (clearing its statistics
 *    snapshot first), or on a pooled connection.
 *
 * Default: `olderThanMs: 0`, `queryLength: 200`; the database of the innermost active block,
 * else `'default'`.
 *
 * @example
 * ```ts
 * for (const s of await idleInTransaction({ olderThanMs: 60_000 })) {
 *   console.log(s.pid, s.applicationName, `${Math.round(s.idleMs / 1000)} s`, s.query, s.locks.length)
 * }
 * ```
 */
export async function idleInTransaction(options?: IdleInTransactionOptions): Promise<readonly IdleSession[]> {
  const o = parseInsightOptions(
    { using: insightFields.using, olderThanMs: insightFields.olderThanMs, queryLength: insightFields.queryLength },
    options,
    'idleInTransaction()',
  )
  const db = insightDatabase(o.using)
  const queryLength = o.queryLength ?? INSIGHT_DEFAULTS.queryLength
  await freshActivity(db)
  const activity = await inspect<ActivityRow>(db, IDLE_IN_TRANSACTION_SQL, [
    o.olderThanMs ?? INSIGHT_DEFAULTS.olderThanMs,
  ])
  if (activity.rows.length === 0) return Object.freeze([])
  const locks = await inspect<LockRow>(db, GRANTED_LOCKS_OF_SESSIONS_SQL, [activity.rows.map((r) => r.pid)])
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

const sessionsSchema = z.strictObject({
  sessions: z.array(z.looseObject({ pid: z.int().min(1), idleSince: z.date() })).readonly(),
})

/** The message of `terminateSessions()` inside a block. */
const TERMINATE_INSIDE_BLOCK_MESSAGE =
  'terminateSessions() cannot be used inside an atomic() block: terminating a session is not ' +
  'part of any transaction (a rollback would not undo it), and a refused termination would doom ' +
  'the block. Call it outside atomic().'

const SKIPPED_REASON =
  'It is no longer idle in the same transaction (it ran a statement, or its transaction ended, ' +
  'since it was listed), so it was left alone.'
const PERMISSION_REASON =
  "Permission denied: ending another role's session needs superuser, membership in that role, " +
  "or the pg_signal_backend role (and a superuser's session needs superuser)."
const FAILED_REASON = 'pg_terminate_backend() failed; the error says why.'

function outcome(
  pid: number,
  result: SessionTermination['outcome'],
  reason: string | null,
  error: unknown,
): SessionTermination {
  const code = error === null ? undefined : sqlState(error)
  return Object.freeze({
    pid,
    outcome: result,
    reason,
    code: code ?? null,
    error: error instanceof Error ? error : null,
  })
}

/**
 * Ends sessions idle in a transaction (`pg_terminate_backend()`): their transactions roll back and
 * their locks are released. Meant for the sessions {@link idleInTransaction} listed.
 *
 * 1. Refused inside an `atomic()` block of the database (`TransactionManagementError`): ending a
 *    session is not transactional.
 * 2. Each session is ended only if it is still idle in the same transaction, its `state_change`
 *    unchanged since it was listed (`idleSince`); otherwise it is `'skipped'`, untouched.
 * 3. From PostgreSQL 14 it waits up to `exitTimeoutMs` for each session to exit; one still there
 *    is `'failed'`. Before 14 the session is only signalled.
 * 4. A refusal by the server (SQLSTATE 42501, permission denied) or any other error of one
 *    termination is that session's `'failed'` outcome, with `code` and `error`; the others go on.
 *    A lost connection rejects the whole call (with node-postgres' error).
 *
 * Returns one outcome per session, in the order given. Default: `exitTimeoutMs: 5000`; the
 * database of the innermost active block, else `'default'`.
 *
 * @example
 * ```ts
 * const idle = await idleInTransaction({ olderThanMs: 5 * 60_000 })
 * for (const t of await terminateSessions(idle)) console.log(t.pid, t.outcome, t.reason ?? '')
 * ```
 */
export async function terminateSessions(
  sessions: readonly Pick<IdleSession, 'pid' | 'idleSince'>[],
  options?: TerminateSessionsOptions,
): Promise<readonly SessionTermination[]> {
  const subject = 'terminateSessions()'
  const targets = parseOptions(sessionsSchema, { sessions }, subject, INSIGHT_EXPECTATIONS).sessions
  const o = parseInsightOptions(
    { using: insightFields.using, exitTimeoutMs: insightFields.exitTimeoutMs },
    options,
    subject,
  )
  const db = insightDatabase(o.using)
  if (insightBlock(db) !== undefined) throw new TransactionManagementError(TERMINATE_INSIDE_BLOCK_MESSAGE)
  if (targets.length === 0) return Object.freeze([])
  const exitTimeoutMs = o.exitTimeoutMs ?? INSIGHT_DEFAULTS.exitTimeoutMs
  const version = (await inspect<{ version: number }>(db, SERVER_VERSION_SQL)).rows[0]?.version ?? 0
  const waitForExit = version >= 140_000
  const results: SessionTermination[] = []
  for (const { pid, idleSince } of targets) {
    try {
      const { rows } = await inspect<{ terminated: boolean }>(
        db,
        terminateIfStillIdleSql(waitForExit),
        waitForExit ? [pid, idleSince, exitTimeoutMs] : [pid, idleSince],
      )
      const row = rows[0]
      if (row === undefined) results.push(outcome(pid, 'skipped', SKIPPED_REASON, null))
      else if (!row.terminated)
        results.push(outcome(pid, 'failed', `It was signalled but did not exit within ${exitTimeoutMs} ms.`, null))
      else results.push(outcome(pid, 'terminated', null, null))
    } catch (error) {
      if (error instanceof AtomicError || isConnectionError(error)) throw error
      results.push(outcome(pid, 'failed', sqlState(error) === '42501' ? PERMISSION_REASON : FAILED_REASON, error))
    }
  }
  return Object.freeze(results)
}
