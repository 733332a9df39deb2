/**
 * Table locks: `lockTable()` (`LOCK TABLE` in the caller's block), the pure statement builder
 * `lockTableStatement()`, and `resolveTableLock()` for options that take a lock at the start of a
 * block.
 *
 * @module
 */
import { InvalidOptionError, lockNotAvailableFrom } from '../errors'
import { applyLockTimeoutStatement, checkOptionKeys, fieldName, optionalBoolean, optionalTimeout, optionalUsing, parseTableName, requireBlock, RESTORE_LOCK_TIMEOUT } from './common'
import type { QualifiedName } from './common'
import { parseLockMode } from './modes'
import type { LockMode } from '../vocabulary'

/** Options of {@link lockTableStatement} (and of a table lock taken at the start of a block). */
export interface TableLockOptions {
  /**
   * Fail at once with `LockNotAvailableError` (`NOWAIT`) instead of waiting when another
   * transaction holds a conflicting lock. Cannot be combined with `timeout`. Default: `false`.
   */
  nowait?: boolean
  /**
   * Wait at most this many milliseconds for the lock (`lock_timeout` for this statement only; the
   * previous value is restored afterwards), then fail with `LockNotAvailableError`. A whole number
   * from 0 to 2147483647; `0` waits without limit. Default: the transaction's `lock_timeout` (the
   * block's `lockTimeout` option, else the server's setting).
   */
  timeout?: number
}

/** Options of {@link lockTable}. */
export interface LockTableOptions extends TableLockOptions {
  /** Alias of the database whose current block takes the lock. Default: `'default'`. */
  using?: string
}

/** What {@link resolveTableLock} accepts: the `lock` option of a block. */
export interface TableLockInput extends TableLockOptions {
  /** One table name or a list; `'table'` or `'schema.table'`, taken literally (exact case). */
  tables: string | readonly string[]
  /** One of PostgreSQL's 8 table lock modes (`'access share'` ... `'access exclusive'`, any case). */
  mode: LockMode | string
}

/** A validated table lock (frozen): what {@link resolveTableLock} returns. */
export interface ResolvedTableLock {
  /** The tables in canonical order, de-duplicated, as the caller spelled them (`'public.accounts'`). */
  readonly tables: readonly string[]
  /** The validated lock mode (lower case). */
  readonly mode: LockMode
  /** Whether `NOWAIT` is used. */
  readonly nowait: boolean
  /** The statement's own `lock_timeout` in ms, or `undefined`. */
  readonly timeout: number | undefined
  /** The SQL text to send (one simple-protocol string, one round trip). */
  readonly statement: string
}

const LOCK_OPTION_KEYS = ['nowait', 'timeout'] as const
const LOCK_TABLE_KEYS = ['nowait', 'timeout', 'using'] as const
const LOCK_INPUT_KEYS = ['tables', 'mode', 'nowait', 'timeout'] as const

/** Code-unit order (locale-independent), so every process computes the same order. */
function compare(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0
}

/**
 * Canonical order: by table name, then by schema (unqualified names first). Sorting by the table
 * name first keeps `'orders'` and `'public.orders'` at the same place relative to the other tables,
 * so callers that qualify names differently still lock in the same order.
 */
function canonical(names: readonly QualifiedName[]): QualifiedName[] {
  const seen = new Set<string>()
  const unique: QualifiedName[] = []
  for (const n of names) {
    const key = `${n.schema ?? ''}\0${n.name}`
    if (seen.has(key)) continue
    seen.add(key)
    unique.push(n)
  }
  return unique.sort((a, b) => compare(a.name, b.name) || compare(a.schema ?? '', b.schema ?? ''))
}

function parseTables(input: unknown, field: string, subject: string): QualifiedName[] {
  const list = typeof input === 'string' ? [input] : Array.isArray(input) ? (input as unknown[]) : undefined
  if (list === undefined) {
    throw new InvalidOptionError(field, `Invalid option "${field}" for ${subject}: it must be a table name (a string such as 'accounts' or 'public.accounts') or a list of them.`)
  }
  if (list.length === 0) {
    throw new InvalidOptionError(field, `Invalid option "${field}" for ${subject}: the list of tables is empty; name at least one table.`)
  }
  return canonical(list.map((t) => parseTableName(t, field, subject)))
}

function build(tables: readonly QualifiedName[], mode: LockMode, nowait: boolean, timeout: number | undefined): string {
  const lock = `LOCK TABLE ${tables.map((t) => t.sql).join(', ')} IN ${mode.toUpperCase()} MODE${nowait ? ' NOWAIT' : ''}`
  if (timeout === undefined) return lock
  return `${applyLockTimeoutStatement(timeout)}; ${lock}; ${RESTORE_LOCK_TIMEOUT}`
}

function resolve(input: { tables: unknown; mode: unknown; nowait: unknown; timeout: unknown }, prefix: string, subject: string): ResolvedTableLock {
  const tables = parseTables(input.tables, fieldName(prefix, 'tables'), subject)
  const mode = parseLockMode(input.mode, fieldName(prefix, 'mode'))
  const nowait = optionalBoolean(input.nowait, fieldName(prefix, 'nowait'), subject) ?? false
  const timeout = optionalTimeout(input.timeout, fieldName(prefix, 'timeout'), subject)
  if (nowait && timeout !== undefined) {
    throw new InvalidOptionError(
      fieldName(prefix, 'timeout'),
      `Options "${fieldName(prefix, 'nowait')}" and "${fieldName(prefix, 'timeout')}" of ${subject} cannot be combined: NOWAIT fails at once, timeout waits up to that long. Choose one.`,
    )
  }
  return Object.freeze({
    tables: Object.freeze(tables.map((t) => t.text)),
    mode,
    nowait,
    timeout,
    statement: build(tables, mode, nowait, timeout),
  })
}

