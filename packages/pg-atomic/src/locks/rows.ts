/**
 * Row locks for raw SQL: `forUpdate()` builds the locking clause (`FOR UPDATE | FOR NO KEY UPDATE |
 * FOR SHARE | FOR KEY SHARE [OF ...] [NOWAIT | SKIP LOCKED]`), `selectForUpdate()` appends it to a
 * `SELECT` and runs it in the current block.
 *
 * @module
 */
import type { QueryResult, QueryResultRow } from 'pg'
import { z } from 'zod'
import { requireActiveBlock } from '../current'
import { InvalidOptionError, lockNotAvailableFrom } from '../errors'
import { quoteIdentifier } from '../sql/identifier'
import { appendLockClauseSql, rowLockClauseSql } from '../sql/locks'
import { parseOptions } from '../validation'
import { ROW_LOCK_STRENGTHS } from '../vocabulary'
import type { RowLockStrength } from '../vocabulary'
import { OF_EXPECTATION, USING_EXPECTATION, unqualifiedNamesSchema, usingSchema } from './schemas'

/** Options of {@link forUpdate}. */
export interface ForUpdateOptions {
  /**
   * The row lock: `'update'` (`FOR UPDATE`: blocks every other row lock, key updates and
   * deletes), `'no key update'` (what a plain `UPDATE` of non-key columns takes; does not block
   * `KEY SHARE`, so foreign-key inserts referencing the row go on), `'share'`, `'key share'`.
   * Upper case accepted. Default: `'update'`.
   */
  strength?: RowLockStrength | Uppercase<RowLockStrength>
  /**
   * Lock only the rows of these tables of the query (`OF ...`): each a table name or alias exactly
   * as written in the FROM clause (unqualified; when the table has an alias, the alias), taken
   * literally and quoted by pg-atomic, at most 63 bytes of UTF-8. Default: every table of the query.
   */
  of?: string | readonly string[]
  /** Fail at once with `LockNotAvailableError` when a row is locked (`NOWAIT`). Default: `false`. */
  nowait?: boolean
  /** Leave locked rows out of the result (`SKIP LOCKED`), e.g. for queue consumers. Default: `false`. */
  skipLocked?: boolean
}

/** Options of `selectForUpdate()`. */
export interface SelectForUpdateOptions extends ForUpdateOptions {
  /**
   * Alias of the database whose current block runs the statement (it must be registered).
   * Default: the innermost active `atomic()` block of the current async context, whatever its
   * database.
   */
  using?: string
}

const strengthSchema = z
  .string()
  .transform((s) => s.trim().toLowerCase().replace(/\s+/g, ' '))
  .pipe(z.enum(ROW_LOCK_STRENGTHS))

const forUpdateShape = {
  strength: strengthSchema.optional(),
  of: unqualifiedNamesSchema.optional(),
  nowait: z.boolean().optional(),
  skipLocked: z.boolean().optional(),
}
const forUpdateSchema = z.strictObject(forUpdateShape)
const selectForUpdateSchema = z.strictObject({ ...forUpdateShape, using: usingSchema.optional() })

const EXPECTATIONS = {
  strength: `one of ${ROW_LOCK_STRENGTHS.map((m) => `'${m}'`).join(', ')} (upper case accepted)`,
  of: OF_EXPECTATION,
  nowait: 'true or false',
  skipLocked: 'true or false',
  using: USING_EXPECTATION,
  text: 'the SQL text of a SELECT without its locking clause (a non-empty string)',
  values: 'an array of parameters for $1, $2, ...: selectForUpdate() takes (text, values, options) or (text, options)',
}

/** The clause for validated options. */
function clause(o: z.output<typeof forUpdateSchema>, subject: string): string {
  const nowait = o.nowait ?? false
  const skipLocked = o.skipLocked ?? false
  if (nowait && skipLocked) {
    throw new InvalidOptionError(
      'skipLocked',
      `Invalid option "skipLocked" for ${subject}: it cannot be combined with "nowait": NOWAIT fails ` +
        `on a locked row, SKIP LOCKED leaves it out. Choose one.`,
    )
  }
  const of = o.of === undefined ? [] : typeof o.of === 'string' ? [o.of] : o.of
  return rowLockClauseSql(o.strength ?? 'update', of.map(quoteIdentifier), nowait, skipLocked)
}

