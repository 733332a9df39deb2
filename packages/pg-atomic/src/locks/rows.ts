/**
 * Row locks for raw SQL: `forUpdate()` builds the locking clause (`FOR UPDATE | FOR NO KEY UPDATE |
 * FOR SHARE | FOR KEY SHARE [OF ...] [NOWAIT | SKIP LOCKED]`), `selectForUpdate()` appends it to a
 * `SELECT` and runs it in the current block.
 *
 * @module
 */
import type { QueryResult, QueryResultRow } from 'pg'
import { InvalidOptionError, lockNotAvailableFrom } from '../errors'
import { ROW_LOCK_STRENGTHS } from '../vocabulary'
import type { RowLockStrength } from '../vocabulary'
import { checkOptionKeys, optionalBoolean, optionalUsing, parseUnqualifiedName, requireBlock } from './common'

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
   * as written in the FROM clause (unqualified; when the table has an alias, the alias). Default:
   * every table of the query.
   */
  of?: string | readonly string[]
  /** Fail at once with `LockNotAvailableError` when a row is locked (`NOWAIT`). Default: `false`. */
  nowait?: boolean
  /** Leave locked rows out of the result (`SKIP LOCKED`), e.g. for queue consumers. Default: `false`. */
  skipLocked?: boolean
}

/** Options of {@link selectForUpdate}. */
export interface SelectForUpdateOptions extends ForUpdateOptions {
  /** Alias of the database whose current block runs the statement. Default: `'default'`. */
  using?: string
}

const FOR_UPDATE_KEYS = ['strength', 'of', 'nowait', 'skipLocked'] as const
const SELECT_FOR_UPDATE_KEYS = ['strength', 'of', 'nowait', 'skipLocked', 'using'] as const

function clause(o: Record<string, unknown>, subject: string): string {
  let strength: RowLockStrength = 'update'
  const s = o['strength']
  if (s !== undefined) {
    const normalized = typeof s === 'string' ? s.trim().toLowerCase().replace(/\s+/g, ' ') : undefined
    if (normalized === undefined || !(ROW_LOCK_STRENGTHS as readonly string[]).includes(normalized)) {
      throw new InvalidOptionError('strength', `Invalid option "strength" for ${subject}: it must be one of ${ROW_LOCK_STRENGTHS.map((m) => `'${m}'`).join(', ')} (upper case accepted).`)
    }
    strength = normalized as RowLockStrength
  }
  let of: string[] = []
  const rawOf = o['of']
  if (rawOf !== undefined) {
    const list = Array.isArray(rawOf) ? (rawOf as unknown[]) : [rawOf]
    if (list.length === 0) throw new InvalidOptionError('of', `Invalid option "of" for ${subject}: the list is empty; leave "of" out to lock the rows of every table of the query.`)
    of = list.map((name) => parseUnqualifiedName(name, 'of', subject))
  }
  const nowait = optionalBoolean(o['nowait'], 'nowait', subject) ?? false
  const skipLocked = optionalBoolean(o['skipLocked'], 'skipLocked', subject) ?? false
  if (nowait && skipLocked) {
    throw new InvalidOptionError('skipLocked', `Options "nowait" and "skipLocked" of ${subject} cannot be combined: NOWAIT fails on a locked row, SKIP LOCKED leaves it out. Choose one.`)
  }
  let sql = `FOR ${strength.toUpperCase()}`
  if (of.length > 0) sql += ` OF ${of.join(', ')}`
  if (nowait) sql += ' NOWAIT'
  if (skipLocked) sql += ' SKIP LOCKED'
  return sql
}