/**
 * The SQL that {@link lockTable} sends, without sending it (pure). Validates like `lockTable()`
 * and throws `InvalidOptionError` naming `tables`, `mode`, `nowait` or `timeout`.
 *
 * 1. The tables are de-duplicated and sorted into one canonical order (by table name, then schema;
 *    code-unit order), each part quoted: `LOCK TABLE "accounts", "public"."ledger" IN SHARE MODE`.
 * 2. `nowait` appends `NOWAIT`.
 * 3. `timeout` wraps the statement so that `lock_timeout` applies to it alone, in one
 *    simple-protocol string: `SELECT set_config('pga.saved_lock_timeout',
 *    current_setting('lock_timeout'), true); SET LOCAL lock_timeout = <ms>; LOCK TABLE ...;
 *    SELECT set_config('lock_timeout', current_setting('pga.saved_lock_timeout'), true)`.
 *
 * @example
 * ```ts
 * lockTableStatement(['ledger', 'accounts'], 'share row exclusive', { nowait: true })
 * // LOCK TABLE "accounts", "ledger" IN SHARE ROW EXCLUSIVE MODE NOWAIT
 * ```
 */
export function lockTableStatement(tables: string | readonly string[], mode: LockMode | string, options?: TableLockOptions): string {
  const o = checkOptionKeys(options, LOCK_OPTION_KEYS, '', 'lockTableStatement()')
  return resolve({ tables, mode, nowait: o['nowait'], timeout: o['timeout'] }, '', 'lockTableStatement()').statement
}

/**
 * Validates a table lock given as one object (the `lock` option of a block) and returns it frozen,
 * with its canonical table order and the statement to send. Errors are `InvalidOptionError`s whose
 * `field` is prefixed with `field` (`'lock.mode'`, `'lock.tables'`, ...). Sends nothing.
 *
 * @param field - the name of the option, for error messages. Default: `'lock'`.
 */
export function resolveTableLock(input: TableLockInput, field = 'lock'): ResolvedTableLock {
  const o = checkOptionKeys(input, LOCK_INPUT_KEYS, field, 'atomic()')
  if (!('tables' in o)) throw new InvalidOptionError(fieldName(field, 'tables'), `Option "${fieldName(field, 'tables')}" is missing: name the table(s) to lock.`)
  if (!('mode' in o)) throw new InvalidOptionError(fieldName(field, 'mode'), `Option "${fieldName(field, 'mode')}" is missing: choose the lock mode, e.g. 'share row exclusive'.`)
  return resolve({ tables: o['tables'], mode: o['mode'], nowait: o['nowait'], timeout: o['timeout'] }, field, 'atomic()')
}

/**
 * Sends a resolved table lock through `run` (a block's statement runner) and converts a `55P03`
 * into `LockNotAvailableError`; other errors are rethrown unchanged. For the block state machine.
 * @internal
 */
export async function runTableLock(lock: ResolvedTableLock, run: (sql: string) => Promise<unknown>): Promise<void> {
  try {
    await run(lock.statement)
  } catch (error) {
    throw lockNotAvailableFrom(error, { kind: 'table', tables: lock.tables }) ?? error
  }
}

/** The message of `lockTable()` outside a block. */
export const LOCK_TABLE_OUTSIDE_MESSAGE =
  'LOCK TABLE cannot be used outside of a transaction: call lockTable() inside an atomic() block (a lock taken in autocommit mode is released at once).'

/**
 * Locks one or several tables in the current `atomic()` block until its transaction ends
 * (`LOCK TABLE ... IN <mode> MODE`). There is no unlock: PostgreSQL releases table locks at
 * `COMMIT` or `ROLLBACK`, or at `ROLLBACK TO SAVEPOINT` when the lock was taken inside a nested
 * block that rolls back.
 *
 * 1. Everything is validated before any SQL: `tables` (`'table'` or `'schema.table'`, taken
 *    literally, quoted per part) and `mode` (one of the 8 modes, any case) → `InvalidOptionError`.
 * 2. Outside a block it throws `TransactionManagementError` before anything is sent.
 * 3. Several tables are locked in one statement, in one canonical order (see
 *    {@link lockTableStatement}), so two callers listing them differently cannot deadlock each other.
 * 4. `nowait`, or `timeout` (ms, for this statement only): a conflict then rejects with
 *    `LockNotAvailableError` (`code` `'55P03'`, `relation`), and the block must roll back.
 *
 * Default: waits as long as the transaction's `lock_timeout` allows; `using: 'default'`.
 *
 * @example
 * ```ts
 * await atomic(async () => {
 *   await lockTable(['accounts', 'ledger'], 'share row exclusive', { timeout: 2_000 })
 *   await db.query('insert into ledger(account_id, amount) select id, 0 from accounts')
 * })
 * ```
 */
export async function lockTable(tables: string | readonly string[], mode: LockMode | string, options?: LockTableOptions): Promise<void> {
  const o = checkOptionKeys(options, LOCK_TABLE_KEYS, '', 'lockTable()')
  const lock = resolve({ tables, mode, nowait: o['nowait'], timeout: o['timeout'] }, '', 'lockTable()')
  const using = optionalUsing(o['using'], 'lockTable()')
  const { block } = requireBlock(using, LOCK_TABLE_OUTSIDE_MESSAGE)
  await runTableLock(lock, (sql) => block.run(sql, undefined))
}
