/**
 * The statements of the lock helpers, as pure builders: `LOCK TABLE`, the row-locking clause,
 * advisory lock and unlock, and the `lock_timeout` that applies to one statement only. A leaf
 * module: identifiers arrive quoted by `./identifier`, modes and strengths validated, numbers
 * validated integers; keys are always parameters.
 *
 * @module
 * @internal
 */
import type { LockMode, RowLockStrength } from '../vocabulary'
import { COMMIT, ROLLBACK } from './transaction'

/** `LOCK TABLE <tables> IN <MODE> MODE [NOWAIT]`; `quotedTables` already quoted and in canonical order. @internal */
export function lockTableSql(quotedTables: readonly string[], mode: LockMode, nowait: boolean): string {
  return `LOCK TABLE ${quotedTables.join(', ')} IN ${mode.toUpperCase()} MODE${nowait ? ' NOWAIT' : ''}`
}

/**
 * Saves the current `lock_timeout` in a transaction-local custom setting and sets a new one
 * (`SET LOCAL` semantics: a rollback undoes both). @internal
 */
export function applyLockTimeoutSql(ms: number): string {
  return (
    `SELECT set_config('pga.saved_lock_timeout', current_setting('lock_timeout'), true); SET LOCAL ` +
    `lock_timeout = ${ms}`
  )
}

/** Restores the `lock_timeout` saved by {@link applyLockTimeoutSql} (transaction-local). @internal */
export const RESTORE_LOCK_TIMEOUT_SQL =
  "SELECT set_config('lock_timeout', current_setting('pga.saved_lock_timeout'), true)"

/**
 * `statement` with its own `lock_timeout`, in one simple-protocol string (one round trip): save
 * and set, the statement, restore. @internal
 */
export function withStatementLockTimeoutSql(statement: string, ms: number): string {
  return `${applyLockTimeoutSql(ms)}; ${statement}; ${RESTORE_LOCK_TIMEOUT_SQL}`
}

/** `FOR <STRENGTH> [OF "a", "b"] [NOWAIT | SKIP LOCKED]`; `quotedOf` already quoted. @internal */
export function rowLockClauseSql(
  strength: RowLockStrength,
  quotedOf: readonly string[],
  nowait: boolean,
  skipLocked: boolean,
): string {
  let sql = `FOR ${strength.toUpperCase()}`
  if (quotedOf.length > 0) sql += ` OF ${quotedOf.join(', ')}`
  if (nowait) sql += ' NOWAIT'
  if (skipLocked) sql += ' SKIP LOCKED'
  return sql
}

/**
 * `text` (a `SELECT` without locking clause) with `clause` appended on a new line, trailing
 * whitespace and semicolons removed first; the newline ends a trailing `--` comment. @internal
 */
export function appendLockClauseSql(text: string, clause: string): string {
  return `${text.replace(/[\s;]+$/, '')}\n${clause}`
}

/** An advisory lock key as PostgreSQL receives it: one `bigint`, or two `int4`. @internal */
export type AdvisoryKeyValue = bigint | readonly [number, number]

/** A statement with its parameters. @internal */
export interface ParameterizedSql {
  readonly text: string
  readonly values: unknown[]
}

/** `$1::bigint` or `$1::int, $2::int`, and the parameters. */
function keyArguments(key: AdvisoryKeyValue): { sql: string; values: unknown[] } {
  return typeof key === 'bigint'
    ? { sql: '$1::bigint', values: [key.toString()] }
    : { sql: '$1::int, $2::int', values: [key[0], key[1]] }
}

/**
 * `SELECT pg_[try_]advisory_[xact_]lock[_shared](key)`; the try form (`wait: false`) names its
 * result `acquired`. @internal
 */
export function advisoryLockSql(
  key: AdvisoryKeyValue,
  level: 'xact' | 'session',
  shared: boolean,
  wait: boolean,
): ParameterizedSql {
  const args = keyArguments(key)
  const fn = `pg_${wait ? '' : 'try_'}advisory_${level === 'xact' ? 'xact_' : ''}lock${shared ? '_shared' : ''}`
  return { text: wait ? `SELECT ${fn}(${args.sql})` : `SELECT ${fn}(${args.sql}) AS acquired`, values: args.values }
}

/** `SELECT pg_advisory_unlock[_shared](key) AS released`. @internal */
export function advisoryUnlockSql(key: AdvisoryKeyValue, shared: boolean): ParameterizedSql {
  const args = keyArguments(key)
  return { text: `SELECT pg_advisory_unlock${shared ? '_shared' : ''}(${args.sql}) AS released`, values: args.values }
}

/**
 * `BEGIN; SET LOCAL lock_timeout = <ms>`: the short transaction in which `withAdvisoryLock()`
 * takes a session lock with a timeout, so that no setting outlives the call. @internal
 */
export function beginWithLockTimeoutSql(ms: number): string {
  return `BEGIN; SET LOCAL lock_timeout = ${ms}`
}

export { COMMIT as COMMIT_SQL, ROLLBACK as ROLLBACK_SQL }

/**
 * The SQL expression that computes `advisoryKey()` on the server, for other clients (built-in
 * `sha256()`, PostgreSQL 11+): `$1` is the text, `$2` the namespace.
 *
 * With pgcrypto, `digest(convert_to(...), 'sha256')` in place of `sha256(convert_to(...))` gives
 * the same value.
 */
export const ADVISORY_KEY_SQL =
  "('x' || encode(substr(sha256(convert_to($2::text || ':' || $1::text, 'UTF8')), 1, 8), 'hex'))::bit(64)::bigint"
