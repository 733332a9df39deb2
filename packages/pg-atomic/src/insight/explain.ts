/**
 * `explainLocks()`: runs a statement in a transaction that is always rolled back, and reports the
 * locks it took, with what they block.
 *
 * @module
 */
import pg from 'pg'
import type { QueryResult } from 'pg'
import { z } from 'zod'
import type { DatabaseImpl } from '../database'
import { TransactionManagementError, sqlState } from '../errors'
import { quoteIdentifier } from '../sql/identifier'
import {
  LOCKS_OF_THIS_BACKEND_WITH_PID_SQL,
  PGROWLOCKS_SCHEMA_SQL,
  PLAIN_TABLES_SQL,
  explainPreludeSql,
  rowLockObserverSettingsSql,
  rowLocksOfTableSql,
} from '../sql/insight'
import { ROLLBACK } from '../sql/transaction'
import { parseOptions } from '../validation'
import type { LockMode } from '../vocabulary'
import { assertExplainable } from './classify'
import { blockedStatements, conflictingModes } from './conflicts'
import { INSIGHT_DEFAULTS, INSIGHT_EXPECTATIONS, insightDatabase, insightFields, parseInsightOptions } from './options'
import { lockInfoOf, sortLocks } from './pg-locks'
import type { LockRow } from './pg-locks'
import type {
  ExplainLocksOptions,
  ExplainedLock,
  LockInfo,
  LockReport,
  RelationRef,
  RowLockInfo,
  RowLocksReport,
} from './types'

const ROW_BLOCKS: Readonly<Record<string, readonly string[]>> = Object.freeze({
  'for key share': ['SELECT ... FOR UPDATE', 'DELETE', 'UPDATE of a key column'],
  'for share': ['SELECT ... FOR UPDATE / FOR NO KEY UPDATE', 'UPDATE', 'DELETE'],
  'for no key update': ['SELECT ... FOR UPDATE / FOR NO KEY UPDATE / FOR SHARE', 'UPDATE', 'DELETE'],
  'no key update': ['SELECT ... FOR UPDATE / FOR NO KEY UPDATE / FOR SHARE', 'UPDATE', 'DELETE'],
  'for update': [
    'SELECT ... FOR UPDATE / FOR NO KEY UPDATE / FOR SHARE / FOR KEY SHARE',
    'UPDATE',
    'DELETE',
    'INSERT or UPDATE of a row referencing it by foreign key',
  ],
  update: [
    'SELECT ... FOR UPDATE / FOR NO KEY UPDATE / FOR SHARE / FOR KEY SHARE',
    'UPDATE',
    'DELETE',
    'INSERT or UPDATE of a row referencing it by foreign key',
  ],
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
    blocks = [
      lock.mode === 'ShareLock'
        ? 'exclusive advisory locks on the same key'
        : 'advisory locks on the same key (shared or exclusive)',
    ]
  } else if (lock.type === 'transactionid') {
    blocks = ['transactions waiting to lock or change the rows this one changed or locked (until it ends)']
  }
  return Object.freeze({
    ...lock,
    conflictsWith: Object.freeze([...conflictsWith]),
    blocks: Object.freeze([...blocks]),
  })
}

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

const paramsSchema = z.strictObject({ params: z.array(z.unknown()).readonly().optional() })

/** The message for a 25001 the classifier did not foresee (the server's message stays in `cause`). */
const NO_TRANSACTION_BLOCK_MESSAGE =
  'explainLocks() cannot explain this statement: PostgreSQL refused to run it inside a transaction ' +
  "block (SQLSTATE 25001; the server's message is in cause), so it could not be rolled back afterwards. " +
  'Nothing was changed.'

