/**
 * The module-level API: `atomic()`, `onCommit()`, `onRollback()`, `setRollback()`,
 * `getRollback()`, `inAtomicBlock()`, `currentTransaction()`. Each works on the database
 * registered as `'default'` unless told otherwise.
 *
 * @module
 */
import { enterAtomic } from './atomic/block'
import type { Block } from './atomic/block'
import { reportHookError } from './atomic/hooks'
import { currentBlock } from './context'
import { findDatabase, requireDatabase } from './registry'
import { InvalidOptionError, ROLLBACK_FLAG_OUTSIDE_MESSAGE, TransactionManagementError } from './errors'
import { resolveAtomicOptions } from './options'
import type { AtomicLogger, AtomicOptions, ResolvedOptions } from './options'
import type { Hook, OnCommitOptions, TransactionHandle, TransactionInfo } from './types'

/** The body of a block: receives the transaction handle; may be async. */
export type AtomicCallback<T> = (tx: TransactionHandle) => T | Promise<T>

/** The `atomic` function, with its `wrap` helper. */
export interface AtomicFunction {
  /** Runs `fn` in a block of the `'default'` database. */
  <T>(fn: AtomicCallback<T>): Promise<T>
  /** Runs `fn` in a block with `options` (validated before any SQL). */
  <T>(options: AtomicOptions, fn: AtomicCallback<T>): Promise<T>
  /**
   * Returns a function that runs `fn` in a fresh block on every call, with `this` and arguments
   * passed through: the plain-function form of `@Atomic()`. Options are validated once, here.
   *
   * @example
   * ```ts
   * const transfer = atomic.wrap(async (from: number, to: number, amount: number) => { ... }, { durable: true })
   * await transfer(1, 2, 100)
   * ```
   */
  wrap<A extends unknown[], R>(fn: (...args: A) => Promise<R>, options?: AtomicOptions): (...args: A) => Promise<R>
}

/** Runs `fn` in a block with already-resolved options. @internal */
export function runAtomic<T>(options: ResolvedOptions, fn: AtomicCallback<T>): Promise<T> {
  try {
    return enterAtomic(requireDatabase(options.using), options, fn)
  } catch (error) {
    return Promise.reject(error)
  }
}

/** @internal */
export function misplacedOptions(): InvalidOptionError {
  return new InvalidOptionError('options', 'atomic() takes its options first: atomic(options, fn), not atomic(fn, options).')
}

function atomicImpl<T>(optionsOrFn: AtomicOptions | AtomicCallback<T>, maybeFn?: AtomicCallback<T>): Promise<T> {
  if (typeof optionsOrFn === 'function') {
    if (maybeFn !== undefined) return Promise.reject(misplacedOptions())
    return runAtomic(resolveAtomicOptions(undefined), optionsOrFn)
  }
  let options: ResolvedOptions
  try {
    options = resolveAtomicOptions(optionsOrFn)
  } catch (error) {
    return Promise.reject(error)
  }
  return runAtomic(options, maybeFn as AtomicCallback<T>)
}

function wrap<A extends unknown[], R>(fn: (...args: A) => Promise<R>, options?: AtomicOptions): (...args: A) => Promise<R> {
  if (typeof fn !== 'function') throw new InvalidOptionError('fn', 'atomic.wrap() expects the function to wrap.')
  const resolved = resolveAtomicOptions(options)
  const wrapped = function (this: unknown, ...args: A): Promise<R> {
    return runAtomic(resolved, () => fn.apply(this, args))
  }
  Object.defineProperty(wrapped, 'name', { value: fn.name })
  return wrapped
}

/**
 * Runs `fn` inside an atomic block, Django-style.
 *
 * 1. Outside any block of the database, the block is a transaction: `BEGIN` (with its options and
 *    `SET LOCAL`s) is sent just before its first statement, and `COMMIT` when `fn` returns.
 * 2. Inside a block, it is a savepoint (`SAVEPOINT` before its first statement, `RELEASE` when it
 *    succeeds); with `savepoint: false` it joins the enclosing block.
 * 3. If `fn` throws (any value), the block rolls back (to its savepoint, or the whole transaction)
 *    and the value is rethrown unchanged.
 * 4. If `fn` returns normally but an error inside it was swallowed, the block rolls back and
 *    rejects with `TransactionManagementError` (`cause` = that error). `setRollback(true)` rolls
 *    back silently.
 *
 * Statements reach the block's connection through `tx.query`, `db.query` or `db.pool`.
 * Default options: `savepoint: true`, `durable: false`, `using: 'default'`.
 *
 * @example
 * ```ts
 * await atomic(async () => {
 *   await db.query('insert into orders(id) values ($1)', [id])
 *   try {
 *     await atomic(async () => { await db.query('insert into audit(order_id) values ($1)', [id]) })
 *   } catch {
 *     // only the audit insert was rolled back
 *   }
 *   onCommit(() => mailer.sendConfirmation(id))
 * })
 * ```
 */
