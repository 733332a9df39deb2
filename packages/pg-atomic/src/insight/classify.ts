/**
 * Which statements `explainLocks()` refuses before anything is sent: transaction control,
 * statements that cannot run in a transaction block, and statements a rollback does not undo.
 * Reads the statements with the one lexer (`../sql/lexer`).
 *
 * @module
 */
import { InvalidOptionError, TransactionManagementError } from '../errors'
import { splitStatements } from '../sql/lexer'
import type { Token } from '../sql/lexer'

type RefusalKind = 'transaction control' | 'no transaction block' | 'irreversible'

interface Refusal {
  readonly kind: RefusalKind
  readonly command: string
  readonly why?: string
}

const CONTROL = ['BEGIN', 'START', 'COMMIT', 'END', 'ROLLBACK', 'ABORT', 'SAVEPOINT', 'RELEASE']

/** Why `explainLocks()` must not run the statement of `tokens`, or `undefined`. */
function classify(tokens: readonly Token[]): Refusal | undefined {
  const words = tokens.filter((t) => t.kind === 'word').map((t) => t.text)
  const top = tokens.filter((t) => t.kind === 'word' && t.depth === 0).map((t) => t.text)
  const [w0, w1, w2] = words
  if (w0 === undefined) return undefined
  if (CONTROL.includes(w0)) {
    const command =
      w0 === 'START'
        ? 'START TRANSACTION'
        : (w0 === 'COMMIT' || w0 === 'ROLLBACK') && w1 === 'PREPARED'
          ? `${w0} PREPARED`
          : w0
    return { kind: 'transaction control', command }
  }
  if (w0 === 'PREPARE' && w1 === 'TRANSACTION') return { kind: 'transaction control', command: 'PREPARE TRANSACTION' }
  if (w0 === 'VACUUM') return { kind: 'no transaction block', command: 'VACUUM' }
  if ((w0 === 'CREATE' || w0 === 'DROP') && (w1 === 'DATABASE' || w1 === 'TABLESPACE'))
    return { kind: 'no transaction block', command: `${w0} ${w1}` }
  if (w0 === 'ALTER' && w1 === 'SYSTEM') return { kind: 'no transaction block', command: 'ALTER SYSTEM' }
  if (w0 === 'ALTER' && w1 === 'DATABASE' && top.some((w, i) => w === 'SET' && top[i + 1] === 'TABLESPACE')) {
    return { kind: 'no transaction block', command: 'ALTER DATABASE ... SET TABLESPACE' }
  }
  if (w0 === 'CREATE') {
    const at = w1 === 'INDEX' ? 1 : w1 === 'UNIQUE' && w2 === 'INDEX' ? 2 : -1
    if (at !== -1 && words[at + 1] === 'CONCURRENTLY')
      return { kind: 'no transaction block', command: 'CREATE INDEX CONCURRENTLY' }
  }
  if (w0 === 'DROP' && w1 === 'INDEX' && w2 === 'CONCURRENTLY')
    return { kind: 'no transaction block', command: 'DROP INDEX CONCURRENTLY' }
  if (w0 === 'REINDEX') {
    if (top.includes('CONCURRENTLY')) return { kind: 'no transaction block', command: 'REINDEX ... CONCURRENTLY' }
    if (top[1] === 'DATABASE' || top[1] === 'SYSTEM')
      return { kind: 'no transaction block', command: `REINDEX ${top[1]}` }
  }
  if (w0 === 'ALTER' && w1 === 'TABLE' && top.includes('DETACH') && top.includes('CONCURRENTLY')) {
    return { kind: 'no transaction block', command: 'ALTER TABLE ... DETACH PARTITION ... CONCURRENTLY' }
  }
  if (w0 === 'CLUSTER' && top.filter((w) => w !== 'CLUSTER' && w !== 'VERBOSE').length === 0)
    return { kind: 'no transaction block', command: 'CLUSTER (without a table)' }
  if (w0 === 'DISCARD' && w1 === 'ALL') return { kind: 'no transaction block', command: 'DISCARD ALL' }
  if (w0 === 'CHECKPOINT')
    return {
      kind: 'irreversible',
      command: 'CHECKPOINT',
      why: 'a checkpoint is written at once and is not part of any transaction',
    }
  if ((w0 === 'CREATE' || w0 === 'ALTER' || w0 === 'DROP') && w1 === 'SUBSCRIPTION') {
    return {
      kind: 'irreversible',
      command: `${w0} SUBSCRIPTION`,
      why: 'it can act on the publisher (replication slots), which no rollback here undoes',
    }
  }
  if (w0 === 'COPY') {
    if (top.includes('PROGRAM'))
      return {
        kind: 'irreversible',
        command: 'COPY ... PROGRAM',
        why: 'the program runs on the server and its effects are not undone',
      }
    const to = tokens.findIndex((t) => t.kind === 'word' && t.depth === 0 && t.text === 'TO')
    if (to !== -1 && tokens[to + 1]?.kind === 'string')
      return {
        kind: 'irreversible',
        command: 'COPY ... TO a file',
        why: 'the file is written on the server and is not removed by ROLLBACK',
      }
  }
  return undefined
}