/**
 * Runs `sql` in a transaction that is always rolled back, and reports the locks it took.
 *
 * **It executes the statement.** Everything inside the database is undone by the rollback, but not
 * what escapes the transaction: sequence values taken by `nextval()` (and serial / identity
 * columns), functions with outside effects (`dblink`, `pg_terminate_backend()`, writing files),
 * and the time the statement held locks other sessions waited for. (`NOTIFY` is transactional:
 * nothing is sent.) Point it at a copy of production when in doubt.
 *
 * 1. Refused before anything is sent, as {@link assertExplainable} says: `InvalidOptionError` for
 *    an empty statement, `TransactionManagementError` for transaction control, statements that
 *    cannot run in a transaction block and statements a rollback does not undo. A 25001 error from
 *    the server (a statement not recognised here) becomes a `TransactionManagementError` too.
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
 * Defaults ({@link INSIGHT_DEFAULTS}): `lockTimeout: 1000`, `statementTimeout: 30000`,
 * `rowLocks: true`, `maxRowLocks: 100`; the database of the innermost active block, else
 * `'default'`.
 *
 * @example
 * ```ts
 * const report = await explainLocks('alter table accounts add column note text')
 * for (const lock of report.locks) console.log(lock.target, lock.mode, 'blocks', lock.blocks.join(', '))
 * // table public.accounts AccessExclusiveLock blocks SELECT, SELECT ... FOR UPDATE / ..., INSERT, ...
 * ```
 */
export async function explainLocks(
  sql: string,
  params?: readonly unknown[],
  options?: ExplainLocksOptions,
): Promise<LockReport> {
  const subject = 'explainLocks()'
  assertExplainable(sql)
  parseOptions(paramsSchema, { params }, subject, INSIGHT_EXPECTATIONS)
  const o = parseInsightOptions(
    {
      using: insightFields.using,
      lockTimeout: insightFields.lockTimeout,
      statementTimeout: insightFields.statementTimeout,
      rowLocks: insightFields.rowLocks,
      maxRowLocks: insightFields.maxRowLocks,
    },
    options,
    subject,
  )
  const db = insightDatabase(o.using)
  const settings: ExplainSettings = {
    lockTimeout: o.lockTimeout ?? INSIGHT_DEFAULTS.lockTimeout,
    statementTimeout: o.statementTimeout ?? INSIGHT_DEFAULTS.statementTimeout,
    rowLocks: o.rowLocks ?? INSIGHT_DEFAULTS.rowLocks,
    maxRowLocks: o.maxRowLocks ?? INSIGHT_DEFAULTS.maxRowLocks,
  }

  const client = await openClient(db)
  let rollbackFailed = false
  try {
    await client.query(explainPreludeSql(settings.lockTimeout, settings.statementTimeout))
    let result: QueryResult | QueryResult[]
    try {
      result = await client.query(params === undefined ? sql : { text: sql, values: params as unknown[] })
    } catch (error) {
      if (sqlState(error) === '25001')
        throw new TransactionManagementError(NO_TRANSACTION_BLOCK_MESSAGE, { cause: error })
      throw error
    }
    const last = Array.isArray(result) ? result[result.length - 1] : result
    const inspected = await client.query<LockRow & { me: number }>(LOCKS_OF_THIS_BACKEND_WITH_PID_SQL)
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
      await client.query(ROLLBACK)
    } catch {
      rollbackFailed = true
    }
    await closeClient(client, rollbackFailed)
  }
}

/**
 * Tables in which the statement may have locked or changed rows: RowShareLock / RowExclusiveLock, not
 * AccessExclusiveLock.
 */
function rowCandidates(locks: readonly ExplainedLock[]): RelationRef[] {
  const byOid = new Map<number, { relation: RelationRef; modes: Set<string> }>()
  for (const l of locks) {
    if (
      l.type !== 'relation' ||
      l.relation === null ||
      l.relation.kind !== 'table' ||
      l.relation.qualifiedName === null
    )
      continue
    const entry = byOid.get(l.relation.oid) ?? { relation: l.relation, modes: new Set<string>() }
    entry.modes.add(l.mode)
    byOid.set(l.relation.oid, entry)
  }
  return [...byOid.values()]
    .filter(
      (e) => (e.modes.has('RowShareLock') || e.modes.has('RowExclusiveLock')) && !e.modes.has('AccessExclusiveLock'),
    )
    .map((e) => e.relation)
}

