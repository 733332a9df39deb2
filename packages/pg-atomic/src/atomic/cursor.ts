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
  const cursor = (
    await openPortalIn(block, (client) => {
      const opened = client.query(new Cursor<R>(text, values as unknown[] | undefined))
      return { portal: opened, block, close: () => opened.close() }
    })
  ).portal as Cursor<R>
  let failed = false
  try {
    for (;;) {
      if (tx.cursor?.portal !== cursor) throw new TransactionManagementError(ENDED_MESSAGE)
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
    if (tx.cursor?.portal === cursor) {
      tx.cursor = undefined
      if (!failed && tx.state.kind !== 'lost') await cursor.close()
    }
  }
}

/**
 * Waits for `block`'s turn, sends the control statements its statements need (in a round trip of
 * their own: a portal lives across round trips), then opens a portal on the connection with `open`;
 * it becomes the transaction's open portal. A failure dooms the block like a failed statement.
 */
async function openPortalIn(block: Block, open: (client: PoolClient) => OpenPortal): Promise<OpenPortal> {
  const tx = block.tx
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
    const portal = open(tx.client as PoolClient)
    tx.cursor = portal
    return portal
  } finally {
    tx.wire.busy = false
    block.release()
  }
}

/** Closes the cursor `block` left open when it exits. @internal */
export async function closeCursorOf(block: Block): Promise<void> {
  const tx = block.tx
  const open = tx.cursor
  if (open === undefined || open.block !== block) return
  tx.cursor = undefined
  if (tx.state.kind !== 'lost') await open.close()
}

/** A portal open on the transaction's connection (a cursor, a stream): other statements wait for its end. */
export interface OpenPortal {
  /** The cursor or stream object. */
  readonly portal: object
  /** The block it was opened in. */
  readonly block: Block
  /** Closes it; resolves once the connection is free again. */
  close(): Promise<unknown>
}

/** A node-postgres submittable (pg-cursor, pg-query-stream, ...): it writes its own protocol messages. */
export interface Submittable {
  submit(connection: unknown): unknown
  handleError?(error: unknown, connection?: unknown): void
  on?(event: string, listener: (...args: unknown[]) => void): unknown
  once?(event: string, listener: (...args: unknown[]) => void): unknown
  close?(): unknown
  destroy?(error?: Error): unknown
}

/** Closes a submittable's portal: pg-cursor's `close()`, or a stream's `destroy()` (waiting for 'close'). */
function closeSubmittable(s: Submittable): Promise<unknown> {
  if (typeof s.close === 'function') return Promise.resolve(s.close())
  return new Promise<void>((resolve) => {
    if (typeof s.once === 'function') s.once('close', () => resolve())
    else resolve()
    s.destroy?.()
  })
}

/**
 * Runs a submittable (pg-cursor, pg-query-stream — what Kysely's `.stream()` passes to its client)
 * in `block`'s transaction, as pg's `client.query(submittable)` does on a connection: it is
 * returned at once, and submitted once the block's turn comes and its control statements were
 * sent. Until it ends (read to the end, closed, or failed) it holds the connection: other
 * statements of the transaction are refused meanwhile, and the block's exit closes it. A failure
 * dooms the block like a failed statement; it reaches the submittable through its `handleError`,
 * as pg reports errors to submittables.
 * @internal
 */
export function submitInBlock<S extends Submittable>(block: Block, submittable: S): S {
  const target = block.routed()
  const tx = target.tx
  const fail = (error: unknown): void => {
    if (typeof submittable.handleError === 'function') submittable.handleError(error)
  }
  const early = tx.unusableError(target)
  if (early !== undefined) {
    process.nextTick(fail, early)
    return submittable
  }
  openPortalIn(target, (client) => {
    const portal: OpenPortal = { portal: submittable, block: target, close: () => closeSubmittable(submittable) }
    const done = (error?: unknown): void => {
      if (tx.cursor === portal) tx.cursor = undefined
      if (error !== undefined) tx.statementFailed(error)
    }
    submittable.once?.('end', () => done())
    submittable.once?.('close', () => done())
    submittable.on?.('error', (error) => done(error))
    tx.wire.roundTrips++
    ;(client as unknown as { query(s: Submittable): unknown }).query(submittable)
    return portal
  }).then(undefined, fail)
  return submittable
}
