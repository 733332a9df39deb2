/**
 * The transaction-control statements pg-atomic sends (BEGIN, SET LOCAL, SAVEPOINT, RELEASE,
 * ROLLBACK TO, COMMIT, ROLLBACK), as pure builders. A leaf module.
 *
 * Identifiers are always quoted; option values are validated keywords or validated integers.
 *
 * @module
 * @internal
 */
import { escapeIdentifier } from 'pg'
import { TIMEOUT_SETTINGS } from '../vocabulary'
import type { IsolationLevel, TimeoutOption } from '../vocabulary'

/** The transaction characteristics that go on `BEGIN`. @internal */
export interface BeginCharacteristics {
  readonly isolationLevel: IsolationLevel | undefined
  readonly readOnly: boolean | undefined
  readonly deferrable: boolean | undefined
}

/** `BEGIN [ISOLATION LEVEL x] [READ ONLY|READ WRITE] [[NOT] DEFERRABLE]`. */
export function beginStatement(c: BeginCharacteristics): string {
  let sql = 'BEGIN'
  if (c.isolationLevel !== undefined) sql += ` ISOLATION LEVEL ${c.isolationLevel.toUpperCase()}`
  if (c.readOnly !== undefined) sql += c.readOnly ? ' READ ONLY' : ' READ WRITE'
  if (c.deferrable !== undefined) sql += c.deferrable ? ' DEFERRABLE' : ' NOT DEFERRABLE'
  return sql
}

/** `SET LOCAL <setting> = <ms>`; `ms` is a validated integer. */
export function setLocalStatement(option: TimeoutOption, ms: number): string {
  return `SET LOCAL ${TIMEOUT_SETTINGS[option]} = ${ms}`
}

/** `SET LOCAL <setting> TO DEFAULT`, restoring the session value after a nested block. */
export function resetLocalStatement(option: TimeoutOption): string {
  return `SET LOCAL ${TIMEOUT_SETTINGS[option]} TO DEFAULT`
}

/** Savepoint name: fixed prefix + per-transaction counter. */
export function savepointName(counter: number): string {
  return `pga_${counter}`
}

/** `SAVEPOINT "name"`. */
export function savepointStatement(name: string): string {
  return `SAVEPOINT ${escapeIdentifier(name)}`
}

/** `RELEASE SAVEPOINT "name"`. */
export function releaseStatement(name: string): string {
  return `RELEASE SAVEPOINT ${escapeIdentifier(name)}`
}

/** `ROLLBACK TO SAVEPOINT "name"`. */
export function rollbackToStatement(name: string): string {
  return `ROLLBACK TO SAVEPOINT ${escapeIdentifier(name)}`
}

/** `COMMIT`. */
export const COMMIT = 'COMMIT'
/** `ROLLBACK`. */
export const ROLLBACK = 'ROLLBACK'
