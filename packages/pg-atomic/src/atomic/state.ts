/**
 * The health of one transaction as one discriminated state, and the transitions that are its only
 * writers. "Why can't this statement run?" is one switch over {@link TransactionState}.
 *
 * ```
 *            statement / block error         setRollback(false), server aborted
 *   ok ─────────────────────────────▶ doomed ───────────────────────────────▶ aborted
 *    ▲         setRollback(true)        │  ▲          setRollback(true)            │
 *    └──────── savepoint rolled back ───┘  └──────────────────────────────────────┘
 *    any state ── control statement failed ──▶ failed      any state ── connection gone ──▶ lost
 * ```
 *
 * Precedence: `lost` > `failed` > `doomed` / `aborted` > `ok`: once the connection is gone nothing
 * else matters, and once a control statement failed only ROLLBACK is safe.
 *
 * A leaf module: pure functions over immutable values.
 *
 * @module
 * @internal
 */

/** Nothing went wrong: statements may run, and the block may commit or release. */
export interface Ok {
  readonly kind: 'ok'
}

/**
 * Django's `needs_rollback`: the innermost block with a savepoint (or the transaction) rolls back
 * when it exits, and statements are refused until then.
 */
export interface Doomed {
  readonly kind: 'doomed'
  /** The doom came from an error (reported at exit) rather than from `setRollback(true)` (silent). */
  readonly byError: boolean
  /** The error that doomed the block (`undefined` for `setRollback(true)`). */
  readonly cause: unknown
  /**
   * Set when a statement failed on the server: the server-side transaction is aborted until a
   * ROLLBACK (TO); `cause` is the statement error that aborted it.
   */
  readonly serverAbort: { readonly cause: unknown } | undefined
}

/**
 * The rollback flag was cleared with `setRollback(false)` while the server-side transaction was
 * aborted by a failed statement: the work since the last savepoint is gone on the server whatever
 * the flag says. A block that exits normally in this state must not report success.
 */
export interface Aborted {
  readonly kind: 'aborted'
  /** The statement error that aborted the server-side transaction. */
  readonly cause: unknown
}

/** A control statement (BEGIN, SAVEPOINT, RELEASE, ROLLBACK TO, ...) failed: only ROLLBACK is safe. */
export interface Failed {
  readonly kind: 'failed'
  readonly cause: unknown
}

/** The connection is gone: the server has rolled the transaction back. */
export interface Lost {
  readonly kind: 'lost'
  readonly cause: unknown
}

/** The health of a transaction. */
export type TransactionState = Ok | Doomed | Aborted | Failed | Lost

/** The initial state. */
export const OK: Ok = Object.freeze({ kind: 'ok' })

/** A user statement failed (`serverAborted`: on the server, inside the transaction). */
export function afterStatementError(state: TransactionState, cause: unknown, serverAborted: boolean): TransactionState {
  const abort = serverAborted ? { cause } : undefined
  switch (state.kind) {
    case 'lost':
    case 'failed':
      return state
    case 'doomed':
      // The first error is the one reported at exit; a later one can only add the server's abort.
      if (state.byError)
        return state.serverAbort !== undefined || abort === undefined ? state : { ...state, serverAbort: abort }
      return { kind: 'doomed', byError: true, cause, serverAbort: state.serverAbort ?? abort }
    case 'aborted':
      // Statements sent to an aborted transaction fail (25P02); the abort keeps its first cause.
      return { kind: 'doomed', byError: true, cause, serverAbort: { cause: state.cause } }
    case 'ok':
      return { kind: 'doomed', byError: true, cause, serverAbort: abort }
  }
}

/** A block without savepoint threw: the doom spreads to the nearest savepoint (Django). */
export function afterBlockError(state: TransactionState, thrown: unknown): TransactionState {
  return afterStatementError(state, thrown, false)
}

/** A control statement failed without losing the connection. */
export function afterControlError(state: TransactionState, cause: unknown): TransactionState {
  return state.kind === 'lost' || state.kind === 'failed' ? state : { kind: 'failed', cause }
}

/** The connection is gone (the first cause is kept). */
export function afterConnectionLoss(state: TransactionState, cause: unknown): TransactionState {
  return state.kind === 'lost' ? state : { kind: 'lost', cause }
}

/** `setRollback(flag)`. */
export function afterSetRollback(state: TransactionState, flag: boolean): TransactionState {
  switch (state.kind) {
    case 'lost':
    case 'failed':
      return state
    case 'ok':
      return flag ? { kind: 'doomed', byError: false, cause: undefined, serverAbort: undefined } : state
    case 'doomed':
      if (flag) return { kind: 'doomed', byError: false, cause: undefined, serverAbort: state.serverAbort }
      // Clearing the flag cannot undo an abort on the server: remember it, so the exit can say so.
      return state.serverAbort !== undefined ? { kind: 'aborted', cause: state.serverAbort.cause } : OK
    case 'aborted':
      return flag ? { kind: 'doomed', byError: false, cause: undefined, serverAbort: { cause: state.cause } } : state
  }
}

/** The innermost savepoint was rolled back on the server: the doom (and any abort) is undone. */
export function afterSavepointRollback(state: TransactionState): TransactionState {
  return state.kind === 'doomed' || state.kind === 'aborted' ? OK : state
}

/**
 * A nested block whose savepoint never reached the server exits after a failure: its doom is
 * cleared, but a server-side abort from before it stays (nothing was rolled back on the server).
 */
export function afterUnsentSavepointExit(state: TransactionState): TransactionState {
  return afterSetRollback(state, false)
}

/** Django's `needs_rollback`, as `getRollback()` reports it. */
export function needsRollback(state: TransactionState): boolean {
  return state.kind === 'doomed'
}
