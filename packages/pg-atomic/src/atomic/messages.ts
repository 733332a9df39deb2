/**
 * The sentences of the block state machine, and the errors built from them. Each says what
 * happened to the data and what to do.
 *
 * @module
 * @internal
 */
import { ConnectionLostError, TransactionManagementError } from '../errors'

/** @internal */
export const ENDED_MESSAGE =
  "This 'atomic' block has already ended, so its transaction can no longer be used " +
  'and the statement was not run. Await all work of a block inside that block.'
/** @internal */
export const SWALLOWED_MESSAGE =
  "The 'atomic' block finished normally, but an error inside it was caught and not " +
  're-raised, so its work was rolled back. Let the error propagate, or wrap the ' +
  'failing part in a nested atomic() block so that only that part is rolled back.'
/** @internal */
export const ABORTED_MESSAGE =
  "The 'atomic' block finished normally, but a statement inside it failed and the " +
  'transaction was aborted on the server; setRollback(false) cleared the rollback ' +
  "flag but cannot undo that, so the block's work was lost and it was rolled back. " +
  'Let the error propagate, or wrap the failing part in a nested atomic() block so ' +
  'that only that part is rolled back.'
/** @internal */
export const BUILDER_OPEN_MESSAGE =
  "A query builder's transaction begun on a db.pool client inside this 'atomic' block was still open when the " +
  "block's function returned, so it never committed: it was rolled back, and so was the block. Await the " +
  "builder's transaction (its COMMIT or ROLLBACK) inside the block."
/** @internal */
export const KIT_IDLE_MESSAGE =
  'The test transaction of pg-atomic/testing is between tests: this work started in a test that has ended ' +
  '(a timer, an un-awaited promise), or runs outside any test. It was refused so that it cannot leak into ' +
  'the next test; await all work of a test inside it.'
/** @internal */
export const CURSOR_OPEN_MESSAGE =
  "A cursor is open on this transaction's connection: read it to the end or break " +
  'out of its loop before running other statements in the same transaction.'
/** @internal */
export const COMMIT_UNKNOWN_MESSAGE =
  'The connection was lost while COMMIT was in flight: the transaction may or may ' +
  'not have been committed. It was not retried, and neither onCommit nor ' +
  'onRollback hooks were run; check the data before doing the work again.'
/** @internal */
export const COMMIT_ANSWERED_ROLLBACK_MESSAGE =
  'COMMIT was answered with ROLLBACK: the transaction had failed on the server, so nothing was committed.'

/** The connection is gone: nothing of the transaction was committed. @internal */
export function lostError(cause: unknown): ConnectionLostError {
  return new ConnectionLostError(
    'The connection to PostgreSQL was lost during the transaction: the server rolled ' +
      'it back and nothing of it was committed. The connection was destroyed.',
    { cause },
  )
}

/** A control statement failed: only ROLLBACK is safe. @internal */
export function fatalError(cause: unknown): TransactionManagementError {
  return new TransactionManagementError(
    'A transaction control statement failed, so the state of the transaction is ' +
      'unknown; it will be rolled back and no further statements can run in it.',
    { cause },
  )
}

/** Appends the block's `name` option to a message, so logs say which block failed. @internal */
export function withName(message: string, name: string | undefined): string {
  return name === undefined ? message : `${message} (block "${name}")`
}

/** A handle of a transaction used inside the requiresNew block that suspended it. */
export const SUSPENDED_MESSAGE =
  'This transaction is suspended by a requiresNew atomic() block that is running: it resumes when ' +
  'that block ends, so work sent to it from inside the block would wait forever. Use the inner ' +
  "block's handle (or db.query), or do this work before or after the requiresNew block."
