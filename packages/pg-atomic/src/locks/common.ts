/**
 * What the lock helpers share: validation of names, options and timeouts, the SQL that applies a
 * `lock_timeout` to one statement, and finding the block a helper runs in.
 *
 * @module
 * @internal
 */
import { escapeIdentifier } from 'pg'
import type { Block } from '../atomic/block'
import { requireDatabase } from '../registry'
import type { DatabaseImpl } from '../database'
import { InvalidOptionError, TransactionManagementError } from '../errors'
import { MAX_TIMEOUT_MS } from '../vocabulary'

/** A table name split into its parts, with its quoted SQL form. @internal */
export interface QualifiedName {
  /** The schema, when the name was schema-qualified. */
  readonly schema: string | undefined
  /** The table (or alias) name. */
  readonly name: string
  /** The name as the caller wrote it, `schema.table` or `table`. */
  readonly text: string
  /** The SQL form, each part quoted: `"public"."accounts"`. */
  readonly sql: string
}

/** `field` of a nested option: `'tables'`, or `'lock.tables'` under `prefix` `'lock'`. */
export function fieldName(prefix: string, name: string): string {
  return prefix === '' ? name : `${prefix}.${name}`
}

function checkPart(part: string, field: string, subject: string): void {
  if (part.trim() === '') {
    throw new InvalidOptionError(field, `Invalid ${describeField(field)} for ${subject}: a table name must be a non-empty string such as 'accounts' or 'public.accounts', with no empty part around the dot.`)
  }
}

function describeField(field: string): string {
  return `option "${field}"`
}

/**
 * Parses `table` or `schema.table`. The parts are taken literally (exact case, as stored in
 * `pg_class`) and quoted by pg-atomic, so `'Accounts'` means the table created as `"Accounts"`.
 * @internal
 */
export function parseTableName(input: unknown, field: string, subject: string): QualifiedName {
  if (typeof input !== 'string') {
    throw new InvalidOptionError(field, `Invalid ${describeField(field)} for ${subject}: it must be a table name (a string such as 'accounts' or 'public.accounts') or a list of them.`)
  }
  if (input.includes('\0')) {
    throw new InvalidOptionError(field, `Invalid ${describeField(field)} for ${subject}: a table name cannot contain a NUL character.`)
  }
  if (input.includes('"')) {
    throw new InvalidOptionError(
      field,
      `Invalid ${describeField(field)} for ${subject}: table names are taken literally and quoted by pg-atomic, so they cannot contain double quotes; pass Accounts, not "Accounts" (and public.accounts, not "public"."accounts").`,
    )
  }
  const parts = input.split('.')
  if (parts.length > 2) {
    throw new InvalidOptionError(field, `Invalid ${describeField(field)} for ${subject}: a table name is 'table' or 'schema.table', with at most one dot.`)
  }
  for (const part of parts) checkPart(part, field, subject)
  const [first, second] = parts as [string, string | undefined]
  if (second === undefined) return Object.freeze({ schema: undefined, name: first, text: input, sql: escapeIdentifier(first) })
  return Object.freeze({ schema: first, name: second, text: input, sql: `${escapeIdentifier(first)}.${escapeIdentifier(second)}` })
}

/** An unqualified name (a table or alias in `FOR UPDATE OF`), quoted. @internal */
export function parseUnqualifiedName(input: unknown, field: string, subject: string): string {
  if (typeof input !== 'string' || input.trim() === '') {
    throw new InvalidOptionError(field, `Invalid ${describeField(field)} for ${subject}: it must be a table name or alias as written in the FROM clause (a non-empty string), or a list of them.`)
  }
  if (input.includes('\0')) {
    throw new InvalidOptionError(field, `Invalid ${describeField(field)} for ${subject}: a name cannot contain a NUL character.`)
  }
  if (input.includes('.') || input.includes('"')) {
    throw new InvalidOptionError(
      field,
      `Invalid ${describeField(field)} for ${subject}: name the table or its alias exactly as in the FROM clause, without schema and without quotes (PostgreSQL refuses qualified names in FOR UPDATE OF; pg-atomic quotes the name itself).`,
    )
  }
  return escapeIdentifier(input)
}

/** `undefined`, or `true`/`false`. @internal */
export function optionalBoolean(input: unknown, field: string, subject: string): boolean | undefined {
  if (input === undefined || typeof input === 'boolean') return input
  throw new InvalidOptionError(field, `Invalid ${describeField(field)} for ${subject}: it must be true or false.`)
}

/** `undefined`, or a whole number of milliseconds from 0 to 2147483647. @internal */
export function optionalTimeout(input: unknown, field: string, subject: string): number | undefined {
  if (input === undefined) return undefined
  if (typeof input === 'number' && Number.isInteger(input) && input >= 0 && input <= MAX_TIMEOUT_MS) return input
  throw new InvalidOptionError(field, `Invalid ${describeField(field)} for ${subject}: it must be a whole number of milliseconds from 0 to ${MAX_TIMEOUT_MS} (0 waits without limit).`)
}

/** `undefined` or a non-empty alias. @internal */
export function optionalUsing(input: unknown, subject: string): string {
  if (input === undefined) return 'default'
  if (typeof input === 'string' && input !== '') return input
  throw new InvalidOptionError('using', `Invalid option "using" for ${subject}: it must be a non-empty string naming a registered database.`)
}

/**
 * Checks that `options` is `undefined` or a plain object whose keys are all in `accepted`.
 * @internal
 */
export function checkOptionKeys(options: unknown, accepted: readonly string[], prefix: string, subject: string): Record<string, unknown> {
  if (options === undefined) return {}
  if (typeof options !== 'object' || options === null || Array.isArray(options)) {
    throw new InvalidOptionError(prefix === '' ? 'options' : prefix, `The ${prefix === '' ? 'options' : `"${prefix}" option`} of ${subject} must be an object.`)
  }
  for (const key of Object.keys(options)) {
    if (!accepted.includes(key)) {
      throw new InvalidOptionError(fieldName(prefix, key), `Unknown option "${fieldName(prefix, key)}" for ${subject}. The accepted options are: ${accepted.join(', ')}.`)
    }
  }
  return options as Record<string, unknown>
}

/** Saves the current `lock_timeout` (transaction-local) and sets a new one: `SET LOCAL` semantics. */
export function applyLockTimeoutStatement(ms: number): string {
  return `SELECT set_config('pga.saved_lock_timeout', current_setting('lock_timeout'), true); SET LOCAL lock_timeout = ${ms}`
}

/** Restores the `lock_timeout` saved by {@link applyLockTimeoutStatement} (transaction-local). */
export const RESTORE_LOCK_TIMEOUT = "SELECT set_config('lock_timeout', current_setting('pga.saved_lock_timeout'), true)"

/**
 * The database `using` names and its active block in the current async context. Throws
 * `TransactionManagementError` with `outsideMessage` outside a block (before anything is sent).
 * @internal
 */
export function requireBlock(using: string, outsideMessage: string): { db: DatabaseImpl; block: Block } {
  const db = requireDatabase(using)
  const block = db.activeBlock()
  if (block === undefined) throw new TransactionManagementError(outsideMessage)
  return { db, block }
}
