/**
 * A table lock, validated and turned into its statement: what `lockTable()` and the `lock` option
 * of `atomic()` / `@Atomic()` share. Pure (it sends nothing) and low in the import graph: its
 * closure never reaches `database.ts`, `atomic/` or `options.ts`, so `options.ts` can use it.
 *
 * @module
 * @internal
 */
import { z } from 'zod'
import { InvalidOptionError, lockNotAvailableFrom } from '../errors'
import { quoteIdentifier } from '../sql/identifier'
import { lockTableSql, withStatementLockTimeoutSql } from '../sql/locks'
import { parseOptions } from '../validation'
import type { LockMode } from '../vocabulary'
import { LOCK_MODE_EXPECTATION, lockModeSchema } from './modes'
import { TABLES_EXPECTATION, TIMEOUT_MS_EXPECTATION, tablesSchema, timeoutMsSchema } from './schemas'

/** How a table lock waits: the options of `lockTable()` and of the `lock` option of a block. */
export interface TableLockOptions {
  /**
   * Fail at once with `LockNotAvailableError` (`NOWAIT`) instead of waiting when another
   * transaction holds a conflicting lock. Cannot be combined with `timeoutMs`. Default: `false`.
   */
  nowait?: boolean
  /**
   * Wait at most this many milliseconds for the lock (`lock_timeout` for this statement only; the
   * previous value is restored afterwards), then fail with `LockNotAvailableError`. A whole number
   * from 0 to 2147483647; `0` waits without limit. Default: the transaction's `lock_timeout` (the
   * block's `lockTimeout` option, else the server's setting).
   */
  timeoutMs?: number
}

/** The `lock` option of `atomic()` / `@Atomic()`: a table lock taken when the block starts. */
export interface TableLockInput extends TableLockOptions {
  /**
   * One table name or a list: `'table'` or `'schema.table'`, taken literally (exact case, quoted
   * by pg-atomic, so `'Accounts'` is the table created as `"Accounts"`); each part at most 63
   * bytes of UTF-8.
   */
  tables: string | readonly string[]
  /**
   * One of PostgreSQL's 8 table lock modes (`'access share'` ... `'access exclusive'`, any case, or a `pg_locks`
   * name).
   */
  mode: LockMode | string
}

/** A validated table lock (frozen). @internal */
export interface ResolvedTableLock {
  /** The tables in canonical order, de-duplicated, as the caller spelled them (`'public.accounts'`). */
  readonly tables: readonly string[]
  /** The validated lock mode (lower case). */
  readonly mode: LockMode
  /** Whether `NOWAIT` is used. */
  readonly nowait: boolean
  /** The statement's own `lock_timeout` in ms, or `undefined`. */
  readonly timeoutMs: number | undefined
  /** The SQL text to send (one simple-protocol string, one round trip). */
  readonly statement: string
}

/** What the `lock` option of a block must be, for messages (also used by `options.ts`). @internal */
export const TABLE_LOCK_OPTION_EXPECTATION =
  "an object { tables, mode, nowait?, timeoutMs? }, e.g. { tables: 'accounts', mode: 'share row exclusive' }"

/** A table name split into its parts, with its quoted SQL form. */
interface QualifiedName {
  readonly schema: string | undefined
  readonly name: string
  /** As the caller wrote it. */
  readonly text: string
  /** Each part quoted: `"public"."accounts"`. */
  readonly sql: string
}

/** Splits a validated name (see `./schemas`) into its parts. */
function qualify(text: string): QualifiedName {
  const dot = text.indexOf('.')
  if (dot === -1) return { schema: undefined, name: text, text, sql: quoteIdentifier(text) }
  const schema = text.slice(0, dot)
  const name = text.slice(dot + 1)
  return { schema, name, text, sql: `${quoteIdentifier(schema)}.${quoteIdentifier(name)}` }
}

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

/** `'tables'`, or `'lock.tables'` under prefix `'lock'`. */
function dotted(prefix: string, name: string): string {
  return prefix === '' ? name : `${prefix}.${name}`
}

/** The fields of a table lock and what each must be, under `prefix`. */
function expectations(prefix: string): Record<string, string> {
  return {
    ...(prefix === '' ? {} : { [prefix]: TABLE_LOCK_OPTION_EXPECTATION }),
    [dotted(prefix, 'tables')]: TABLES_EXPECTATION,
    [dotted(prefix, 'mode')]: LOCK_MODE_EXPECTATION,
    [dotted(prefix, 'nowait')]: 'true or false',
    [dotted(prefix, 'timeoutMs')]: TIMEOUT_MS_EXPECTATION,
  }
}

