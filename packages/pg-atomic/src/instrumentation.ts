/**
 * The seam between the block state machine and a tracer (`pg-atomic/otel`): a nullable slot that an
 * instrumentation fills, and the few calls the state machine makes into it. With the slot empty
 * (the default), the core pays one property read per outermost block and one `undefined` check at
 * each call site below; no object is created. The traced paths are functions of their own in
 * block.ts: a closure in a hot function would make V8 allocate a context on every call. The core
 * imports no tracing library: only `src/otel/` does, loaded only through the `pg-atomic/otel`
 * subpath.
 *
 * Why not only `node:diagnostics_channel`: a tracer must make its context (the transaction's span)
 * *active* while the block's callback runs, so that statements traced by other instrumentations
 * (`@opentelemetry/instrumentation-pg`, Kysely and Drizzle on `db.pool`) become its children.
 * Channels can only report; `TracingChannel#bindStore` could activate a store, but OpenTelemetry's
 * context manager does not expose its `AsyncLocalStorage`. So the tracer wraps the work instead.
 *
 * An instrumentation never throws from these calls, and never attaches a handler to a promise the
 * state machine returns to the application (an unobserved rejection must stay unhandled).
 *
 * Calls, in the order they happen:
 *
 * 1. {@link Instrumentation.retrying} wraps the attempts of an outermost block that may be retried.
 * 2. {@link Instrumentation.transaction} at the start of each outermost block (each attempt); the
 *    returned {@link TransactionScope} (or `undefined`: not traced) then gets:
 *    {@link TransactionScope.run} around the whole transaction (checkout, body, COMMIT / ROLLBACK);
 *    {@link TransactionScope.connected} when the connection is checked out;
 *    {@link TransactionScope.nested} around each nested block with a savepoint, and
 *    {@link TransactionScope.rolledBack} when it rolls back to its savepoint;
 *    {@link TransactionScope.end} once COMMIT or ROLLBACK has completed (before hooks run);
 *    {@link TransactionScope.commitHookFailed} when a non-robust onCommit hook fails;
 *    {@link TransactionScope.outside} around each onCommit / onRollback hook, which runs outside
 *    the transaction.
 *
 * @module
 * @internal
 */
import type { PoolClient } from 'pg'
import type { IsolationLevel } from './vocabulary'

/** How a transaction ended. `'unknown'`: the connection was lost while COMMIT was in flight. @internal */
export type TransactionOutcome = 'committed' | 'rolled_back' | 'unknown'

/** What a tracer learns about a block when it starts. @internal */
export interface BlockStart {
  /** Alias of the database. */
  readonly database: string
  /** The `name` option of the block. */
  readonly name: string | undefined
}

/** What a tracer learns about a transaction when its outermost block starts. @internal */
export interface TransactionStart extends BlockStart {
  /** Process-unique id of the transaction. */
  readonly id: number
  readonly isolationLevel: IsolationLevel | undefined
  readonly readOnly: boolean | undefined
  readonly deferrable: boolean | undefined
}

/** A nested block with a savepoint, as a tracer sees it. @internal */
export interface NestedBlockView {
  readonly name: string | undefined
  readonly depth: number
  readonly savepointName: string | undefined
}

/** One traced transaction (one attempt, when the block is retried). @internal */
export interface TransactionScope {
  /** Runs the whole transaction with the tracer's context active. */
  run<T>(work: () => Promise<T>): Promise<T>
  /** The transaction checked out `client`. */
  connected(client: PoolClient): void
  /**
   * Runs a nested block's whole lifetime. The promise is the state machine's (enterNested() awaits
   * it), never the application's: the tracer may observe it, with handlers that do not throw.
   */
  nested<T>(block: NestedBlockView, work: () => Promise<T>): Promise<T>
  /** `block` (inside {@link TransactionScope.nested}) rolled back to its savepoint, with an error or silently. */
  rolledBack(block: NestedBlockView): void
  /**
   * COMMIT or ROLLBACK has completed (or nothing was sent). `error`: what made the transaction roll
   * back, or the error of COMMIT; `undefined` for a commit and for an intentional rollback
   * (`setRollback(true)`). `roundTrips`: made on the connection.
   */
  end(outcome: TransactionOutcome, error: unknown, roundTrips: number): void
  /** A non-robust onCommit hook failed (after COMMIT, after {@link TransactionScope.end}). */
  commitHookFailed(): void
  /** Runs an onCommit / onRollback hook in the context the transaction was entered from. */
  outside<T>(hook: () => T): T
}

/** What an instrumentation provides. @internal */
export interface Instrumentation {
  /** A transaction starts; `undefined` when it is not to be traced. */
  transaction(start: TransactionStart): TransactionScope | undefined
  /** Runs the attempts of an outermost (or requiresNew) block that has a retry policy. */
  retrying<T>(start: BlockStart, attempts: () => Promise<T>): Promise<T>
}

/** The installed instrumentation, if any (one at a time). @internal */
export const instrumentation: { current: Instrumentation | undefined } = { current: undefined }