/** The error `explainLocks()` raises for `refusal`. */
function refusalError(refusal: Refusal): TransactionManagementError {
  switch (refusal.kind) {
    case 'transaction control':
      return new TransactionManagementError(
        `explainLocks() refuses ${refusal.command}: it runs the statement in a transaction of its own ` +
          `and always rolls it back, so transaction control cannot be part of it. Pass only the statement ` +
          `whose locks you want to see. Nothing was sent to the server.`,
      )
    case 'no transaction block':
      return new TransactionManagementError(
        `explainLocks() cannot explain ${refusal.command}: it cannot run inside a transaction block ` +
          `(PostgreSQL refuses it with SQLSTATE 25001), so it could not be rolled back afterwards. Nothing ` +
          `was sent to the server.`,
      )
    case 'irreversible':
      return new TransactionManagementError(
        `explainLocks() refuses ${refusal.command}: rolling back would not undo it ` +
          `(${refusal.why ?? 'its effect is outside the transaction'}). ` +
          `Nothing was sent to the server.`,
      )
  }
}

/**
 * Throws what `explainLocks(sql)` would throw before connecting, without a database: for use by
 * tools that must refuse a statement before they connect (the `pg-atomic explain-locks` command).
 *
 * 1. `InvalidOptionError` (`field` `'sql'`) when `sql` is not a string or holds no statement
 *    (only whitespace, comments, semicolons).
 * 2. `TransactionManagementError` for the first statement `explainLocks()` refuses: transaction
 *    control (`BEGIN`, `COMMIT`, `SAVEPOINT`, `PREPARE TRANSACTION`, ...), statements that cannot
 *    run in a transaction block (`VACUUM`, `CREATE INDEX CONCURRENTLY`, `CREATE DATABASE`, ...),
 *    and statements a rollback does not undo (`CHECKPOINT`, `COPY ... PROGRAM`, `COPY ... TO` a
 *    server file, subscriptions).
 *
 * @example
 * ```ts
 * assertExplainable('alter table accounts add column note text') // fine
 * assertExplainable('vacuum accounts') // throws TransactionManagementError: cannot explain VACUUM ...
 * ```
 */
export function assertExplainable(sql: string): void {
  const statements = typeof sql === 'string' ? splitStatements(sql) : []
  if (statements.length === 0) {
    throw new InvalidOptionError(
      'sql',
      'Invalid option "sql" for explainLocks(): it must be the SQL statement to explain (a non-empty ' +
        'string with at least one statement).',
    )
  }
  for (const tokens of statements) {
    const refusal = classify(tokens)
    if (refusal !== undefined) throw refusalError(refusal)
  }
}
