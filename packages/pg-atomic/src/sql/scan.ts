/**
 * Recognises transaction-control statements in user SQL, skipping quoted strings, quoted
 * identifiers, dollar-quoted bodies and comments. Allocation-free on the hot path. A leaf module.
 *
 * @module
 * @internal
 */

const TRANSACTION_SETTINGS = new Set(['transaction_isolation', 'transaction_read_only', 'transaction_deferrable'])
const CONTROL_WORDS = new Set(['begin', 'start', 'commit', 'end', 'rollback', 'abort', 'savepoint', 'release'])

function isSpace(code: number): boolean {
  return code === 32 || (code >= 9 && code <= 13)
}

function isWordChar(code: number): boolean {
  return (code >= 97 && code <= 122) || (code >= 65 && code <= 90) || code === 95
}

/** Skips whitespace and comments from `i`; returns the index of the next significant character. */
function skipInsignificant(sql: string, i: number): number {
  const n = sql.length
  while (i < n) {
    const c = sql.charCodeAt(i)
    if (isSpace(c)) i++
    else if (c === 45 /* - */ && sql.charCodeAt(i + 1) === 45) {
      const nl = sql.indexOf('\n', i)
      i = nl === -1 ? n : nl + 1
    } else if (c === 47 /* / */ && sql.charCodeAt(i + 1) === 42 /* * */) {
      let depth = 1
      i += 2
      while (i < n && depth > 0) {
        if (sql.charCodeAt(i) === 47 && sql.charCodeAt(i + 1) === 42) { depth++; i += 2 }
        else if (sql.charCodeAt(i) === 42 && sql.charCodeAt(i + 1) === 47) { depth--; i += 2 }
        else i++
      }
    } else break
  }
  return i
}

/** A character that can continue an identifier (letters, digits, _, $). */
function isIdentChar(code: number): boolean {
  return isWordChar(code) || (code >= 48 && code <= 57) || code === 36 || code > 127
}

function readWord(sql: string, i: number): string {
  let j = i
  // No control word is longer than 15 letters: stop early instead of copying long identifiers.
  while (j < sql.length && j - i <= 15 && isWordChar(sql.charCodeAt(j))) j++
  return sql.slice(i, j).toLowerCase()
}

/** First letters (lower case) of the words {@link controlWordAt} looks for. */
const CONTROL_INITIALS = new Set([97, 98, 99, 101, 112, 114, 115]) // a b c e p r s

/** Classifies the statement that starts at `i` (after insignificant characters). */
function controlWordAt(sql: string, i: number): string | undefined {
  const start = skipInsignificant(sql, i)
  // Fast path: most statements start with a letter no control word starts with (insert, update, with, ...).
  if (!CONTROL_INITIALS.has(sql.charCodeAt(start) | 0x20)) return undefined
  const word = readWord(sql, start)
  if (CONTROL_WORDS.has(word)) return word.toUpperCase()
  if (word === 'prepare' || word === 'set') {
    const nextStart = skipInsignificant(sql, start + word.length)
    const next = readWord(sql, nextStart)
    if (word === 'prepare' && next === 'transaction') return 'PREPARE TRANSACTION'
    if (word === 'set') {
      if (next === 'transaction') return 'SET TRANSACTION'
      let setting = next
      if (next === 'local' || next === 'session') {
        setting = readWord(sql, skipInsignificant(sql, nextStart + next.length))
        if (next === 'session' && setting === 'characteristics') return 'SET SESSION CHARACTERISTICS'
      }
      // Changing these settings changes the running transaction (or every later one of the session).
      if (TRANSACTION_SETTINGS.has(setting)) return `SET ${setting}`
    }
  }
  return undefined
}

/**
 * Returns the transaction-control command (`'BEGIN'`, `'COMMIT'`, `'SAVEPOINT'`, ...) found at the
 * start of any statement of `sql`, or `undefined`. Quoted strings, quoted identifiers,
 * dollar-quoted bodies and comments are skipped, so `insert ... values ('; commit')` is not a match.
 */
export function findTransactionControl(sql: string): string | undefined {
  const first = controlWordAt(sql, 0)
  if (first !== undefined || sql.indexOf(';') === -1) return first
  const n = sql.length
  let i = 0
  while (i < n) {
    const c = sql.charCodeAt(i)
    if (c === 39 /* ' */) {
      // Backslash escapes exist only in E'...' strings (standard_conforming_strings is on by default).
      const escapes = i > 0 && (sql.charCodeAt(i - 1) | 0x20) === 101 /* e */ && (i < 2 || !isIdentChar(sql.charCodeAt(i - 2)))
      i++
      while (i < n) {
        const d = sql.charCodeAt(i)
        if (d === 39) {
          if (sql.charCodeAt(i + 1) === 39) i += 2
          else break
        } else if (escapes && d === 92 /* \ */) i += 2
        else i++
      }
      i++
    } else if (c === 34 /* " */) {
      const end = sql.indexOf('"', i + 1)
      i = end === -1 ? n : end + 1
    } else if (c === 36 /* $ */ && (i === 0 || !isIdentChar(sql.charCodeAt(i - 1)))) {
      const m = /^\$([A-Za-z_][A-Za-z_0-9]*)?\$/.exec(sql.slice(i, i + 64))
      if (m === null) { i++; continue }
      const tag = m[0]
      const end = sql.indexOf(tag, i + tag.length)
      i = end === -1 ? n : end + tag.length
    } else if ((c === 45 && sql.charCodeAt(i + 1) === 45) || (c === 47 && sql.charCodeAt(i + 1) === 42)) {
      i = skipInsignificant(sql, i)
    } else if (c === 59 /* ; */) {
      const found = controlWordAt(sql, i + 1)
      if (found !== undefined) return found
      i++
    } else i++
  }
  return undefined
}
