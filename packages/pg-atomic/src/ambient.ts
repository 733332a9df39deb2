/**
 * The module-level API: `atomic()`, `onCommit()`, `onRollback()`, `setRollback()`,
 * `getRollback()`, `inAtomicBlock()`, `currentTransaction()`. `atomic()` opens a block of the
 * database registered as `'default'` unless told otherwise (`using`); the others act on the
 * innermost active block of the current async context, whatever its database, unless `using`
 * names one.
 *
 * @module
 */
import { enterAtomic } from './atomic/block'
import type { Block } from './atomic/block'
import { reportHookError } from './atomic/hooks'
import { activeBlock } from './current'
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
  /**
   * Runs `fn` outside any transaction of the database (`propagation: 'notSupported'` suspends an
   * enclosing one, `'never'` refuses it): `fn` receives no handle.
   */
  <T>(options: AtomicOptions & { propagation: 'notSupported' | 'never' }, fn: () => T | Promise<T>): Promise<T>
  /** Runs `fn` in a block with `options` (validated before any SQL). */
  <T>(options: AtomicOptions, fn: AtomicCallback<T>): Promise<T>
  /**
   * Returns a function that runs `fn` in a fresh block on every call, with `this` and arguments
   * passed through: the plain-function form of `@Atomic()`. Options are validated once, here.
   *
   * @example
   * ```ts
   * const transfer = atomic.wrap(async (from: number, to: number, amount: number) => {
   *   await db.query('update accounts set balance = balance - $1 where id = $2', [amount, from])
   *   await db.query('update accounts set balance = balance + $1 where id = $2', [amount, to])
   * }, { durable: true })
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
  return new InvalidOptionError(
    'options',
    'atomic() takes its options first: atomic(options, fn), not atomic(fn, options).',
  )
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

function wrap<A extends unknown[], R>(
  fn: (...args: A) => Promise<R>,
  options?: AtomicOptions,
): (...args: A) => Promise<R> {
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
 * declare const mailer: { sendConfirmation(orderId: number): Promise<void> }
 * const id = 42
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

const consoleLogger: AtomicLogger = console

/** Options of the module-level helpers: which database's block they act on. */
export interface AmbientOptions {
  /**
   * Alias of the database whose innermost active block the helper acts on; it must be registered
   * (a typo is an error). Default: the innermost active block of the current async context,
   * whatever its database.
   */
  using?: string
}

/** The `using` of a helper's options, validated before anything else happens. */
function usingOf(options: unknown, subject: string): string | undefined {
  if (options === undefined) return undefined
  if (typeof options !== 'object' || options === null || Array.isArray(options)) {
    throw new InvalidOptionError('options', `The options of ${subject} must be an object such as { using: 'reports' }.`)
  }
  const using = (options as AmbientOptions).using
  if (using !== undefined && (typeof using !== 'string' || using === '')) {
    throw new InvalidOptionError(
      'using',
      `Invalid option "using" for ${subject}: it must be a non-empty string naming a registered database.`,
    )
  }
  return using
}

/**
 * Registers `fn` to run after the outermost COMMIT of the current transaction.
 *
 * 1. Without `using`, it belongs to the innermost active block of the current async context,
 *    whatever its database; with `using`, to that database's innermost active block.
 * 2. Hooks run in registration order (FIFO), after the connection went back to the pool, outside
 *    the transaction; async hooks are awaited one by one. A hook may open its own block, whose
 *    hooks run when that block commits (depth-first).
 * 3. A hook registered in a block that rolls back (savepoint or whole transaction) is dropped,
 *    including hooks of blocks nested in it. When the outcome of COMMIT is unknown
 *    (`CommitOutcomeUnknownError`), no hook runs.
 * 4. Outside a block, `fn` runs immediately. A synchronous error is thrown to the caller (or
 *    logged when `robust`); an asynchronous failure cannot be thrown and is logged.
 * 5. A failing non-robust hook makes `atomic()` reject with `OnCommitHookError` (committed:
 *    true) and drops the hooks after it; a robust hook's error is logged and the rest still run.
 *
 * Default: `robust: false`; the innermost block of any database.
 *
 * @example
 * ```ts
 * declare const mailer: { sendWelcome(email: string): Promise<void> }
 * const email = 'ada@example.com'
 * await atomic(async () => {
 *   await db.query('insert into users(email) values ($1)', [email])
 *   onCommit(() => mailer.sendWelcome(email))
 * })
 * ```
 */