async function rowLocksOf(
  db: DatabaseImpl,
  locks: readonly ExplainedLock[],
  pid: number,
  settings: ExplainSettings,
): Promise<RowLocksReport> {
  const candidates = rowCandidates(locks)
  const report = (
    source: RowLocksReport['source'],
    rows: RowLockInfo[],
    truncated: boolean,
    note: string,
    error: Error | null = null,
  ): RowLocksReport => Object.freeze({ source, rows: Object.freeze(rows), truncated, note, error })
  if (candidates.length === 0)
    return report(
      'none',
      [],
      false,
      'The statement took no RowShareLock or RowExclusiveLock on a table, so it locked no rows.',
    )
  const names = candidates.map((c) => c.qualifiedName).join(', ')
  if (!settings.rowLocks)
    return report(
      'disabled',
      [],
      false,
      `Row locks are not listed (rowLocks: false); the RowShareLock / RowExclusiveLock on ${names} ` +
        `shows the statement locked or changed rows there.`,
    )
  // A second session sees the rows this transaction changed or locked as locked (its own session
  // would not see the rows it updated or deleted); the transaction stays open meanwhile.
  let observer: pg.Client | undefined
  try {
    observer = await openClient(db)
    await observer.query(rowLockObserverSettingsSql(settings.statementTimeout))
    const ext = await observer.query<{ schema: string }>(PGROWLOCKS_SCHEMA_SQL)
    const schema = ext.rows[0]?.schema
    if (schema === undefined) {
      return report(
        'not installed',
        [],
        false,
        `Row locks are not kept in pg_locks and the pgrowlocks extension is not installed, so they ` +
          `are not listed; the RowShareLock / RowExclusiveLock on ${names} shows the statement locked ` +
          `or changed rows there (CREATE EXTENSION pgrowlocks lists them).`,
      )
    }
    const plain = await observer.query<{ oid: number }>(PLAIN_TABLES_SQL, [candidates.map((c) => c.oid)])
    const heap = new Set(plain.rows.map((r) => r.oid))
    const rows: RowLockInfo[] = []
    let truncated = false
    for (const relation of candidates) {
      if (!heap.has(relation.oid)) continue
      const left = settings.maxRowLocks - rows.length
      const found = await observer.query<{ ctid: string; modes: string[] }>(
        rowLocksOfTableSql(quoteIdentifier(schema)),
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
        ? `pgrowlocks found no row locked by the statement in ${names} (an INSERT locks no existing row: ` +
          `new rows stay invisible to others until commit).`
        : `Row locks listed by pgrowlocks${truncated ? `, the first ${settings.maxRowLocks} only` : ''}; ` +
          `pg_locks shows them only as the RowShareLock / RowExclusiveLock on ${names}.`
    return report('pgrowlocks', rows, truncated, note)
  } catch (error) {
    return report(
      'failed',
      [],
      false,
      `Row locks could not be listed with pgrowlocks (the error is in rowLocks.error); the RowShareLock ` +
        `/ RowExclusiveLock on ${names} shows the statement locked or changed rows there.`,
      error instanceof Error ? error : new Error(String(error)),
    )
  } finally {
    if (observer !== undefined) await closeClient(observer, false)
  }
}

function notesFor(locks: readonly ExplainedLock[], rows: RowLocksReport): string[] {
  const notes: string[] = []
  if (locks.length === 0) notes.push('The statement holds no lock other than its own virtual transaction id.')
  const strongest = locks.find((l) => l.type === 'relation' && l.lockMode === 'access exclusive')
  if (strongest !== undefined) {
    notes.push(
      `AccessExclusiveLock on ${strongest.relation?.qualifiedName ?? 'a relation'} blocks every other ` +
        `statement on it, even SELECT, until the transaction ends; while it waits for the lock, statements ` +
        `queued behind it wait too.`,
    )
  }
  const sequences = locks.filter(
    (l) => l.type === 'relation' && l.relation?.kind === 'sequence' && l.mode === 'RowExclusiveLock',
  )
  if (sequences.length > 0) {
    notes.push(
      `${sequences.map((l) => l.relation?.qualifiedName ?? 'a sequence').join(', ')} ` +
        `${sequences.length === 1 ? 'was' : 'were'} ` +
        `used: the values nextval() took are not given back by the rollback.`,
    )
  }
  if (rows.source !== 'none') notes.push(rows.note)
  notes.push(
    'The statement was executed and rolled back: changes outside the transaction (sequence values, ' +
      'external side effects) were not undone.',
  )
  return notes
}
