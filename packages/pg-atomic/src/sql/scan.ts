/**
 * Recognises transaction-control statements in user SQL with the one lexer (`./lexer`), so quoted
 * strings, quoted identifiers, dollar-quoted bodies and comments are skipped. On the path of every
 * statement: a statement that does not start with a control word's initial and contains no `;`
 * is answered without allocating.
 *
 * @module
 * @internal
 */
import { readKeyword, skipInsignificant, tokenEnd } from './lexer'

const TRANSACTION_SETTINGS = new Set(['transaction_isolation', 'transaction_read_only', 'transaction_deferrable'])
const CONTROL_WORDS = new Set(['begin', 'start', 'commit', 'end', 'rollback', 'abort', 'savepoint', 'release'])

/** First letters (lower case) of the words {@link controlWordAt} looks for. */
const CONTROL_INITIALS = new Set([97, 98, 99, 101, 112, 114, 115]) // a b c e p r s

const SEMICOLON = 59

/** Classifies the statement that starts at `i` (after insignificant characters). */
function controlWordAt(sql: string, i: number): string | undefined {
  const start = skipInsignificant(sql, i)
  // Fast path: most statements start with a letter no control word starts with (insert, update, with, ...).
  if (!CONTROL_INITIALS.has(sql.charCodeAt(start) | 0x20)) return undefined
  const word = readKeyword(sql, start)
  if (CONTROL_WORDS.has(word)) return word.toUpperCase()
  if (word === 'prepare' || word === 'set') {
    const nextStart = skipInsignificant(sql, start + word.length)
    const next = readKeyword(sql, nextStart)
    if (word === 'prepare' && next === 'transaction') return 'PREPARE TRANSACTION'
    if (word === 'set') {
      if (next === 'transaction') return 'SET TRANSACTION'
      let setting = next
      if (next === 'local' || next === 'session') {
        setting = readKeyword(sql, skipInsignificant(sql, nextStart + next.length))
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
  let i = skipInsignificant(sql, 0)
  while (i < n) {
    if (sql.charCodeAt(i) === SEMICOLON) {
      const found = controlWordAt(sql, i + 1)
      if (found !== undefined) return found
      i = skipInsignificant(sql, i + 1)
    } else i = skipInsignificant(sql, tokenEnd(sql, i))
  }
  return undefined
}

/**
 * Whether `sql` holds more than one statement: a `;` outside strings, quoted identifiers,
 * dollar-quoted bodies and comments, followed by anything significant. Conservative: a `;` inside
 * a `BEGIN ATOMIC ... END` function body also counts (such SQL then simply keeps the simple
 * protocol). Allocation-free; no `;` at all is the fast path.
 */
export function hasSeveralStatements(sql: string): boolean {
  if (sql.indexOf(';') === -1) return false
  const n = sql.length
  let inStatement = false
  let ended = false
  let i = skipInsignificant(sql, 0)
  while (i < n) {
    if (sql.charCodeAt(i) === SEMICOLON) {
      if (inStatement) ended = true
      inStatement = false
      i = skipInsignificant(sql, i + 1)
      continue
    }
    // A token after a completed statement starts a second one.
    if (ended) return true
    inStatement = true
    i = skipInsignificant(sql, tokenEnd(sql, i))
  }
  return false
}