export function onCommit(fn: Hook, options?: OnCommitOptions & AmbientOptions): void {
  if (typeof fn !== 'function') throw new InvalidOptionError('callback', "onCommit()'s callback must be a function.")
  const using = usingOf(options, 'onCommit()')
  const block = activeBlock(using)
  if (block !== undefined) {
    block.onCommit(fn, options)
    return
  }
  const robust = options?.robust === true
  const db = findDatabase(using ?? 'default') ?? { alias: using ?? 'default', logger: consoleLogger }
  let result: unknown
  try {
    result = fn()
  } catch (error) {
    if (!robust) throw error
    reportHookError(db, 'commit', undefined, fn, error)
    return
  }
  if (typeof result === 'object' && result !== null && typeof (result as PromiseLike<unknown>).then === 'function') {
    ;(result as PromiseLike<unknown>).then(undefined, (error: unknown) =>
      reportHookError(db, 'commit', undefined, fn, error),
    )
  }
}

/**
 * Registers `fn` to run when the current block's savepoint is rolled back, or when the whole
 * transaction is rolled back (Django has no such hook). Hooks run FIFO, outside the transaction,
 * awaited; their errors are logged, never thrown, so they cannot mask the error that caused the
 * rollback. They do not run when the outcome of COMMIT is unknown (`CommitOutcomeUnknownError`):
 * the transaction may have committed. Outside a block there is nothing to roll back and `fn` is
 * not kept.
 *
 * Default: the innermost block of any database (see {@link AmbientOptions}).
 */
export function onRollback(fn: Hook, options?: AmbientOptions): void {
  if (typeof fn !== 'function') throw new InvalidOptionError('callback', "onRollback()'s callback must be a function.")
  activeBlock(usingOf(options, 'onRollback()'))?.onRollback(fn)
}

/**
 * Marks the current transaction for rollback (`true`) without raising: the innermost enclosing
 * block with a savepoint (or the transaction) rolls back when it exits, silently, and statements
 * are refused until then. `false` cancels a pending rollback; it cannot undo a failed statement's
 * abort of the server-side transaction (the block then still rolls back, and rejects). Outside a
 * block: `TransactionManagementError`.
 *
 * Default: the innermost block of any database (see {@link AmbientOptions}).
 *
 * @example
 * ```ts
 * declare const body: string
 * declare const dryRun: boolean
 * await atomic(async () => {
 *   await db.query('insert into drafts(body) values ($1)', [body])
 *   if (dryRun) setRollback(true) // rolled back silently when the block exits
 * })
 * ```
 */
export function setRollback(flag: boolean, options?: AmbientOptions): void {
  const using = usingOf(options, 'setRollback()')
  if (typeof flag !== 'boolean') throw new InvalidOptionError('flag', 'setRollback() expects true or false.')
  const block = activeBlock(using)
  if (block === undefined) throw new TransactionManagementError(ROLLBACK_FLAG_OUTSIDE_MESSAGE)
  block.setRollback(flag)
}

/**
 * Whether the current transaction will roll back. Outside a block: `TransactionManagementError`.
 * Default: the innermost block of any database (see {@link AmbientOptions}).
 */
export function getRollback(options?: AmbientOptions): boolean {
  const block = activeBlock(usingOf(options, 'getRollback()'))
  if (block === undefined) throw new TransactionManagementError(ROLLBACK_FLAG_OUTSIDE_MESSAGE)
  return block.getRollback()
}

/**
 * Whether the current async context is inside an active block: of any database, or of the one
 * named by `using` (`false` when no database is registered under it).
 */
export function inAtomicBlock(options?: AmbientOptions): boolean {
  return questionBlock(options, 'inAtomicBlock()') !== undefined
}

/**
 * A snapshot of the current transaction (depth, savepoint names, isolation, id): of the innermost
 * active block of any database, or of the one named by `using`; `undefined` outside.
 */
export function currentTransaction(options?: AmbientOptions): TransactionInfo | undefined {
  return questionBlock(options, 'currentTransaction()')?.info()
}

/** For the two questions, an unregistered `using` simply has no block. */
function questionBlock(options: AmbientOptions | undefined, subject: string): Block | undefined {
  const using = usingOf(options, subject)
  if (using !== undefined && findDatabase(using) === undefined) return undefined
  return activeBlock(using)
}
