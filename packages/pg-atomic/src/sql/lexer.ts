/**
 * The one SQL lexer of pg-atomic: where a token ends, skipping quoted strings (`'...'`, `E'...'`),
 * quoted identifiers, dollar-quoted bodies and comments (nested block comments included). A leaf
 * module.
 *
 * Two readers use it: `findTransactionControl()` (on the path of every statement, so the scanning
 * functions here work on character codes and allocate nothing) and the statement classifier of
 * `explainLocks()`, which asks for whole statements of tokens ({@link splitStatements}).
 *
 * Strings follow PostgreSQL's defaults: `standard_conforming_strings` is on, so a backslash is an
 * ordinary character in `'...'` and escapes only in `E'...'`.
 *
 * @module
 * @internal
 */

/** Character codes the lexer looks at. */
const QUOTE = 39 // '
const DOUBLE_QUOTE = 34 // "
const DOLLAR = 36 // $
const DASH = 45 // -
const SLASH = 47 // /
const STAR = 42 // *
const BACKSLASH = 92 // \
const SEMICOLON = 59

/** Whitespace as PostgreSQL's scanner sees it: space, \t, \n, \v, \f, \r. @internal */
export function isSpace(code: number): boolean {
  return code === 32 || (code >= 9 && code <= 13)
}

/** An ASCII letter or `_`. @internal */
export function isAsciiWordChar(code: number): boolean {
  return (code >= 97 && code <= 122) || (code >= 65 && code <= 90) || code === 95
}

/** A character that can start an identifier or keyword: a letter, `_`, or any non-ASCII character. @internal */
export function isIdentStart(code: number): boolean {
  return isAsciiWordChar(code) || code > 127
}

/** A character that can continue an identifier: those of {@link isIdentStart}, digits and `$`. @internal */
export function isIdentChar(code: number): boolean {
  return isIdentStart(code) || (code >= 48 && code <= 57) || code === DOLLAR
}

/**
 * Skips whitespace and comments from `i`; returns the index of the next significant character (or `sql.length`).
 * @internal
 */
export function skipInsignificant(sql: string, i: number): number {
  const n = sql.length
  while (i < n) {
    const c = sql.charCodeAt(i)
    if (isSpace(c)) i++
    else if (c === DASH && sql.charCodeAt(i + 1) === DASH) {
      const nl = sql.indexOf('\n', i)
      i = nl === -1 ? n : nl + 1
    } else if (c === SLASH && sql.charCodeAt(i + 1) === STAR) {
      let depth = 1
      i += 2
      while (i < n && depth > 0) {
        const d = sql.charCodeAt(i)
        if (d === SLASH && sql.charCodeAt(i + 1) === STAR) {
          depth++
          i += 2
        } else if (d === STAR && sql.charCodeAt(i + 1) === SLASH) {
          depth--
          i += 2
        } else i++
      }
    } else break
  }
  return i
}

/** The end of a `'...'` string whose opening quote is at `i`; backslash escapes only when `escapes`. */
function stringEnd(sql: string, i: number, escapes: boolean): number {
  const n = sql.length
  i++
  while (i < n) {
    const d = sql.charCodeAt(i)
    if (d === QUOTE) {
      if (sql.charCodeAt(i + 1) === QUOTE) i += 2
      else return i + 1
    } else if (escapes && d === BACKSLASH) i += 2
    else i++
  }
  return n
}

/**
 * The end of the `$tag$` opening at `i` (the index after its second `$`), or -1 when `i` does not open a dollar
 * quote.
 */
function dollarTagEnd(sql: string, i: number): number {
  let j = i + 1
  const first = sql.charCodeAt(j)
  if (first === DOLLAR) return j + 1
  if (!isAsciiWordChar(first)) return -1
  j++
  while (j < sql.length) {
    const c = sql.charCodeAt(j)
    if (c === DOLLAR) return j + 1
    if (!isAsciiWordChar(c) && !(c >= 48 && c <= 57)) return -1
    j++
  }
  return -1
}

/** The end of a dollar-quoted body whose tag spans `[i, tagEnd)`: after the closing tag, or `sql.length`. */
function dollarBodyEnd(sql: string, i: number, tagEnd: number): number {
  const tagLength = tagEnd - i
  let k = sql.indexOf('$', tagEnd)
  while (k !== -1) {
    let same = k + tagLength <= sql.length
    for (let m = 0; same && m < tagLength; m++) same = sql.charCodeAt(k + m) === sql.charCodeAt(i + m)
    if (same) return k + tagLength
    k = sql.indexOf('$', k + 1)
  }
  return sql.length
}

/** What a token is. @internal */
export type TokenKind = 'word' | 'string' | 'quoted identifier' | 'parameter' | 'symbol'

