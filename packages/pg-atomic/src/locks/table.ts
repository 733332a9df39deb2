/**
 * `lockTable()`: `LOCK TABLE` in the caller's block.
 *
 * @module
 */
import { z } from 'zod'
import { requireActiveBlock } from '../current'
import { parseOptions } from '../validation'
import type { LockMode } from '../vocabulary'
import { TIMEOUT_MS_EXPECTATION, USING_EXPECTATION, timeoutMsSchema, usingSchema } from './schemas'
import { resolveTableLockArguments, runTableLock } from './table-lock'
import type { TableLockOptions } from './table-lock'

/** Options of {@link lockTable}. */
export interface LockTableOptions extends TableLockOptions {
  /**
   * Alias of the database whose current block takes the lock (it must be registered). Default:
   * the innermost active `atomic()` block of the current async context, whatever its database.
   */
  using?: string
}

const SUBJECT = 'lockTable()'

const optionsSchema = z.strictObject({
  nowait: z.boolean().optional(),
  timeoutMs: timeoutMsSchema.optional(),
  using: usingSchema.optional(),
})

const EXPECTATIONS = { nowait: 'true or false', timeoutMs: TIMEOUT_MS_EXPECTATION, using: USING_EXPECTATION }

/** The message of `lockTable()` outside a block. */
export const LOCK_TABLE_OUTSIDE_MESSAGE =
  'LOCK TABLE cannot be used outside of a transaction: call lockTable() inside an atomic() block ' +
  '(a lock taken in autocommit mode is released at once).'

/**
 * Locks one or several tables in the current `atomic()` block until its transaction ends
 * (`LOCK TABLE ... IN <mode> MODE`). There is no unlock: PostgreSQL releases table locks at
 * `COMMIT` or `ROLLBACK`, or at `ROLLBACK TO SAVEPOINT` when the lock was taken inside a nested
 * block that rolls back.
 *
 * 1. Everything is validated before any SQL (`InvalidOptionError`): `tables` (`'table'` or
 *    `'schema.table'`, taken literally and quoted per part, `"` doubled; a part longer than 63
 *    bytes is refused, since PostgreSQL would cut it and lock another table) and `mode` (one of
 *    the 8 modes, any case, or a `pg_locks` name).
 * 2. The block: the one of `using`, else the innermost active block of the current async context.
 *    Outside a block it throws `TransactionManagementError` before anything is sent.
 * 3. Several tables are locked in one statement, in one canonical order (by table name, then
 *    schema, code-unit order), so two callers listing them differently cannot deadlock each other.
 * 4. `nowait`, or `timeoutMs` (for this statement only): a conflict then rejects with
 *    `LockNotAvailableError` (`code` `'55P03'`, `relation`), and the block must roll back.
 *
 * Default: waits as long as the transaction's `lock_timeout` allows.
 *
 * @example
 * ```ts
 * await atomic(async () => {
 *   await lockTable(['accounts', 'ledger'], 'share row exclusive', { timeoutMs: 2_000 })
 *   await db.query('insert into ledger(account_id, amount) select id, 0 from accounts')
 * })
 * ```
 */
export async function lockTable(
  tables: string | readonly string[],
  mode: LockMode | string,
  options?: LockTableOptions,
): Promise<void> {
  const o = parseOptions(optionsSchema, options === undefined ? {} : options, SUBJECT, EXPECTATIONS)
  const lock = resolveTableLockArguments(tables, mode, o, SUBJECT)
  const block = requireActiveBlock(o.using, LOCK_TABLE_OUTSIDE_MESSAGE)
  await runTableLock(lock, (sql) => block.run(sql, undefined))
}