export const atomic: AtomicFunction = Object.assign(atomicImpl, { wrap })

function activeBlock(using: string, explicit = false): Block | undefined {
  const db = explicit ? requireDatabase(using) : findDatabase(using)
  if (db === undefined) return undefined
  const block = currentBlock(db)
  return block === undefined || block.ended ? undefined : block
}

const consoleLogger: AtomicLogger = console

/** Options of the ambient hook functions. */
export interface AmbientOptions {
  /** Alias of the database; when given, it must be registered (a typo is an error). Default: `'default'`. */
  using?: string
}

/**
 * Registers `fn` to run after the outermost COMMIT of the current transaction of the database.
 *
 * 1. Hooks run in registration order (FIFO), after the connection went back to the pool, outside
 *    the transaction; async hooks are awaited one by one. A hook may open its own block, whose
 *    hooks run when that block commits (depth-first).
 * 2. A hook registered in a block that rolls back (savepoint or whole transaction) is dropped,
 *    including hooks of blocks nested in it.
 * 3. Outside a block, `fn` runs immediately. A synchronous error is thrown to the caller (or
 *    logged when `robust`); an asynchronous failure cannot be thrown and is logged.
 * 4. A failing non-robust hook makes `atomic()` reject with `OnCommitHookError` (committed:
 *    true) and drops the hooks after it; a robust hook's error is logged and the rest still run.
 *
 * Default: `robust: false`, `using: 'default'`.
 *
 * @example
 * ```ts
 * await atomic(async () => {
 *   await db.query('insert into users(email) values ($1)', [email])
 *   onCommit(() => mailer.sendWelcome(email))
 * })
 * ```
 */
export function onCommit(fn: Hook, options?: OnCommitOptions & AmbientOptions): void {
  if (typeof fn !== 'function') throw new InvalidOptionError('callback', "onCommit()'s callback must be a function.")
  const using = options?.using ?? 'default'
  // A `using` given explicitly must name a registered database (a typo is an error, not "outside").
  const block = activeBlock(using, options?.using !== undefined)
  if (block !== undefined) {
    block.onCommit(fn, options)
    return
  }
  const robust = options?.robust === true
  const db = findDatabase(using) ?? { alias: using, logger: consoleLogger }
  let result: unknown
  try {
    result = fn()
  } catch (error) {
    if (!robust) throw error
    reportHookError(db as Parameters<typeof reportHookError>[0], 'commit', undefined, fn, error)
    return
  }
  if (typeof result === 'object' && result !== null && typeof (result as PromiseLike<unknown>).then === 'function') {
    ;(result as PromiseLike<unknown>).then(undefined, (error: unknown) => reportHookError(db as Parameters<typeof reportHookError>[0], 'commit', undefined, fn, error))
  }
}

/**
 * Registers `fn` to run when the current block's savepoint is rolled back, or when the whole
 * transaction is rolled back (Django has no such hook). Hooks run FIFO, outside the transaction,
 * awaited; their errors are logged, never thrown, so they cannot mask the error that caused the
 * rollback. Outside a block there is nothing to roll back and `fn` is not kept.
 * Default: `using: 'default'`.
 */
export function onRollback(fn: Hook, options?: AmbientOptions): void {
  if (typeof fn !== 'function') throw new InvalidOptionError('callback', "onRollback()'s callback must be a function.")
  activeBlock(options?.using ?? 'default', options?.using !== undefined)?.onRollback(fn)
}

/**
 * Marks the current transaction for rollback (`true`) without raising: the innermost enclosing
 * block with a savepoint (or the transaction) rolls back when it exits, silently, and queries are
 * refused until then. `false` cancels a pending rollback (only safe after rolling back to a
 * known-good savepoint yourself). Outside a block: `TransactionManagementError`.
 * Default: `using: 'default'`.
 */
export function setRollback(flag: boolean, using = 'default'): void {
  const block = activeBlock(using)
  if (block === undefined) throw new TransactionManagementError(ROLLBACK_FLAG_OUTSIDE_MESSAGE)
  block.setRollback(flag)
}

/** Whether the current transaction is marked for rollback. Outside a block: `TransactionManagementError`. */
export function getRollback(using = 'default'): boolean {
  const block = activeBlock(using)
  if (block === undefined) throw new TransactionManagementError(ROLLBACK_FLAG_OUTSIDE_MESSAGE)
  return block.getRollback()
}

/** Whether the current async context is inside an active block of the database. Default: `'default'`. */
export function inAtomicBlock(using = 'default'): boolean {
  return activeBlock(using) !== undefined
}

/** A snapshot of the current transaction (depth, savepoint names, isolation, id), or `undefined`. */
export function currentTransaction(using = 'default'): TransactionInfo | undefined {
  return activeBlock(using)?.info()
}
