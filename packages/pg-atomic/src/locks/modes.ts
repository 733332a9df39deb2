/**
 * Table lock modes as the lock helpers accept them: `LOCK TABLE`'s words in any case
 * (`'ACCESS EXCLUSIVE'`, `'row exclusive'`) or `pg_locks` names (`'RowExclusiveLock'`).
 *
 * @module
 * @internal
 */
import { z } from 'zod'
import { parseOptions } from '../validation'
import { LOCK_MODES, PG_LOCK_MODE_NAMES } from '../vocabulary'
import type { LockMode } from '../vocabulary'

const BY_PG_NAME = new Map<string, LockMode>(LOCK_MODES.map((m) => [PG_LOCK_MODE_NAMES[m].toLowerCase(), m]))

/** The lock mode `input` names, or `undefined`. @internal */
export function normalizeLockMode(input: unknown): LockMode | undefined {
  if (typeof input !== 'string') return undefined
  const normalized = input.trim().toLowerCase().replace(/\s+/g, ' ')
  if ((LOCK_MODES as readonly string[]).includes(normalized)) return normalized as LockMode
  return BY_PG_NAME.get(normalized)
}

/** What a lock mode must be, for messages. @internal */
export const LOCK_MODE_EXPECTATION =
  `one of ${LOCK_MODES.map((m) => `'${m}'`).join(', ')} (any case), ` + "or a pg_locks name such as 'RowExclusiveLock'"

/** A lock mode, normalized to `LOCK_MODES` words. @internal */
export const lockModeSchema = z
  .custom<LockMode | string>((v) => normalizeLockMode(v) !== undefined)
  .transform((v) => normalizeLockMode(v) as LockMode)

/**
 * Validates a table lock mode: `LOCK TABLE`'s words in any case (`'ACCESS EXCLUSIVE'`,
 * `'row exclusive'`) or a `pg_locks` name (`'RowExclusiveLock'`), and returns it in
 * `LOCK_MODES` words. Anything else is an `InvalidOptionError` naming `field` and the
 * allowed values.
 *
 * @param field - the name used in the error. Default: `'mode'`.
 * @param subject - the function named in the error. Default: `'parseLockMode()'`.
 *
 * @example
 * ```ts
 * parseLockMode('RowExclusiveLock') // 'row exclusive'
 * ```
 */
export function parseLockMode(input: unknown, field = 'mode', subject = 'parseLockMode()'): LockMode {
  const parsed = parseOptions(z.strictObject({ [field]: lockModeSchema }), { [field]: input }, subject, {
    [field]: LOCK_MODE_EXPECTATION,
  })
  return parsed[field] as LockMode
}
