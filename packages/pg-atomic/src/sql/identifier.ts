/**
 * SQL identifiers: the one quoting function of the lock and insight code, and the rules a name
 * must follow before it is quoted. A leaf module.
 *
 * PostgreSQL truncates an identifier longer than 63 bytes (NAMEDATALEN − 1) without an error, so
 * `'a'.repeat(63) + '_other'` would name the table `aaa…a`: such names are refused, never sent.
 *
 * @module
 * @internal
 */
import { MAX_IDENTIFIER_BYTES } from '../vocabulary'

/**
 * Quotes `name` as a delimited identifier, the standard way: wrapped in double quotes, each double
 * quote inside doubled (`we"ird` → `"we""ird"`), exactly like `pg.escapeIdentifier`. The name must
 * have passed {@link identifierProblem} (no NUL character, at most 63 bytes).
 * @internal
 */
export function quoteIdentifier(name: string): string {
  return `"${name.replace(/"/g, '""')}"`
}

/** The length of `name` in bytes of UTF-8, the unit of PostgreSQL's identifier limit. @internal */
export function identifierBytes(name: string): number {
  return Buffer.byteLength(name, 'utf8')
}

/**
 * Why `name` cannot be used as one identifier (one part of a qualified name), or `undefined` when
 * it can: `'empty'` (a zero-length delimited identifier is an error in PostgreSQL), `'nul'`
 * (PostgreSQL strings cannot contain NUL), `'too long'` (more than 63 bytes of UTF-8: the server
 * would truncate it and use another name).
 * @internal
 */
export function identifierProblem(name: string): 'empty' | 'nul' | 'too long' | undefined {
  if (name === '') return 'empty'
  if (name.includes('\0')) return 'nul'
  // A UTF-16 code unit is at most 3 bytes of UTF-8: short names need no byte count.
  if (name.length * 3 > MAX_IDENTIFIER_BYTES && identifierBytes(name) > MAX_IDENTIFIER_BYTES) return 'too long'
  return undefined
}