/**
 * The locking clause of a `SELECT`, for raw SQL: `FOR UPDATE`, `FOR NO KEY UPDATE OF "a" NOWAIT`,
 * `FOR SHARE SKIP LOCKED`, ... (no leading space). Pure: usable anywhere, sends nothing. Invalid
 * options are an `InvalidOptionError` naming the field; `nowait` with `skipLocked` is refused.
 *
 * The lock only means something inside a transaction: run the statement inside an `atomic()`
 * block (or use `selectForUpdate()`, which checks that for you).
 *
 * @example
 * ```ts
 * const clause = forUpdate({ skipLocked: true })
 * const sql = `select id, payload from jobs where state = 'ready' order by id limit 10 ${clause}`
 * // ... FOR UPDATE SKIP LOCKED
 * ```
 */
export function forUpdate(options?: ForUpdateOptions): string {
  const subject = 'forUpdate()'
  return clause(parseOptions(forUpdateSchema, options === undefined ? {} : options, subject, EXPECTATIONS), subject)
}

/** The message of `selectForUpdate()` outside a block (Django's words, and why). */
export const SELECT_FOR_UPDATE_OUTSIDE_MESSAGE =
  'select_for_update cannot be used outside of a transaction. Call selectForUpdate() inside an ' +
  'atomic() block: in autocommit mode the row locks would be released as soon as the statement ' +
  'ends.'

const textSchema = z.strictObject({ text: z.string().refine((t) => t.trim() !== '') })

/**
 * Runs a `SELECT` with a row-locking clause in the current `atomic()` block: `text` (without
 * locking clause) gets the clause of {@link forUpdate} appended on a new line, and runs with
 * `values` as `$n` parameters. Resolves to pg's `QueryResult`.
 *
 * 1. Options are validated first (`InvalidOptionError`).
 * 2. The block: the one of `using`, else the innermost active block of the current async context.
 *    Outside a block it rejects with `TransactionManagementError` ("select_for_update cannot be
 *    used outside of a transaction.") before anything is sent: the locks would be released at once.
 * 3. A locked row with `nowait` (or an expired `lock_timeout`) rejects with
 *    `LockNotAvailableError` (`relation` = the table PostgreSQL names); other errors pass through:
 *    `25006` in a `readOnly` block ("cannot execute SELECT FOR UPDATE in a read-only
 *    transaction"), `0A000` for query shapes that cannot lock rows (aggregates, `DISTINCT`,
 *    `GROUP BY`, `UNION`, window functions, the nullable side of an outer join: use `of`).
 *
 * Default: `strength: 'update'`, every table of the query, waits.
 *
 * @example
 * ```ts
 * await atomic(async () => {
 *   const { rows } = await selectForUpdate<{ balance: string }>('select balance from accounts where id = $1', [1], {
 *     strength: 'no key update',
 *   })
 *   await db.query('update accounts set balance = $1 where id = $2', [Number(rows[0]?.balance) - 100, 1])
 * })
 * ```
 */
export function selectForUpdate<R extends QueryResultRow = QueryResultRow>(
  text: string,
  values?: readonly unknown[],
  options?: SelectForUpdateOptions,
): Promise<QueryResult<R>>
/** `selectForUpdate(text, options)`: the same, for a statement without parameters. */
export function selectForUpdate<R extends QueryResultRow = QueryResultRow>(
  text: string,
  options?: SelectForUpdateOptions,
): Promise<QueryResult<R>>
export async function selectForUpdate<R extends QueryResultRow = QueryResultRow>(
  text: string,
  valuesOrOptions?: readonly unknown[] | SelectForUpdateOptions,
  maybeOptions?: SelectForUpdateOptions,
): Promise<QueryResult<R>> {
  const subject = 'selectForUpdate()'
  let values: readonly unknown[] | undefined
  let options: unknown
  if (Array.isArray(valuesOrOptions) || valuesOrOptions === undefined) {
    values = valuesOrOptions as readonly unknown[] | undefined
    options = maybeOptions
  } else {
    if (maybeOptions !== undefined)
      throw new InvalidOptionError(
        'values',
        `Invalid option "values" for ${subject}: it must be ${EXPECTATIONS.values}.`,
      )
    options = valuesOrOptions
  }
  parseOptions(textSchema, { text }, subject, EXPECTATIONS)
  const o = parseOptions(selectForUpdateSchema, options === undefined ? {} : options, subject, EXPECTATIONS)
  const lockClause = clause(o, subject)
  const block = requireActiveBlock(o.using, SELECT_FOR_UPDATE_OUTSIDE_MESSAGE)
  try {
    return await block.run<R>(appendLockClauseSql(text, lockClause), values)
  } catch (error) {
    throw lockNotAvailableFrom(error, { kind: 'row' }) ?? error
  }
}
