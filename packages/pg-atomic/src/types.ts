/**
 * Public types shared by several modules.
 *
 * @module
 */
import type { QueryConfig, QueryResult, QueryResultRow } from 'pg'
import type { IsolationLevel } from './vocabulary'

/** Options of `onCommit()`. */
export interface OnCommitOptions {
  /**
   * When `true`, an error thrown by the hook is logged (database `logger`, diagnostics channel
   * `pg-atomic:hook-error`) and the remaining hooks still run. When `false`, the error makes the
   * block reject with `OnCommitHookError` (the data is committed) and later hooks are dropped.
   * Default: `false`.
   */
  robust?: boolean
}

/** Options of `db.cursor()`. */
export interface CursorOptions {
  /** Rows fetched per round trip. Default: `100`. */
  batchSize?: number
}

/** A hook run after the outermost COMMIT (or ROLLBACK). May be async; it is awaited. */
export type Hook = () => unknown

/** The handle an `atomic()` callback receives. Everything on it is also available ambiently. */
export interface TransactionHandle {
  /** Process-unique id of the transaction (shared by all blocks of one outermost block). */
  readonly id: number
  /** 1 for the outermost block, 2 for a block nested in it, ... */
  readonly depth: number
  /** The savepoint of this block (`undefined` for the outermost block and for `savepoint: false`). */
  readonly savepointName: string | undefined
  /** The isolation level requested for the transaction, `undefined` when the server default applies. */
  readonly isolationLevel: IsolationLevel | undefined
  /** The `name` option of this block. */
  readonly name: string | undefined
  /**
   * Runs a statement on the transaction's connection (queued behind earlier statements of the
   * transaction). Rejects with `TransactionManagementError` once this block has ended.
   */
  query<R extends QueryResultRow = QueryResultRow>(text: string, values?: readonly unknown[]): Promise<QueryResult<R>>
  /** Runs a statement given as a pg `QueryConfig` (`{ text, values, rowMode, types, ... }`), as above. */
  query<R extends QueryResultRow = QueryResultRow>(config: QueryConfig): Promise<QueryResult<R>>
  /** Streams the rows of a query through `pg-cursor`, in this transaction's snapshot. */
  cursor<R extends QueryResultRow = QueryResultRow>(
    text: string,
    values?: readonly unknown[],
    options?: CursorOptions,
  ): AsyncIterable<R>
  /** Registers a hook run after the outermost COMMIT; dropped if this block (or an enclosing one) rolls back. */
  onCommit(fn: Hook, options?: OnCommitOptions): void
  /** Registers a hook run when this block's savepoint, or the whole transaction, is rolled back. */
  onRollback(fn: Hook): void
  /** Marks the innermost block with a savepoint (or the transaction) for rollback without raising, or cancels that. */
  setRollback(flag: boolean): void
  /** Whether the transaction is marked for rollback. */
  getRollback(): boolean
}

/** A snapshot of the current transaction, from `currentTransaction()`. */
export interface TransactionInfo {
  /** Process-unique id of the transaction. */
  readonly id: number
  /** Alias of the database. */
  readonly database: string
  /** Depth of the innermost active block: 1 for the outermost block. */
  readonly depth: number
  /** Savepoint names of the active nested blocks, outermost first (blocks without savepoint are skipped). */
  readonly savepointNames: readonly string[]
  /** Requested isolation level, or `undefined` for the server default. */
  readonly isolationLevel: IsolationLevel | undefined
  /** Requested access mode, or `undefined` for the server default. */
  readonly readOnly: boolean | undefined
  /** Requested deferrable mode, or `undefined` for the server default. */
  readonly deferrable: boolean | undefined
  /** `true` once BEGIN has been sent (a block that ran no query has sent nothing). */
  readonly begun: boolean
  /** Whether the transaction is marked for rollback. */
  readonly rollback: boolean
  /** The `name` option of the innermost block. */
  readonly name: string | undefined
}
