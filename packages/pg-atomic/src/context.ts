/**
 * The one AsyncLocalStorage store: a linked list of frames, innermost first. Each frame is one
 * active block; blocks of several databases can be nested in each other.
 *
 * @module
 */
import { AsyncLocalStorage } from 'node:async_hooks'
import type { Block } from './atomic/block'

/**
 * One active block in the async call tree; or, with `block` undefined, a suspension: code in it
 * does not see the blocks of database `suspends` outside it (`propagation: 'requiresNew'` and
 * `'notSupported'`). @internal
 */
export interface Frame {
  readonly block: Block | undefined
  readonly suspends?: object
  readonly outer: Frame | undefined
}

/** @internal */
export const storage = new AsyncLocalStorage<Frame>()

/**
 * The innermost block of database `db` visible from the current async context (possibly already
 * ended: callers decide what an ended block means for them). @internal
 */
export function currentBlock(db: { readonly testRoot: Block | undefined }): Block | undefined {
  let frame = storage.getStore()
  while (frame !== undefined) {
    const block = frame.block
    if (block === undefined) {
      if (frame.suspends === db) return undefined
    } else if (block.tx.db === db) return block
    frame = frame.outer
  }
  // Outside any block of the database, a test transaction of pg-atomic/testing takes everything.
  const root = db.testRoot
  return root === undefined || root.ended ? undefined : root
}

/**
 * The innermost block of any database visible from the current async context, or `undefined`
 * outside blocks or when that block has ended (a timer or event handler outliving its block).
 * @internal
 */
export function innermostActiveBlock(): Block | undefined {
  let frame = storage.getStore()
  let suspended: object[] | undefined
  while (frame !== undefined) {
    const block = frame.block
    if (block === undefined) (suspended ??= []).push(frame.suspends as object)
    else if (suspended === undefined || !suspended.includes(block.tx.db)) {
      return block.ended || block.tx.ended ? undefined : block
    }
    frame = frame.outer
  }
  return undefined
}

/**
 * Whether the current async context runs inside a suspension of `tx`'s database that hides `tx`
 * (code in a requiresNew or notSupported block entered in one of `tx`'s blocks). @internal
 */
export function suspendedHere(tx: { readonly db: object }): boolean {
  let frame = storage.getStore()
  while (frame !== undefined) {
    const block = frame.block
    if (block === undefined) {
      if (frame.suspends === tx.db) return true
    } else if (block.tx === tx) return false
    frame = frame.outer
  }
  return false
}
