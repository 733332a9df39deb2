/**
 * Streaming rows inside a block through pg-cursor: the cursor holds the transaction's connection
 * until it is read to the end, closed by breaking out of the loop, or closed by the block's exit.
 * Other statements of the transaction are refused meanwhile (the connection is busy with it).
 *
 * @module
 * @internal
 */
import type { PoolClient, QueryResultRow } from 'pg'
import Cursor from 'pg-cursor'
import { TransactionManagementError } from '../errors'
import type { Block } from './block'
import { ENDED_MESSAGE } from './messages'
import { refuseTransactionControl } from './statement'

/** Streams the rows of `text` in `block`'s transaction, `batchSize` rows per round trip. @internal */
export async function* cursorRows<R extends QueryResultRow>(
  block: Block,
  text: string,
  values: readonly unknown[] | undefined,
  batchSize: number,
): AsyncGenerator<R, void, undefined> {
  const tx = block.tx
  const early = tx.unusableError(block)
  if (early !== undefined) throw early
  refuseTransactionControl(text, true)
  let cursor: Cursor<R>
  const wait = block.acquire()
  if (wait !== undefined) await wait
  try {
    const late = tx.unusableError(block)
    if (late !== undefined) throw late
    tx.wire.busy = true
    try {
      await tx.prepare()
    } catch (error) {
      tx.statementFailed(error)
      throw error
    }
    cursor = (tx.client as PoolClient).query(new Cursor<R>(text, values as unknown[] | undefined))
    tx.cursor = { cursor, block }
  } finally {
    tx.wire.busy = false
    block.release()
  }
  let failed = false
  try {
    for (;;) {
      if (tx.cursor?.cursor !== cursor) throw new TransactionManagementError(ENDED_MESSAGE)
      let rows: R[]
      try {
        tx.wire.roundTrips++
        rows = await cursor.read(batchSize)
      } catch (error) {
        failed = true
        tx.statementFailed(error)
        throw error
      }
      if (rows.length === 0) return
      yield* rows
    }
  } finally {
    if (tx.cursor?.cursor === cursor) {
      tx.cursor = undefined
      if (!failed && tx.state.kind !== 'lost') await cursor.close()
    }
  }
}

/** Closes the cursor `block` left open when it exits. @internal */
export async function closeCursorOf(block: Block): Promise<void> {
  const tx = block.tx
  const open = tx.cursor
  if (open === undefined || open.block !== block) return
  tx.cursor = undefined
  if (tx.state.kind !== 'lost') await open.cursor.close()
}
