/**
 * PostgreSQL's eight table-level lock modes as data: the conflict matrix, and which statements
 * take each mode. Verified against PostgreSQL 15 (see docs/guide/locking.md) and the table in the
 * manual ("Explicit Locking → Table-Level Locks").
 *
 * @module
 */
import { parseLockMode } from '../locks/modes'
import { LOCK_MODES } from '../vocabulary'
import type { LockMode } from '../vocabulary'

// Rows: requested mode; columns: held mode; in LOCK_MODES order. Symmetric.
const X = true
const _ = false
const MATRIX: readonly (readonly boolean[])[] = [
  [_, _, _, _, _, _, _, X], // access share
  [_, _, _, _, _, _, X, X], // row share
  [_, _, _, _, X, X, X, X], // row exclusive
  [_, _, _, X, X, X, X, X], // share update exclusive
  [_, _, X, X, _, X, X, X], // share
  [_, _, X, X, X, X, X, X], // share row exclusive
  [_, X, X, X, X, X, X, X], // exclusive
  [X, X, X, X, X, X, X, X], // access exclusive
]

/**
 * The full 8×8 conflict matrix: `LOCK_CONFLICT_MATRIX[i][j]` is `true` when mode `LOCK_MODES[i]`
 * requested by one transaction conflicts with `LOCK_MODES[j]` held by another. (A transaction never
 * conflicts with its own locks.)
 */
export const LOCK_CONFLICT_MATRIX: readonly (readonly boolean[])[] = Object.freeze(
  MATRIX.map((row) => Object.freeze([...row])),
)

/** Statements that take each mode (observed in `pg_locks` on PostgreSQL 15 unless the manual says so). */
export const LOCK_TAKEN_BY: Readonly<Record<LockMode, readonly string[]>> = Object.freeze({
  'access share': ['SELECT'],
  'row share': ['SELECT ... FOR UPDATE / FOR NO KEY UPDATE / FOR SHARE / FOR KEY SHARE'],
  'row exclusive': ['INSERT', 'UPDATE', 'DELETE', 'MERGE'],
  'share update exclusive': [
    'VACUUM (not FULL)',
    'ANALYZE',
    'CREATE INDEX CONCURRENTLY',
    'CREATE STATISTICS',
    'COMMENT ON',
    'ALTER TABLE ... VALIDATE CONSTRAINT',
    'ALTER TABLE ... SET (storage parameter)',
  ],
  share: ['CREATE INDEX (not CONCURRENTLY)'],
  'share row exclusive': ['CREATE TRIGGER', 'ALTER TABLE ... ADD FOREIGN KEY (on both tables)'],
  exclusive: ['REFRESH MATERIALIZED VIEW CONCURRENTLY'],
  'access exclusive': [
    'DROP TABLE',
    'TRUNCATE',
    'ALTER TABLE (most forms)',
    'CLUSTER',
    'VACUUM FULL',
    'REFRESH MATERIALIZED VIEW',
    'LOCK TABLE (default mode)',
  ],
})

function indexOf(mode: LockMode): number {
  return LOCK_MODES.indexOf(mode)
}

/**
 * Whether a lock in mode `requested` conflicts with a lock in mode `held` taken by another
 * transaction. Modes in `LOCK TABLE` words (any case) or `pg_locks` names; anything else is an
 * `InvalidOptionError` naming `requested` or `held`.
 *
 * @example
 * ```ts
 * conflicts('row exclusive', 'share') // true: INSERT waits for CREATE INDEX
 * ```
 */
export function conflicts(requested: LockMode | string, held: LockMode | string): boolean {
  const row = MATRIX[indexOf(parseLockMode(requested, 'requested', 'conflicts()'))] as readonly boolean[]
  return row[indexOf(parseLockMode(held, 'held', 'conflicts()'))] === true
}

/** The modes that conflict with `mode`, weakest first. */
export function conflictingModes(mode: LockMode | string): readonly LockMode[] {
  const row = MATRIX[indexOf(parseLockMode(mode, 'mode', 'conflictingModes()'))] as readonly boolean[]
  return LOCK_MODES.filter((_m, i) => row[i] === true)
}

/**
 * The statements (of other transactions) that a lock in `mode` blocks, e.g. `['ALTER TABLE (most forms)', 'VACUUM
 * FULL', ...]`.
 */
export function blockedStatements(mode: LockMode | string): readonly string[] {
  return conflictingModes(mode).flatMap((m) => LOCK_TAKEN_BY[m])
}
