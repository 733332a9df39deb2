/**
 * What every statement entry point checks first: the shape of its arguments, and that it is not
 * transaction control (which would desynchronise the block state from the server).
 *
 * @module
 * @internal
 */
import type { QueryConfig } from 'pg'
import { FORBIDDEN_IN_ATOMIC_MESSAGE, InvalidOptionError, TransactionManagementError } from '../errors'
import { findTransactionControl } from '../sql/scan'
import type { CursorOptions } from '../types'

/** Validates and normalizes the arguments of `query()`. @internal */
export function normalizeQuery(
  textOrConfig: string | QueryConfig,
  values: readonly unknown[] | undefined,
): QueryConfig {
  if (typeof textOrConfig === 'string')
    return values === undefined ? { text: textOrConfig } : { text: textOrConfig, values: values as unknown[] }
  if (typeof textOrConfig !== 'object' || textOrConfig === null || typeof textOrConfig.text !== 'string') {
    throw new InvalidOptionError(
      'text',
      'query() expects SQL text (a string) or a QueryConfig object with a "text" string.',
    )
  }
  if (typeof (textOrConfig as { submit?: unknown }).submit === 'function') {
    // A submittable (pg-cursor, pg-query-stream) keeps the connection busy until it is closed; run
    // through query() it would hang the transaction or go back to the pool still busy.
    throw new TransactionManagementError(
      'Submittable queries (cursors, streams) cannot be run through query(); use ' +
        'db.cursor() or tx.cursor() to stream rows.',
    )
  }
  if (values !== undefined) return { ...textOrConfig, values: values as unknown[] }
  return textOrConfig
}

/** Throws a TransactionManagementError when `sql` contains transaction control. @internal */
export function refuseTransactionControl(sql: string, insideBlock: boolean): void {
  const command = findTransactionControl(sql)
  if (command === undefined) return
  if (insideBlock) {
    throw new TransactionManagementError(
      `${FORBIDDEN_IN_ATOMIC_MESSAGE} ${command} cannot be sent inside an atomic() ` +
        `block: nest atomic() blocks for savepoints and let the outermost block commit ` +
        `or roll back.`,
    )
  }
  throw new TransactionManagementError(
    `${command} was refused: outside an atomic() block every statement runs in ` +
      `autocommit mode on a pooled connection, and transaction control sent this way ` +
      `would leave the connection idle in transaction. Use atomic() to run a transaction.`,
  )
}

/** The validated `batchSize` of `cursor()`. @internal */
export function resolveBatchSize(options: CursorOptions | undefined): number {
  const batchSize = options?.batchSize ?? 100
  if (!Number.isInteger(batchSize) || batchSize < 1) {
    throw new InvalidOptionError(
      'batchSize',
      'Invalid option "batchSize" for cursor(): it must be a whole number of at least 1.',
    )
  }
  return batchSize
}