const tableLockShape = {
  tables: tablesSchema,
  mode: lockModeSchema,
  nowait: z.boolean().optional(),
  timeoutMs: timeoutMsSchema.optional(),
}

/** The schema of `lockTable()`'s two arguments. */
const argumentsSchema = z.strictObject({ tables: tableLockShape.tables, mode: tableLockShape.mode })

/** Builds the frozen lock from validated values; refuses `nowait` with `timeoutMs`. */
function build(
  tables: string | readonly string[],
  mode: LockMode,
  nowait: boolean,
  timeoutMs: number | undefined,
  prefix: string,
  subject: string,
): ResolvedTableLock {
  if (nowait && timeoutMs !== undefined) {
    const field = dotted(prefix, 'timeoutMs')
    throw new InvalidOptionError(
      field,
      `Invalid option "${field}" for ${subject}: it cannot be combined with "${dotted(prefix, 'nowait')}": ` +
        `NOWAIT fails at once, timeoutMs waits up to that long. Choose one.`,
    )
  }
  const names = canonical((typeof tables === 'string' ? [tables] : tables).map(qualify))
  const lock = lockTableSql(
    names.map((n) => n.sql),
    mode,
    nowait,
  )
  return Object.freeze({
    tables: Object.freeze(names.map((n) => n.text)),
    mode,
    nowait,
    timeoutMs,
    statement: timeoutMs === undefined ? lock : withStatementLockTimeoutSql(lock, timeoutMs),
  })
}

/**
 * Validates the arguments of `subject` (`lockTable()`) and returns the frozen lock with its
 * statement. `InvalidOptionError` names `tables`, `mode`, `nowait` or `timeoutMs`. @internal
 */
export function resolveTableLockArguments(
  tables: unknown,
  mode: unknown,
  options: TableLockOptions,
  subject: string,
): ResolvedTableLock {
  const args = parseOptions(argumentsSchema, { tables, mode }, subject, expectations(''))
  return build(args.tables, args.mode, options.nowait ?? false, options.timeoutMs, '', subject)
}

/**
 * Validates a table lock given as one object (the `lock` option of a block) and returns it frozen,
 * with its canonical table order and the statement to send. Errors are `InvalidOptionError`s whose
 * `field` is prefixed with `field` (`'lock.mode'`, `'lock.tables'`, ...). Sends nothing.
 *
 * @param field - the name of the option, for error messages. Default: `'lock'`.
 * @param subject - the function named in error messages. Default: `'atomic()'`.
 * @internal
 */
export function resolveTableLock(input: unknown, field = 'lock', subject = 'atomic()'): ResolvedTableLock {
  const parsed = parseOptions(
    z.strictObject({ [field]: z.strictObject(tableLockShape) }),
    { [field]: input },
    subject,
    expectations(field),
  )
  const lock = parsed[field] as z.output<z.ZodObject<typeof tableLockShape>>
  return build(lock.tables, lock.mode, lock.nowait ?? false, lock.timeoutMs, field, subject)
}

/**
 * The statement `lockTable()` sends, without sending it. Validates like `lockTable()`.
 *
 * 1. The tables are de-duplicated and sorted into one canonical order (by table name, then schema;
 *    code-unit order), each part quoted: `LOCK TABLE "accounts", "public"."ledger" IN SHARE MODE`.
 * 2. `nowait` appends `NOWAIT`.
 * 3. `timeoutMs` wraps the statement so that `lock_timeout` applies to it alone, in one
 *    simple-protocol string: `SELECT set_config('pga.saved_lock_timeout',
 *    current_setting('lock_timeout'), true); SET LOCAL lock_timeout = <ms>; LOCK TABLE ...;
 *    SELECT set_config('lock_timeout', current_setting('pga.saved_lock_timeout'), true)`.
 * @internal
 */
export function lockTableStatement(
  tables: string | readonly string[],
  mode: LockMode | string,
  options: TableLockOptions = {},
): string {
  const subject = 'lockTableStatement()'
  const o = parseOptions(
    z.strictObject({ nowait: tableLockShape.nowait, timeoutMs: tableLockShape.timeoutMs }),
    options,
    subject,
    expectations(''),
  )
  return resolveTableLockArguments(tables, mode, o, subject).statement
}

/**
 * Sends a resolved table lock through `run` (a block's statement runner) and converts a `55P03`
 * into `LockNotAvailableError`; other errors are rethrown unchanged. For `lockTable()` and for the
 * block state machine (the `lock` option).
 * @internal
 */
export async function runTableLock(lock: ResolvedTableLock, run: (sql: string) => Promise<unknown>): Promise<void> {
  try {
    await run(lock.statement)
  } catch (error) {
    throw lockNotAvailableFrom(error, { kind: 'table', tables: lock.tables }) ?? error
  }
}