/**
 * The kind of the token that starts at `i` (a significant character: call
 * {@link skipInsignificant} first). `E'...'` is a `'string'`; `$1` a `'parameter'`; `$$...$$` and
 * `$tag$...$tag$` are `'string'`s; numbers are `'word'`s (they are made of identifier characters).
 * @internal
 */
export function tokenKindAt(sql: string, i: number): TokenKind {
  const c = sql.charCodeAt(i)
  if (c === QUOTE) return 'string'
  if (c === DOUBLE_QUOTE) return 'quoted identifier'
  if (c === DOLLAR) return dollarTagEnd(sql, i) === -1 ? 'parameter' : 'string'
  if ((c | 0x20) === 101 /* e */ && sql.charCodeAt(i + 1) === QUOTE) return 'string'
  if (isIdentChar(c)) return 'word'
  return 'symbol'
}

/**
 * The index just after the token that starts at `i` (a significant character). An unterminated
 * string, quoted identifier, dollar quote ends at `sql.length`. Allocation-free.
 * @internal
 */
export function tokenEnd(sql: string, i: number): number {
  const n = sql.length
  const c = sql.charCodeAt(i)
  if (c === QUOTE) return stringEnd(sql, i, false)
  if (c === DOUBLE_QUOTE) {
    let j = i + 1
    while (j < n) {
      if (sql.charCodeAt(j) === DOUBLE_QUOTE) {
        if (sql.charCodeAt(j + 1) === DOUBLE_QUOTE) j += 2
        else return j + 1
      } else j++
    }
    return n
  }
  if (c === DOLLAR) {
    const tagEnd = dollarTagEnd(sql, i)
    if (tagEnd !== -1) return dollarBodyEnd(sql, i, tagEnd)
    // A parameter ($1) or a lone $.
    let j = i + 1
    while (j < n && sql.charCodeAt(j) >= 48 && sql.charCodeAt(j) <= 57) j++
    return j
  }
  // E'...': the only strings with backslash escapes.
  if ((c | 0x20) === 101 && sql.charCodeAt(i + 1) === QUOTE) return stringEnd(sql, i + 1, true)
  if (isIdentChar(c)) {
    let j = i + 1
    while (j < n && isIdentChar(sql.charCodeAt(j))) j++
    return j
  }
  return i + 1
}

/**
 * The word at `i` in lower case, read only while it is made of ASCII letters and `_`, and at most
 * `max + 1` characters long (enough to tell a keyword from a longer identifier without copying it).
 * @internal
 */
export function readKeyword(sql: string, i: number, max = 15): string {
  let j = i
  while (j < sql.length && j - i <= max && isAsciiWordChar(sql.charCodeAt(j))) j++
  return sql.slice(i, j).toLowerCase()
}

/** A token of {@link splitStatements}. @internal */
export interface Token {
  /** `'word'` (keywords and unquoted identifiers), `'string'` (any quoted string), `'other'` (the rest). */
  readonly kind: 'word' | 'string' | 'other'
  /** Upper case for words; for strings a marker (`'` or `$$`), for others the token's text. */
  readonly text: string
  /** Parenthesis depth within the statement. */
  readonly depth: number
}

/**
 * Splits SQL into its statements, each a list of tokens; comments are dropped, empty statements
 * left out. `;` ends a statement only at parenthesis depth 0 and outside a `BEGIN ATOMIC ... END`
 * body (SQL-standard function bodies contain `;`).
 * @internal
 */
export function splitStatements(sql: string): Token[][] {
  const statements: Token[][] = []
  let current: Token[] = []
  let depth = 0
  let atomicDepth = 0
  let i = skipInsignificant(sql, 0)
  while (i < sql.length) {
    const kind = tokenKindAt(sql, i)
    const end = tokenEnd(sql, i)
    const code = sql.charCodeAt(i)
    if (kind === 'word' && !(code >= 48 && code <= 57)) {
      const word = sql.slice(i, end).toUpperCase()
      const prev = current[current.length - 1]
      if (word === 'ATOMIC' && prev?.kind === 'word' && prev.text === 'BEGIN' && current.length > 1) atomicDepth++
      else if (atomicDepth > 0 && word === 'CASE') atomicDepth++
      else if (atomicDepth > 0 && word === 'END') atomicDepth--
      current.push({ kind: 'word', text: word, depth })
    } else if (kind === 'string') {
      current.push({ kind: 'string', text: code === DOLLAR ? '$$' : "'", depth })
    } else if (kind === 'symbol' && code === SEMICOLON && depth === 0 && atomicDepth === 0) {
      if (current.length > 0) statements.push(current)
      current = []
    } else {
      const text = kind === 'quoted identifier' ? '"' : sql.slice(i, end)
      if (text === '(') depth++
      else if (text === ')') depth = Math.max(0, depth - 1)
      current.push({ kind: 'other', text, depth })
    }
    i = skipInsignificant(sql, end)
  }
  if (current.length > 0) statements.push(current)
  return statements
}