/**
 * The locking clause of a `SELECT`, for raw SQL: `FOR UPDATE`, `FOR NO KEY UPDATE OF "a" NOWAIT`,
 * `FOR SHARE SKIP LOCKED`, ... (no leading space). Pure: usable anywhere, sends nothing. Invalid
 * options are an `InvalidOptionError` naming the field; `nowait` with `skipLocked` is refused.
 *
 * The lock only means something inside a transaction: run the statement inside an `atomic()`
 * block (or use {@link selectForUpdate}, which checks that for you).
 *
 * @example
 * ```ts
 * const sql = `select id, payload from jobs where state = 'ready' order by id limit 10 ${forUpdate({ skipLocked: true })}`
 * // ... FOR UPDATE SKIP LOCKED
 * ```
 */
export function forUpdate(options?: ForUpdateOptions): string {
  return clause(checkOptionKeys(options, FOR_UPDATE_KEYS, '', 'forUpdate()'), 'forUpdate()')
}

/** The message of `selectForUpdate()` outside a block (Django's words, and why). */
export const SELECT_FOR_UPDATE_OUTSIDE_MESSAGE =
  'select_for_update cannot be used outside of a transaction. Call selectForUpdate() inside an atomic() block: in autocommit mode the row locks would be released as soon as the statement ends.'

/** `text` without trailing whitespace and semicolons, followed by a newline (ending a `--` comment). */
function appendClause(text: string, lockClause: string): string {
  return `${text.replace(/[\s;]+$/, '')}\n${lockClause}`
}

/**
 * Runs a `SELECT` with a row-locking clause in the current `atomic()` block: `text` (without
 * locking clause) gets the clause of {@link forUpdate} appended on a new line, and runs with
 * `values` as `$n` parameters. Resolves to pg's `QueryResult`.
 *
 * 1. Options are validated first (`InvalidOptionError`).
 * 2. Outside a block it rejects with `TransactionManagementError` ("select_for_update cannot be
 *    used outside of a transaction.") before anything is sent: the locks would be released at once.
 * 3. A locked row with `nowait` (or an expired `lock_timeout`) rejects with
 *    `LockNotAvailableError` (`relation` = the table PostgreSQL names); other errors pass through:
 *    `25006` in a `readOnly` block ("cannot execute SELECT FOR UPDATE in a read-only
 *    transaction"), `0A000` for query shapes that cannot lock rows (aggregates, `DISTINCT`,
 *    `GROUP BY`, `UNION`, window functions, the nullable side of an outer join: use `of`).
 *
 * Default: `strength: 'update'`, every table of the query, waits; `using: 'default'`.
 *
 * @example
 * ```ts
 * await atomic(async () => {
 *   const { rows } = await selectForUpdate<{ balance: string }>('select balance from accounts where id = $1', [1], { strength: 'no key update' })
 *   await db.query('update accounts set balance = $1 where id = $2', [Number(rows[0]?.balance) - 100, 1])
 * })
 * ```
 */
export function selectForUpdate<R extends QueryResultRow = QueryResultRow>(text: string, values?: readonly unknown[], options?: SelectForUpdateOptions): Promise<QueryResult<R>>
export function selectForUpdate<R extends QueryResultRow = QueryResultRow>(text: string, options?: SelectForUpdateOptions): Promise<QueryResult<R>>
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
    if (maybeOptions !== undefined) throw new InvalidOptionError('values', `${subject} takes (text, values, options) or (text, options): "values" must be an array of parameters.`)
    options = valuesOrOptions
  }
  if (typeof text !== 'string' || text.trim() === '') throw new InvalidOptionError('text', `${subject} expects the SQL text of a SELECT (a non-empty string) without its locking clause.`)
  const o = checkOptionKeys(options, SELECT_FOR_UPDATE_KEYS, '', subject)
  const lockClause = clause(o, subject)
  const using = optionalUsing(o['using'], subject)
  const { block } = requireBlock(using, SELECT_FOR_UPDATE_OUTSIDE_MESSAGE)
  try {
    return await block.run<R>(appendClause(text, lockClause), values)
  } catch (error) {
    throw lockNotAvailableFrom(error, { kind: 'row' }) ?? error
  }
}
