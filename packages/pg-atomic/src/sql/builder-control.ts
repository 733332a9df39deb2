/**
 * Reads the transaction control that query builders (Kysely, Drizzle, TypeORM, ...) send on a
 * client of `db.pool` — `BEGIN` / `START TRANSACTION` with their modes, `COMMIT` / `END`,
 * `ROLLBACK` / `ABORT`, `SAVEPOINT x`, `RELEASE [SAVEPOINT] x`, `ROLLBACK [WORK|TRANSACTION] TO
 * [SAVEPOINT] x` — so that inside an `atomic()` block they can be mapped onto nested blocks. A leaf
 * module built on the one lexer.
 *
 * @module
 * @internal
 */
import { isIdentChar, skipInsignificant, tokenEnd } from './lexer'
import type { IsolationLevel } from '../vocabulary'

/** The transaction modes of `BEGIN` / `START TRANSACTION`. */
export interface TransactionModes {
  readonly isolationLevel: IsolationLevel | undefined
  readonly readOnly: boolean | undefined
  readonly deferrable: boolean | undefined
}

/** A transaction-control statement of a query builder. */
export type BuilderControl =
  | { readonly kind: 'begin'; readonly modes: TransactionModes }
  | { readonly kind: 'commit' }
  | { readonly kind: 'rollback' }
  | { readonly kind: 'savepoint'; readonly name: string }
  | { readonly kind: 'release'; readonly name: string }
  | { readonly kind: 'rollback-to'; readonly name: string }

/** The tokens of one statement: words in lower case, quoted identifiers unquoted, `;` dropped at the end. */
function tokens(sql: string): string[] | undefined {
  const out: string[] = []
  let i = skipInsignificant(sql, 0)
  while (i < sql.length) {
    const end = tokenEnd(sql, i)
    const raw = sql.slice(i, end)
    if (raw === ';') {
      // Only a trailing semicolon is allowed: several statements are not a builder's control.
      if (skipInsignificant(sql, end) < sql.length) return undefined
    } else if (raw.startsWith('"')) out.push(`"${raw.slice(1, -1).replace(/""/g, '"')}`)
    else if (isIdentChar(raw.charCodeAt(0))) out.push(raw.toLowerCase())
    else out.push(raw)
    i = skipInsignificant(sql, end)
  }
  return out
}

/** A savepoint name token: an identifier (folded to lower case, as PostgreSQL does) or a quoted one. */
function nameOf(token: string | undefined): string | undefined {
  if (token === undefined) return undefined
  if (token.startsWith('"')) return token.slice(1)
  return /^[a-z_][a-z0-9_$]*$/.test(token) ? token : undefined
}

const LEVELS: Readonly<Record<string, IsolationLevel>> = {
  'read committed': 'read committed',
  'repeatable read': 'repeatable read',
  serializable: 'serializable',
  'read uncommitted': 'read uncommitted',
}

/** The modes after BEGIN / START TRANSACTION, or `undefined` when they are not valid modes. */
function modesOf(t: readonly string[]): TransactionModes | undefined {
  let isolationLevel: IsolationLevel | undefined
  let readOnly: boolean | undefined
  let deferrable: boolean | undefined
  let i = 0
  while (i < t.length) {
    if (t[i] === ',') {
      i++
      continue
    }
    if (t[i] === 'isolation' && t[i + 1] === 'level') {
      const two = `${t[i + 2]} ${t[i + 3]}`
      const level = LEVELS[two] ?? LEVELS[t[i + 2] ?? '']
      if (level === undefined) return undefined
      isolationLevel = level
      i += LEVELS[two] === undefined ? 3 : 4
    } else if (t[i] === 'read' && (t[i + 1] === 'only' || t[i + 1] === 'write')) {
      readOnly = t[i + 1] === 'only'
      i += 2
    } else if (t[i] === 'deferrable') {
      deferrable = true
      i++
    } else if (t[i] === 'not' && t[i + 1] === 'deferrable') {
      deferrable = false
      i += 2
    } else return undefined
  }
  return { isolationLevel, readOnly, deferrable }
}

/**
 * The builder control statement `sql` is, or `undefined` when it is not one of the forms above
 * (other transaction control — `SET TRANSACTION`, `PREPARE TRANSACTION`, several statements — is
 * left to the caller, which refuses it).
 */
export function parseBuilderControl(sql: string): BuilderControl | undefined {
  const t = tokens(sql)
  if (t === undefined || t.length === 0) return undefined
  const [first, second] = t
  if (first === 'begin' || (first === 'start' && second === 'transaction')) {
    let rest = t.slice(first === 'begin' ? 1 : 2)
    if (first === 'begin' && (rest[0] === 'work' || rest[0] === 'transaction')) rest = rest.slice(1)
    const modes = modesOf(rest)
    return modes === undefined ? undefined : { kind: 'begin', modes }
  }
  if (first === 'commit' || first === 'end') {
    return t.length === 1 || (t.length === 2 && (second === 'work' || second === 'transaction'))
      ? { kind: 'commit' }
      : undefined
  }
  if (first === 'rollback' || first === 'abort') {
    let i = 1
    if (t[i] === 'work' || t[i] === 'transaction') i++
    if (i === t.length) return { kind: 'rollback' }
    if (first === 'rollback' && t[i] === 'to') {
      i++
      if (t[i] === 'savepoint') i++
      const name = nameOf(t[i])
      return name !== undefined && i === t.length - 1 ? { kind: 'rollback-to', name } : undefined
    }
    return undefined
  }
  if (first === 'savepoint') {
    const name = nameOf(second)
    return name !== undefined && t.length === 2 ? { kind: 'savepoint', name } : undefined
  }
  if (first === 'release') {
    const i = second === 'savepoint' ? 2 : 1
    const name = nameOf(t[i])
    return name !== undefined && t.length === i + 1 ? { kind: 'release', name } : undefined
  }
  return undefined
}
