/**
 * What the insight functions share: their defaults, the validation of their options (zod, one
 * message style), and the database and block they read from.
 *
 * @module
 */
import type { QueryResult, QueryResultRow } from 'pg'
import { z } from 'zod'
import type { Block } from '../atomic/block'
import { currentBlock, innermostActiveBlock } from '../context'
import { DatabaseImpl } from '../database'
import type { Database } from '../database'
import { requireDatabase } from '../registry'
import { CLEAR_STATS_SNAPSHOT_SQL } from '../sql/insight'
import { parseOptions } from '../validation'
import { MAX_TIMEOUT_MS } from '../vocabulary'

/**
 * The defaults of the insight functions, in one place (the command line shows and uses them):
 * `queryLength` (characters), `olderThanMs`, `exitTimeoutMs`, and `explainLocks()`'s
 * `lockTimeout` / `statementTimeout` (ms), `rowLocks`, `maxRowLocks`.
 */
export const INSIGHT_DEFAULTS = Object.freeze({
  /** Longest query text returned by `lockWaits()` and `idleInTransaction()`, in characters. */
  queryLength: 200,
  /** `idleInTransaction()`: every session idle in a transaction, however briefly. */
  olderThanMs: 0,
  /** `terminateSessions()`: how long to wait for each session to exit (PostgreSQL 14+). */
  exitTimeoutMs: 5000,
  /** `explainLocks()`: `lock_timeout` of the statement, in ms. */
  lockTimeout: 1000,
  /** `explainLocks()`: `statement_timeout` of the statement, in ms. */
  statementTimeout: 30_000,
  /** `explainLocks()`: list row locks with `pgrowlocks` when it is installed. */
  rowLocks: true,
  /** `explainLocks()`: at most this many row locks are listed. */
  maxRowLocks: 100,
} as const)

/** The zod pieces of insight options. @internal */
export const insightFields = {
  using: z.union([z.string().min(1), z.custom<Database>((v) => v instanceof DatabaseImpl)]).optional(),
  queryLength: z.int().min(1).max(1_000_000).optional(),
  olderThanMs: z.int().min(0).optional(),
  exitTimeoutMs: z.int().min(0).max(MAX_TIMEOUT_MS).optional(),
  lockTimeout: z.int().min(0).max(MAX_TIMEOUT_MS).optional(),
  statementTimeout: z.int().min(0).max(MAX_TIMEOUT_MS).optional(),
  rowLocks: z.boolean().optional(),
  maxRowLocks: z.int().min(1).max(1_000_000).optional(),
}

/** What each insight option (and argument) must be. @internal */
export const INSIGHT_EXPECTATIONS: Readonly<Record<string, string>> = Object.freeze({
  using: 'the alias of a registered database (a non-empty string) or a Database returned by createDatabase()',
  queryLength: 'a whole number of characters from 1 to 1000000',
  olderThanMs: 'a whole number of milliseconds of at least 0',
  exitTimeoutMs: `a whole number of milliseconds from 0 to ${MAX_TIMEOUT_MS}`,
  lockTimeout: `a whole number of milliseconds from 0 to ${MAX_TIMEOUT_MS}`,
  statementTimeout: `a whole number of milliseconds from 0 to ${MAX_TIMEOUT_MS}`,
  rowLocks: 'true or false',
  maxRowLocks: 'a whole number of rows from 1 to 1000000',
  sql: 'the SQL statement to explain (a non-empty string with at least one statement)',
  params: 'an array of values for $1, $2, ... (or undefined)',
  sessions: 'a list of sessions, each { pid, idleSince } as idleInTransaction() returns them',
})

/** Validates `options` of `subject` with the fields of `shape`. @internal */
export function parseInsightOptions<S extends z.core.$ZodLooseShape>(
  shape: S,
  options: unknown,
  subject: string,
): z.output<z.ZodObject<S, z.core.$strict>> {
  return parseOptions(z.strictObject(shape), options === undefined ? {} : options, subject, INSIGHT_EXPECTATIONS)
}

/** The active block of `db` in the current async context, or `undefined`. */
function activeBlockOf(db: DatabaseImpl): Block | undefined {
  const block = currentBlock(db)
  return block === undefined || block.ended || block.tx.ended ? undefined : block
}

/** The database of a block (the state machine keeps it as a `DatabaseImpl`). */
function databaseOf(block: Block): DatabaseImpl {
  const db: unknown = block.tx.db
  return db instanceof DatabaseImpl ? db : requireDatabase(block.tx.db.alias)
}

/**
 * The database an insight function reads: `using` (an alias, which must be registered, or a
 * `Database`), else the database of the innermost active block of the current async context,
 * else `'default'`. @internal
 */
export function insightDatabase(using: string | Database | undefined): DatabaseImpl {
  if (using instanceof DatabaseImpl) return using
  if (typeof using === 'string') return requireDatabase(using)
  const block = innermostActiveBlock()
  return block === undefined ? requireDatabase('default') : databaseOf(block)
}

/**
 * The block an insight function that needs one (`locksHeld()`) reads in: the active block of
 * `using`, else the innermost active block of the current async context; `undefined` outside. @internal
 */
export function insightBlock(using: string | Database | undefined): Block | undefined {
  if (using === undefined) return innermostActiveBlock()
  return activeBlockOf(insightDatabase(using))
}

/** Runs an inspection statement: in the current block of `db` when there is one, else in autocommit. @internal */
export function inspect<R extends QueryResultRow>(
  db: DatabaseImpl,
  text: string,
  values: readonly unknown[] = [],
): Promise<QueryResult<R>> {
  return db.query<R>(text, values)
}

/**
 * Inside a block, `pg_stat_activity` data is a snapshot taken at its first use in the
 * transaction; clear it so that a second call sees the present. @internal
 */
export async function freshActivity(db: DatabaseImpl): Promise<void> {
  if (activeBlockOf(db) !== undefined) await inspect(db, CLEAR_STATS_SNAPSHOT_SQL)
}
