/**
 * Which block a module-level helper acts on (`onCommit`, `setRollback`, `lockTable`, ...):
 * with `using`, the innermost active block of that database (which must be registered: a typo is
 * an error); without it, the innermost active block of the current async context, whatever its
 * database.
 *
 * @module
 * @internal
 */
import type { Block } from './atomic/block'
import { currentBlock, innermostActiveBlock } from './context'
import { TransactionManagementError } from './errors'
import { findTestRoot, requireDatabase } from './registry'

/** The block a helper called with `using` acts on, or `undefined` outside blocks. @internal */
export function activeBlock(using: string | undefined): Block | undefined {
  if (using === undefined) return innermostActiveBlock() ?? testRootBlock()
  const block = currentBlock(requireDatabase(using))
  return block === undefined || block.ended || block.tx.ended ? undefined : block
}

/** Outside any block: the test transaction of pg-atomic/testing, if one is open (the default database's first). */
function testRootBlock(): Block | undefined {
  const root = findTestRoot()
  return root === undefined || root.ended || root.kitIdle ? undefined : root.builderTail()
}

/** Like {@link activeBlock}, but throws `TransactionManagementError(outsideMessage)` outside blocks. @internal */
export function requireActiveBlock(using: string | undefined, outsideMessage: string): Block {
  const block = activeBlock(using)
  if (block === undefined) throw new TransactionManagementError(outsideMessage)
  return block
}
