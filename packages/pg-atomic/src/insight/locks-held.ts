/**
 * `locksHeld()`: the locks of the current transaction.
 *
 * @module
 */
import { TransactionManagementError } from '../errors'
import { LOCKS_OF_THIS_BACKEND_SQL } from '../sql/insight'
import { insightBlock, insightFields, parseInsightOptions } from './options'
import { lockInfoOf, sortLocks } from './pg-locks'
import type { LockRow } from './pg-locks'
import type { InsightOptions, LockInfo } from './types'

/** The message of `locksHeld()` outside a block. */
const LOCKS_HELD_OUTSIDE_MESSAGE =
  'locksHeld() cannot be used outside of a transaction: call it inside an atomic() block to list ' +
  'the locks of that transaction (outside a block every statement is its own transaction, which ' +
  'holds nothing once it ends).'

/**
 * The locks the current transaction holds: every `pg_locks` row of its backend, decoded.
 *
 * 1. It runs in a block, after the block's statements: the block of `using`, else the innermost
 *    active block of the current async context. Outside a block: `TransactionManagementError`,
 *    before anything is sent.
 * 2. Row locks are not in `pg_locks`: a row locked with `FOR UPDATE` shows as a `RowShareLock` on
 *    its table (and a `transactionid` lock), an updated row as a `RowExclusiveLock`.
 * 3. The inspection itself takes no lock, so nothing in the list comes from it. Every transaction
 *    holds an `ExclusiveLock` on its own `virtualxid`; a transaction that wrote (or locked rows)
 *    also holds one on its `transactionid`.
 * 4. Order: relations first (by name), then the other types.
 *
 * @example
 * ```ts
 * await atomic(async () => {
 *   await db.query('update accounts set balance = balance - 1 where id = $1', [1])
 *   for (const lock of await locksHeld()) console.log(lock.target, lock.mode)
 *   // table public.accounts RowExclusiveLock
 *   // index public.accounts_pkey RowExclusiveLock
 *   // transaction 1234 ExclusiveLock
 *   // virtual transaction 3/17 ExclusiveLock
 * })
 * ```
 */
export async function locksHeld(options?: InsightOptions): Promise<readonly LockInfo[]> {
  const o = parseInsightOptions({ using: insightFields.using }, options, 'locksHeld()')
  const block = insightBlock(o.using)
  if (block === undefined) throw new TransactionManagementError(LOCKS_HELD_OUTSIDE_MESSAGE)
  const result = await block.run<LockRow>(LOCKS_OF_THIS_BACKEND_SQL, [])
  return Object.freeze(sortLocks(result.rows.map(lockInfoOf)))
}
