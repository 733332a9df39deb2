/**
 * The decisions of `atomic()`: Django's `Atomic.__enter__` / `__exit__` for node-postgres. Every
 * BEGIN, SAVEPOINT, RELEASE, ROLLBACK TO, COMMIT and ROLLBACK is decided here, with the reason;
 * how it reaches the server (round trips, the connection) is wire.ts, the health of the
 * transaction is state.ts, hooks are hooks.ts, retries retry.ts.
 *
 * - A {@link Transaction} exists per outermost block; a {@link Block} per `atomic()` call, which is
 *   also the handle its callback receives.
 * - Each block serializes its own operations (statements, and the whole lifetime of each child
 *   block) in FIFO order, so `Promise.all` of sibling blocks or statements never interleaves
 *   savepoints: the block whose operation runs is always the top of the transaction's stack.
 *
 * @module
 * @internal
 */
import type { PoolClient, QueryConfig, QueryResult, QueryResultRow } from 'pg'
import { currentBlock, storage, suspendedHere } from '../context'
import type { Frame } from '../context'
import {
  AtomicError,
  CommitOutcomeUnknownError,
  DURABLE_NESTED_MESSAGE,
  InvalidOptionError,
  SuspendedTransactionDeadlockError,
  sqlState,
  TransactionManagementError,
  isConnectionLoss,
  lockNotAvailableFrom,
} from '../errors'
import { instrumentation } from '../instrumentation'
import type { Instrumentation, TransactionOutcome, TransactionScope } from '../instrumentation'
import type { ResolvedOptions, RetryPolicy } from '../options'
import { outermostBlockServer } from '../replicas/route'
import {
  releaseStatement,
  resetLocalStatement,
  rollbackToStatement,
  savepointName,
  setLocalStatement,
} from '../sql/transaction'
import { TIMEOUT_OPTIONS } from '../vocabulary'
import type { IsolationLevel, TimeoutOption } from '../vocabulary'
import type { CursorOptions, Hook, OnCommitOptions, TransactionHandle, TransactionInfo } from '../types'
import { closeCursorOf, cursorRows } from './cursor'
import { isWithin } from './hooks'
import {
  ABORTED_MESSAGE,
  KIT_IDLE_MESSAGE,
  SUSPENDED_MESSAGE,
  BUILDER_OPEN_MESSAGE,
  ENDED_MESSAGE,
  SWALLOWED_MESSAGE,
  fatalError,
  lostError,
  withName,
} from './messages'
import { canPipeline, withSerializedValues } from './pipeline'
import { runWithRetry } from './retry'
import { normalizeQuery, refuseTransactionControl, resolveBatchSize } from './statement'
import { Transaction } from './transaction'
import type { DatabaseCore, TimeoutMap } from './transaction'
import type { TransactionState } from './state'
import type { ControlStatement } from './wire'

/** The body of a block. @internal */
export type BlockBody<T> = (tx: TransactionHandle) => T | Promise<T>

// ---- __enter__ ---------------------------------------------------------------------------------

/**
 * Enters a block of `db`: a new transaction, or a block nested in the current one. Every check
 * that can fail happens before any SQL is sent.
 * @internal
 */
export function enterAtomic<T>(db: DatabaseCore, options: ResolvedOptions, fn: BlockBody<T>): Promise<T> {
  // Not an async function: the nested path hands back enterNested()'s own promise, so a block's
  // rejection reaches the caller in the same turn as before (Promise.all reports the first error).
  try {
    return enter(db, options, fn)
  } catch (error) {
    return Promise.reject(error)
  }
}

function enter<T>(db: DatabaseCore, options: ResolvedOptions, fn: BlockBody<T>): Promise<T> {
  if (typeof fn !== 'function')
    throw new InvalidOptionError('fn', 'atomic() expects a function to run inside the block.')
  const outer = storage.getStore()
  const found = currentBlock(db)
  // A block entered from a context whose block has ended (a timer, an event handler) does not join it.
  // A query builder's transaction open inside it (BEGIN on a db.pool client) holds its turn: code in
  // the builder's callback runs in the enclosing block's context and must join that transaction.
  const parent = found !== undefined && !found.ended && !found.tx.ended ? found.builderTail() : undefined
  const propagation = options.propagation
  if (propagation !== 'nested') {
    const entered = enterPropagating(db, options, fn, outer, parent)
    if (entered !== undefined) return entered
  }
  if (parent === undefined) {
    // Outermost: a transaction of its own. Retries apply here only: PostgreSQL retries whole transactions.
    const policy = options.retry ?? db.retry
    if (policy === undefined || policy.maxAttempts === 1) return runTransaction(db, options, fn, outer)
    return retryTransaction(db, options, fn, outer, policy)
  }
  if (parent.kitIdle) throw new TransactionManagementError(KIT_IDLE_MESSAGE)
  if (parent.kit !== undefined) return enterUnderTestTransaction(db, parent, options, fn, outer)
  if (options.retry !== undefined) {
    throw new TransactionManagementError(
      withName(
        'The retry option is only allowed on the outermost atomic() block, but this ' +
          'block is nested: PostgreSQL can only retry whole transactions (a savepoint ' +
          'retry keeps the old snapshot and its locks). Put retry on the outermost block.',
        options.name,
      ),
    )
  }
  // durable: leaving the block must mean committed, which a nested block cannot promise (Django).
  if (options.durable) throw new TransactionManagementError(withName(DURABLE_NESTED_MESSAGE, options.name))
  const tx = parent.tx
  // Characteristics are fixed by BEGIN: a nested block can only ask for what the transaction has.
  const key = mismatchedCharacteristic(options, tx)
  if (key !== undefined) {
    throw new TransactionManagementError(
      `${key} can only be chosen by the outermost atomic() block: this block is nested ` +
        `in a transaction whose ${key} is ${describeValue(tx.characteristics[key])}, not ` +
        `${describeValue(options[key])}. Set it on the outermost block, or make this block ` +
        `durable so that it must be outermost.`,
    )
  }
  return enterNested(parent, options, fn, outer, false)
}

// ---- propagation other than 'nested' ---------------------------------------------------------------

/** Whether `block` belongs to a test transaction of pg-atomic/testing (the code cannot see it). */
function inTestTransaction(block: Block): boolean {
  return block.tx.stack[0]?.kit === 'root'
}

/**
 * The `propagation` option: what the block does with an enclosing transaction of its database.
 * Returns `undefined` when the block proceeds as a `'nested'` one would (`'mandatory'` inside a
 * block, `'requiresNew'` outside one). Every refusal happens before anything runs.
 */
function enterPropagating<T>(
  db: DatabaseCore,
  options: ResolvedOptions,
  fn: BlockBody<T>,
  outer: Frame | undefined,
  parent: Block | undefined,
): Promise<T> | undefined {
  const propagation = options.propagation
  // A test transaction is invisible to the code: blocks directly in it are outermost for the code.
  const enclosing = parent === undefined || parent.kit !== undefined ? undefined : parent
  if (propagation === 'mandatory') {
    if (enclosing !== undefined) return undefined
    throw new TransactionManagementError(
      withName(
        `This atomic() block has propagation 'mandatory': it must run inside a block of database ` +
          `'${db.alias}', and there is none here. Call it from inside a block (or use the default, ` +
          `'nested', to begin a transaction when there is none).`,
        options.name,
      ),
    )
  }
  if (propagation === 'notSupported' || propagation === 'never') {
    if (fn.length > 0) {
      throw new InvalidOptionError(
        'fn',
        `With propagation '${propagation}' the callback runs outside any transaction and receives no ` +
          'handle: declare it without parameters and use db.query() or the ambient helpers.',
      )
    }
    const needless = transactionOnlyOption(options)
    if (needless !== undefined) {
      throw new InvalidOptionError(
        needless,
        `With propagation '${propagation}' the callback runs outside any transaction, so the option ` +
          `"${needless}" has nothing to apply to: leave it out (or use another propagation).`,
      )
    }
    if (propagation === 'never' && enclosing !== undefined) {
      throw new TransactionManagementError(
        withName(
          `This atomic() block has propagation 'never': it must not run inside a transaction, but it ` +
            `is inside block ${enclosing.name === undefined ? '' : `'${enclosing.name}' `}` +
            `(transaction ${enclosing.tx.id}) of database '${db.alias}'.`,
          options.name,
        ),
      )
    }
    const body = fn as () => T | Promise<T>
    if (enclosing === undefined) return Promise.resolve().then(body)
    if (inTestTransaction(enclosing)) {
      // In a test transaction a second connection would escape the test's rollback: the callback
      // runs in a savepoint the code cannot see (as the test's own), so code in it finds no block:
      // mandatory is refused, never allowed, onCommit captured by the kit as outside any block.
      return enterNested(enclosing, options, body, outer, true, 'suspension')
    }
    // Suspended: code in the callback sees no block of this database (autocommit, hooks at once).
    const suspended: Frame = { block: undefined, suspends: db, outer }
    return Promise.resolve().then(() => storage.run(suspended, body))
  }
  // requiresNew
  if (enclosing === undefined) return undefined
  if (inTestTransaction(enclosing)) {
    // Inside a test transaction a second connection would commit for real: the block is a
    // savepoint that behaves as outermost (durable, retry, captured hooks), rolled back with the test.
    return enterUnderTestTransaction(db, enclosing, options, fn, outer)
  }
  return runIndependent(db, options, fn, outer, enclosing)
}

/** The first option given that only a transaction can honour (`notSupported` / `never` refuse it). */
function transactionOnlyOption(options: ResolvedOptions): string | undefined {
  for (const key of [...CHARACTERISTICS, ...TIMEOUT_OPTIONS, 'retry', 'lock'] as const) {
    if (options[key] !== undefined) return key
  }
  if (options.durable) return 'durable'
  if (!options.savepoint) return 'savepoint'
  return undefined
}

/**
 * A `'requiresNew'` block: an outermost transaction of its own on another connection, the
 * enclosing one suspended meanwhile (code in the block, and its hooks, do not see it). Retries
 * apply to it as to any outermost block. While one of its statements waits, a watchdog checks
 * whether the suspended transaction holds the lock it waits for, and ends the wait with
 * {@link SuspendedTransactionDeadlockError}.
 */
async function runIndependent<T>(
  db: DatabaseCore,
  options: ResolvedOptions,
  fn: BlockBody<T>,
  outer: Frame | undefined,
  enclosing: Block,
): Promise<T> {
  const suspended: Frame = { block: undefined, suspends: db, outer }
  // Suspended for real: the enclosing block's turn is held for the whole lifetime, as a nested
  // block's is, so sibling work of the enclosing block waits instead of using its connection (and
  // a wait on the suspended session is then certainly one that could never end).
  const wait = enclosing.acquire()
  if (wait !== undefined) await wait
  enclosing.suspendedBy++
  try {
    const server = outermostBlockServer(db, options)
    const attempt = async (): Promise<T> => {
      db.assertOpen()
      const tx = new Transaction(db, options, suspended, server)
      tx.independent = true
      const block = new Block(tx, undefined, options)
      tx.stack.push(block)
      db.transactionStarted(tx)
      // Whatever the routing: a block routed to a replica may be served by the primary (no replica
      // usable). The watch checks only while both sessions are the primary's (isPrimaryClient).
      const watch = new SuspensionWatch(db, enclosing.tx, tx)
      try {
        const tracer = instrumentation.current
        return await (tracer === undefined ? block.execute(fn, suspended) : runTraced(tracer, block, fn, suspended))
      } catch (error) {
        // Per attempt, and never retried (retry.ts): the same lock would be waited for again.
        throw watch === undefined ? error : watch.explain(error)
      } finally {
        watch?.stop()
      }
    }
    const policy = options.retry ?? db.retry
    if (policy === undefined || policy.maxAttempts === 1) return await attempt()
    const label = { database: db.alias, name: options.name }
    const tracer = instrumentation.current
    // Traced like an outermost block's retries (retryTransaction): the attempts under the block's span.
    if (tracer === undefined) return await runWithRetry(policy, label, attempt)
    return await tracer.retrying(label, () => runWithRetry(policy, label, attempt))
  } finally {
    enclosing.suspendedBy--
    enclosing.release()
  }
}

/** SQLSTATE of a statement ended by a cancel request. */
const QUERY_CANCELED = '57014'

/** How often a requiresNew block's waiting statement is checked against its suspended transaction. */
const SUSPENSION_CHECK_MS = 1000

/** The self-deadlock watchdog of a requiresNew block (see {@link runIndependent}). */
class SuspensionWatch {
  private timer: NodeJS.Timeout | undefined
  private detected: { innerPid: number; outerPid: number } | undefined = undefined
  private checking = false

  constructor(
    private readonly db: DatabaseCore,
    private readonly outer: Transaction,
    private readonly inner: Transaction,
  ) {
    this.timer = setInterval(() => void this.check(), SUSPENSION_CHECK_MS)
    this.timer.unref()
  }

  stop(): void {
    if (this.timer !== undefined) clearInterval(this.timer)
    this.timer = undefined
  }

  private async check(): Promise<void> {
    const inner = this.inner
    const innerPid = processId(inner.client)
    const outerPid = processId(this.outer.client)
    if (this.checking || innerPid === undefined || outerPid === undefined) return
    if (!inner.wire.busy || this.detected !== undefined) return
    // Decided by the connections actually checked out: a replica's sessions cannot wait for a
    // primary's (and their process ids mean nothing on the primary).
    const innerClient = inner.client
    const outerClient = this.outer.client
    if (innerClient === undefined || outerClient === undefined) return
    if (!this.db.isPrimaryClient(innerClient) || !this.db.isPrimaryClient(outerClient)) return
    this.checking = true
    try {
      if (await this.db.blockedBy(innerPid, outerPid)) {
        this.detected = { innerPid, outerPid }
        const client = inner.client
        if (client !== undefined) await this.db.cancelStatement(client)
      }
    } catch {
      // A failed check (the server went away, say) proves nothing: the statement keeps waiting
      // under its own lock_timeout / statement_timeout, and the next tick checks again.
    } finally {
      this.checking = false
    }
  }

  /** The error the caller gets: the watchdog's finding when it cancelled the wait, else `error`. */
  explain(error: unknown): unknown {
    const found = this.detected
    // Only the cancellation it caused: an error that ended the wait first (a lock_timeout, say) stays.
    if (found === undefined || sqlState(error) !== QUERY_CANCELED) return error
    return new SuspendedTransactionDeadlockError(
      `A requiresNew atomic() block of database '${this.db.alias}' (server process ${found.innerPid}) ` +
        `waited for a lock held by the transaction it suspended (server process ${found.outerPid}): ` +
        'that transaction resumes only after the block ends, so the wait could never end, and ' +
        'PostgreSQL cannot see it. The block was rolled back; the suspended transaction is untouched. ' +
        'Take the lock in one of the two transactions only, or run the work before the outer one takes it.',
      found,
      { cause: error },
    )
  }
}

function processId(client: PoolClient | undefined): number | undefined {
  const pid = (client as { processID?: unknown } | undefined)?.processID
  return typeof pid === 'number' ? pid : undefined
}

/** Runs `fn` as a transaction retried by `policy` (a function of its own: closures cost the hot path). */
function retryTransaction<T>(
  db: DatabaseCore,
  options: ResolvedOptions,
  fn: BlockBody<T>,
  outer: Frame | undefined,
  policy: RetryPolicy,
): Promise<T> {
  const label = { database: db.alias, name: options.name }
  const attempts = (): Promise<T> => runWithRetry(policy, label, () => runTransaction(db, options, fn, outer))
  const tracer = instrumentation.current
  return tracer === undefined ? attempts() : tracer.retrying(label, attempts)
}

/** Runs `fn` in a block nested in `parent` (a savepoint unless `savepoint: false`). */
async function enterNested<T>(
  parent: Block,
  options: ResolvedOptions,
  fn: BlockBody<T>,
  outer: Frame | undefined,
  outermostForCode: boolean,
  kit?: 'suspension',
): Promise<T> {
  const tx = parent.tx
  // The child's whole lifetime is one operation of its parent: siblings run one after another.
  const wait = parent.acquire()
  if (wait !== undefined) await wait
  try {
    const unusable = tx.closedError(parent)
    if (unusable !== undefined) throw unusable
    const block = new Block(tx, parent, outermostForCode ? { ...options, savepoint: true } : options)
    block.outermostForCode = outermostForCode
    if (kit !== undefined) block.kit = kit
    tx.stack.push(block)
    return await (tx.scope === undefined ? block.execute(fn, outer) : executeTraced(block, fn, outer))
  } finally {
    parent.release()
  }
}

/**
 * A block whose parent is a test transaction of `pg-atomic/testing`: outermost from the code's
 * point of view, so it behaves as one — `durable` is allowed (as in Django's TestCase), `retry`
 * runs the block again after rolling back to its savepoint, and its onCommit hooks, which a commit
 * would have run, are handed to the test kit — while it is a savepoint of the test transaction.
 * Characteristics can only be those of the test transaction (PostgreSQL fixes them at BEGIN).
 */
function enterUnderTestTransaction<T>(
  db: DatabaseCore,
  parent: Block,
  options: ResolvedOptions,
  fn: BlockBody<T>,
  outer: Frame | undefined,
): Promise<T> {
  const tx = parent.tx
  const key = mismatchedCharacteristic(options, tx)
  if (key !== undefined) {
    throw new TransactionManagementError(
      `${key} ${describeValue(options[key])} cannot be honoured inside a test transaction of pg-atomic/testing, ` +
        `whose ${key} is ${describeValue(tx.characteristics[key])}: PostgreSQL fixes it when the test ` +
        'transaction begins. Give the test transaction the same option, or use the commit-for-real mode for ' +
        'this test.',
    )
  }
  const policy = options.retry ?? db.retry
  const once = (): Promise<T> => enterNested(parent, options, fn, outer, true)
  if (policy === undefined || policy.maxAttempts === 1) return once()
  return runWithRetry(policy, { database: db.alias, name: options.name }, once)
}

/**
 * Opens the outermost block of a test transaction (`pg-atomic/testing`) without a callback: it
 * stays open across the tests of a file, each of which gets a savepoint in it
 * ({@link Block.openBuilderBlock}), and is rolled back by {@link closeTestRoot}.
 * @internal
 */
export function openTestRoot(db: DatabaseCore, options: ResolvedOptions): Block {
  db.assertOpen()
  const tx = new Transaction(db, options, undefined)
  const block = new Block(tx, undefined, options)
  block.kit = 'root'
  tx.stack.push(block)
  db.transactionStarted(tx)
  return block
}

/** Rolls back a test transaction opened by {@link openTestRoot}, whatever happened in it. @internal */
export async function closeTestRoot(root: Block): Promise<void> {
  root.kitIdle = false
  if (root.builderChild !== undefined) await root.builderChild.closeBuilderBlock('rollback', true)
  await root.rollBackRoot()
}

function runTransaction<T>(
  db: DatabaseCore,
  options: ResolvedOptions,
  fn: BlockBody<T>,
  outer: Frame | undefined,
): Promise<T> {
  db.assertOpen()
  const tx = new Transaction(db, options, outer, outermostBlockServer(db, options))
  const block = new Block(tx, undefined, options)
  tx.stack.push(block)
  db.transactionStarted(tx)
  const tracer = instrumentation.current
  return tracer === undefined ? block.execute(fn, outer) : runTraced(tracer, block, fn, outer)
}

/** Traced (pg-atomic/otel): the whole transaction runs in the tracer's context. */
function runTraced<T>(tracer: Instrumentation, block: Block, fn: BlockBody<T>, outer: Frame | undefined): Promise<T> {
  const tx = block.tx
  const c = tx.characteristics
  let scope: TransactionScope | undefined
  try {
    scope = tracer.transaction({ id: tx.id, database: tx.db.alias, name: block.options.name, ...c })
  } catch {
    // The tracer must never change the outcome (pg-atomic/otel does not throw; any other may).
    scope = undefined
  }
  if (scope === undefined) return block.execute(fn, outer)
  tx.hooks.scope = scope
  return scope.run(() => block.execute(fn, outer))
}

/** A nested block, traced when it has a savepoint: its lifetime runs in the tracer's context. */
function executeTraced<T>(block: Block, fn: BlockBody<T>, outer: Frame | undefined): Promise<T> {
  const scope = block.tx.scope
  if (scope === undefined || block.savepointName === undefined) return block.execute(fn, outer)
  return scope.nested(block, () => block.execute(fn, outer))
}

const CHARACTERISTICS = ['isolationLevel', 'readOnly', 'deferrable'] as const

/** The first characteristic `options` asks for that the running transaction does not have. */
function mismatchedCharacteristic(
  options: ResolvedOptions,
  tx: Transaction,
): (typeof CHARACTERISTICS)[number] | undefined {
  for (const key of CHARACTERISTICS) {
    const wanted = options[key]
    if (wanted !== undefined && wanted !== tx.characteristics[key]) return key
  }
  return undefined
}

function describeValue(v: IsolationLevel | boolean | undefined): string {
  return v === undefined ? "the server's default" : typeof v === 'string' ? `'${v}'` : String(v)
}

/**
 * One `atomic()` block, and the handle its callback receives.
 * @internal
 */
export class Block implements TransactionHandle {
  readonly tx: Transaction
  readonly parent: Block | undefined
  readonly depth: number
  readonly options: ResolvedOptions
  /** The savepoint of this block; `undefined` for the outermost block and for blocks that join their parent. */
  readonly savepointName: string | undefined
  /** Innermost block, this one included, that can roll back on its own (owns hooks registered inside). */
  readonly rollbackOwner: Block
  /** Timeouts set by this nested block itself (SET LOCAL after its SAVEPOINT). */
  readonly ownTimeouts: TimeoutMap | undefined
  /** Effective timeouts inside this block. */
  readonly timeouts: TimeoutMap
  ended = false
  private running = false
  private waiters: Array<() => void> = []

  constructor(tx: Transaction, parent: Block | undefined, options: ResolvedOptions) {
    this.tx = tx
    this.parent = parent
    this.options = options
    if (parent === undefined) {
      this.depth = 1
      this.savepointName = undefined
      this.rollbackOwner = this
      this.ownTimeouts = undefined
      this.timeouts = tx.timeouts
      return
    }
    this.depth = parent.depth + 1
    // Django: no savepoint inside an already-doomed transaction, so the doom cannot be undone.
    this.savepointName =
      options.savepoint && tx.state.kind !== 'doomed' ? savepointName(++tx.savepointCounter) : undefined
    this.rollbackOwner = this.savepointName === undefined ? parent.rollbackOwner : this
    let own: Partial<Record<TimeoutOption, number>> | undefined
    for (const option of TIMEOUT_OPTIONS) {
      const value = options[option]
      if (value !== undefined && value !== parent.timeouts[option]) (own ??= {})[option] = value
    }
    if (own !== undefined && this.savepointName === undefined) {
      // A nested block's SET LOCAL is undone by restoring it at exit, which needs the savepoint.
      throw new TransactionManagementError(
        options.savepoint
          ? 'Timeouts on a nested atomic() block need a savepoint to be undone afterwards, ' +
              'and this block gets none because the transaction is already marked for rollback.'
          : 'Timeouts on a nested atomic() block need a savepoint to be undone afterwards: ' +
              'remove savepoint: false, or set the timeouts on the enclosing block.',
      )
    }
    this.ownTimeouts = own === undefined ? undefined : Object.freeze(own)
    this.timeouts = own === undefined ? parent.timeouts : Object.freeze({ ...parent.timeouts, ...own })
  }

  get id(): number {
    return this.tx.id
  }

  get isolationLevel(): IsolationLevel | undefined {
    return this.tx.characteristics.isolationLevel
  }

  get name(): string | undefined {
    return this.options.name
  }

  /** Waits for this block's turn (FIFO); resolves at once when the block is idle. */
  acquire(): Promise<void> | undefined {
    if (!this.running) {
      this.running = true
      return undefined
    }
    return new Promise<void>((resolve) => this.waiters.push(resolve))
  }

  release(): void {
    const next = this.waiters.shift()
    if (next !== undefined) next()
    else this.running = false
  }

  /**
   * The block an operation requested through this handle runs in: the innermost active block of
   * the current async context when it is nested in this one (so a handle captured from an
   * enclosing block cannot deadlock behind the block that is running), else this block.
   */
  private route(): Block {
    const block = this.contextBlock().builderTail()
    // A handle of a suspended transaction used inside the requiresNew block that suspended it
    // would wait for that block's end: refuse it instead of hanging.
    if (block.suspendedBy > 0 && suspendedHere(block.tx)) throw new TransactionManagementError(SUSPENDED_MESSAGE)
    return block
  }

  /** {@link Block.route} for the modules that run operations on behalf of a handle (db.pool clients). @internal */
  routed(): Block {
    return this.route()
  }

  /**
   * The innermost block of the current async context nested in this one, without following the
   * builder blocks other clients opened: where a db.pool client opens its own builder block, so
   * that a second builder transaction waits for the first instead of nesting in it.
   * @internal
   */
  contextBlock(): Block {
    const current = currentBlock(this.tx.db)
    if (
      current !== undefined &&
      current !== this &&
      !current.ended &&
      current.tx === this.tx &&
      isWithin(current, this)
    )
      return current
    return this
  }

  // ---- query builders' transactions (BEGIN / SAVEPOINT sent on a db.pool client) ------------------

  /**
   * The block a query builder's `BEGIN` or `SAVEPOINT` opened inside this one (on a client of
   * `db.pool`): it holds this block's turn until the builder's `COMMIT` / `RELEASE` / `ROLLBACK`.
   */
  builderChild: Block | undefined = undefined
  /**
   * Set on the blocks of a test transaction of `pg-atomic/testing` (`'root'`: the file's
   * transaction; `'test'`: one test's savepoint). Blocks entered in them are outermost from the
   * code's point of view.
   */
  kit: 'root' | 'test' | 'suspension' | undefined = undefined
  /** A kit root between tests: work reaching it is refused (it would outlive its test). */
  kitIdle = false
  /** requiresNew blocks that hold this block's turn while its transaction is suspended (see runIndependent). */
  suspendedBy = 0
  /** A block outermost from the code's point of view, nested in a test transaction. */
  outermostForCode = false
  /** {@link Block.closeBuilderBlock} has been called (by the builder, or by the enclosing block's exit). */
  private builderClosing = false

  /**
   * This block, or the innermost builder block open inside it: where an operation requested on
   * this block runs. Code inside a builder's transaction callback runs in this block's async
   * context; it joins the builder's transaction instead of waiting for it (which would never end).
   */
  builderTail(): Block {
    // A builder block being closed no longer takes operations: they wait for the enclosing block's turn.
    const child = this.builderChild
    return child === undefined || child.builderClosing ? this : child.builderTail()
  }

  /**
   * Opens a nested block without a callback, for a query builder's `BEGIN` or `SAVEPOINT`: it
   * takes this block's turn (as a nested block's lifetime does) and keeps it until
   * {@link Block.closeBuilderBlock}. The caller has checked the characteristics.
   */
  async openBuilderBlock(options: ResolvedOptions): Promise<Block> {
    const wait = this.acquire()
    if (wait !== undefined) await wait
    try {
      const unusable = this.tx.closedError(this)
      if (unusable !== undefined) throw unusable
      const block = new Block(this.tx, this, options)
      // A builder transaction begun directly in a test transaction is outermost for the code: its
      // COMMIT hands its onCommit hooks to the test kit.
      block.outermostForCode = this.kit !== undefined
      this.tx.stack.push(block)
      this.builderChild = block
      return block
    } catch (error) {
      this.release()
      throw error
    }
  }

  /**
   * Closes a block opened by {@link Block.openBuilderBlock}, and first the builder blocks still open
   * inside it. `'commit'` exits it normally (RELEASE deferred; like any block it rejects when it
   * had to roll back, for example after a caught error); `'rollback'` rolls it back to its savepoint
   * silently: the builder asked for it, and has reported its own error.
   */
  async closeBuilderBlock(outcome: 'commit' | 'rollback', cascade = false): Promise<void> {
    if (this.builderClosing) return
    this.builderClosing = true
    const parent = this.parent as Block
    try {
      // Another client's builder transaction open inside this one holds its turn: it is waited for
      // (acquire below), not closed with this one's outcome — unless everything must end now.
      if (cascade && this.builderChild !== undefined) await this.builderChild.closeBuilderBlock(outcome, true)
      const wait = this.acquire()
      if (wait !== undefined) await wait
      try {
        await closeCursorOf(this)
        this.ended = true
        // A builder's ROLLBACK is intentional: a silent rollback, whatever doomed the block.
        if (outcome === 'rollback') this.tx.setRollback(true)
        await this.exitNested(false, undefined, undefined)
      } finally {
        this.release()
      }
    } finally {
      parent.builderChild = undefined
      parent.release()
    }
  }

  // ---- statements ------------------------------------------------------------------------------

  query<R extends QueryResultRow = QueryResultRow>(text: string, values?: readonly unknown[]): Promise<QueryResult<R>>
  query<R extends QueryResultRow = QueryResultRow>(config: QueryConfig): Promise<QueryResult<R>>
  query<R extends QueryResultRow = QueryResultRow>(
    textOrConfig: string | QueryConfig,
    values?: readonly unknown[],
  ): Promise<QueryResult<R>> {
    let block: Block
    try {
      block = this.route()
    } catch (error) {
      return Promise.reject(error)
    }
    return block.run<R>(textOrConfig, values)
  }

  /** Runs a user statement in this block. @internal */
  run<R extends QueryResultRow>(
    textOrConfig: string | QueryConfig,
    values: readonly unknown[] | undefined,
  ): Promise<QueryResult<R>> {
    // Not async: the statement's own promise is handed back, so its rejection reaches the caller in
    // the same turn as a sibling block's (Promise.all reports the first error).
    const tail = this.builderChild === undefined ? this : this.builderTail()
    return tail.runOwn<R>(textOrConfig, values)
  }

  /**
   * Runs a user statement in this very block, without joining a builder transaction open in it (a
   * db.pool client's own statements: they wait for another client's builder transaction). @internal
   */
  async runOwn<R extends QueryResultRow>(
    textOrConfig: string | QueryConfig,
    values: readonly unknown[] | undefined,
  ): Promise<QueryResult<R>> {
    if (this.kitIdle) throw new TransactionManagementError(KIT_IDLE_MESSAGE)
    const config = normalizeQuery(textOrConfig, values)
    const tx = this.tx
    const early = tx.unusableError(this)
    if (early !== undefined) throw early
    refuseTransactionControl(config.text, true)
    const wait = this.acquire()
    try {
      if (wait !== undefined) {
        await wait
        const late = tx.unusableError(this)
        if (late !== undefined) throw late
      }
      tx.wire.busy = true
      try {
        if (tx.needsPrepare()) {
          // BEGIN / SAVEPOINT / RELEASE / ROLLBACK TO ride with the statement, before one Sync.
          const pipelined = canPipeline(config) ? withSerializedValues(config) : undefined
          const preamble = await tx.preamble()
          // A flush the preamble waited for may have failed: then the statement must not go out.
          const failed = tx.unusableError(this)
          if (failed !== undefined) throw failed
          if (preamble !== undefined && pipelined !== undefined) return await tx.wire.sendWith<R>(preamble, pipelined)
          if (preamble !== undefined) await tx.wire.sendBefore(preamble)
        }
        tx.wire.roundTrips++
        return await (tx.client as PoolClient).query<R>(config)
      } catch (error) {
        // Whatever failed (the checkout, a control statement, or the statement itself), the
        // statement did not run: the block must not commit as if it had (no silent loss).
        tx.statementFailed(error)
        throw error
      }
    } finally {
      tx.wire.busy = false
      this.release()
    }
  }

  cursor<R extends QueryResultRow = QueryResultRow>(
    text: string,
    values?: readonly unknown[],
    options?: CursorOptions,
  ): AsyncIterable<R> {
    return cursorRows<R>(this.route(), text, values, resolveBatchSize(options))
  }

  // ---- hooks and the rollback flag ---------------------------------------------------------------

  onCommit(fn: Hook, options?: OnCommitOptions): void {
    assertHook(fn, 'onCommit')
    const block = this.route()
    if (block.ended) throw new TransactionManagementError(ENDED_MESSAGE)
    if (block.rollbackOwner.kit !== undefined) {
      // Registered outside any block of the code, in a test transaction: in production it would run
      // at once; here nothing is committed, so it goes to the test kit.
      this.tx.db.testHooks?.([{ fn, robust: options?.robust === true }])
      return
    }
    this.tx.hooks.add(block.rollbackOwner, 'commit', fn, options?.robust === true)
  }

  onRollback(fn: Hook): void {
    assertHook(fn, 'onRollback')
    const block = this.route()
    if (block.ended) throw new TransactionManagementError(ENDED_MESSAGE)
    this.tx.hooks.add(block.rollbackOwner, 'rollback', fn, true)
  }

  setRollback(flag: boolean): void {
    if (typeof flag !== 'boolean') throw new InvalidOptionError('flag', 'setRollback() expects true or false.')
    if (this.route().ended) throw new TransactionManagementError(ENDED_MESSAGE)
    this.tx.setRollback(flag)
  }

  getRollback(): boolean {
    if (this.route().ended) throw new TransactionManagementError(ENDED_MESSAGE)
    return this.tx.rollbackPending
  }

  /** A snapshot for `currentTransaction()`. @internal */
  info(): TransactionInfo {
    const tx = this.tx
    const savepointNames: string[] = []
    for (const b of tx.stack) if (b.savepointName !== undefined) savepointNames.push(b.savepointName)
    return Object.freeze({
      id: tx.id,
      database: tx.db.alias,
      depth: this.depth,
      savepointNames: Object.freeze(savepointNames),
      isolationLevel: tx.characteristics.isolationLevel,
      readOnly: tx.characteristics.readOnly,
      deferrable: tx.characteristics.deferrable,
      begun: tx.begun,
      rollback: tx.rollbackPending,
      name: this.options.name,
    })
  }

  // ---- the body ----------------------------------------------------------------------------------

  /** Runs the body in this block's context, waits for its queued work, then exits. @internal */
  async execute<T>(fn: BlockBody<T>, outer: Frame | undefined): Promise<T> {
    let result: T | undefined
    let threw = false
    let thrown: unknown
    try {
      const lock = this.options.lock
      if (lock !== undefined) {
        // The block's table lock comes first; a conflict fails the block before its body runs.
        try {
          await this.run(lock.statement, undefined)
        } catch (error) {
          throw lockNotAvailableFrom(error, { kind: 'table', tables: lock.tables }) ?? error
        }
      }
      result = await storage.run({ block: this, outer }, fn, this)
    } catch (error) {
      threw = true
      thrown = error
    }
    // A query builder's transaction still open in this block never committed: it is rolled back,
    // and the block must not report success for its work.
    const builder = this.builderChild
    if (builder !== undefined) {
      await builder.closeBuilderBlock('rollback', true).then(undefined, () => undefined)
      if (!threw) {
        threw = true
        thrown = new TransactionManagementError(withName(BUILDER_OPEN_MESSAGE, this.name))
      }
    }
    // Statements and child blocks queued when the body returned are settled before the exit.
    const wait = this.acquire()
    if (wait !== undefined) await wait
    try {
      await closeCursorOf(this)
      this.ended = true
      return await (this.parent === undefined
        ? this.exitOutermost(threw, thrown, result as T)
        : this.exitNested(threw, thrown, result as T))
    } finally {
      this.release()
    }
  }

  /** Ends an outermost block opened without a callback by rolling it back (a test transaction). @internal */
  async rollBackRoot(): Promise<void> {
    const wait = this.acquire()
    if (wait !== undefined) await wait
    try {
      await closeCursorOf(this)
      this.ended = true
      this.tx.setRollback(true)
      await this.exitOutermost(false, undefined, undefined)
    } finally {
      this.release()
    }
  }

  private popStack(): boolean {
    const tx = this.tx
    const index = tx.stack.length - 1
    if (tx.stack[index] !== this) throw new AtomicError('pg-atomic internal error: block stack out of order.')
    tx.stack.pop()
    const materialized = tx.materializedUpTo > index
    if (tx.materializedUpTo > tx.stack.length) tx.materializedUpTo = tx.stack.length
    return materialized
  }

  private statement(kind: ControlStatement['kind'], sql: string, droppable: boolean): ControlStatement {
    return { kind, sql, depth: this.depth, savepoint: this.savepointName, droppable, name: this.options.name }
  }

  // ---- __exit__ of a nested block ------------------------------------------------------------------

  private async exitNested<T>(threw: boolean, thrown: unknown, result: T): Promise<T> {
    const tx = this.tx
    // `materialized`: its SAVEPOINT reached the server (a block that ran no statement sent none).
    const materialized = this.popStack()
    const state = tx.state
    if (state.kind === 'lost' || state.kind === 'failed') {
      // Nothing can be sent; the outermost block rolls back (and runs the rollback hooks).
      if (threw) throw thrown
      throw state.kind === 'lost' ? lostError(state.cause) : fatalError(state.cause)
    }

    if (this.savepointName === undefined) {
      // Joined the enclosing block: an error dooms it up to the nearest savepoint (Django).
      if (threw) {
        tx.blockFailed(thrown)
        throw thrown
      }
      if (state.kind === 'doomed' && state.byError)
        throw new TransactionManagementError(withName(SWALLOWED_MESSAGE, this.name), { cause: state.cause })
      return result
    }

    // Aborted on the server with the flag cleared: if this block's savepoint reached the server,
    // the failure happened inside it (a SAVEPOINT after it would have failed), so its work is lost.
    const lostWork = state.kind === 'aborted' && materialized
    if (!threw && (state.kind === 'ok' || (state.kind === 'aborted' && !materialized))) {
      if (this.outermostForCode) {
        // Outermost for the code, a savepoint of a test transaction: the hooks a COMMIT would have
        // run go to the test kit (captured, not run: the data is never committed).
        const hooks = tx.hooks.takeCommitHooksWithin(this)
        if (hooks.length > 0) tx.db.testHooks?.(hooks)
      }
      // Success: RELEASE, deferred to ride with the next control statement (or dropped by COMMIT).
      if (materialized) {
        const statements = [this.statement('release', releaseStatement(this.savepointName), true)]
        if (this.ownTimeouts !== undefined) {
          // Its SET LOCALs outlive RELEASE: restore the enclosing block's values before the next statement.
          for (const option of TIMEOUT_OPTIONS) {
            if (this.ownTimeouts[option] === undefined) continue
            const outerValue = this.parent?.timeouts[option]
            const sql = outerValue === undefined ? resetLocalStatement(option) : setLocalStatement(option, outerValue)
            statements.push(this.statement('set-local', sql, true))
          }
        }
        tx.wire.queue(statements, this.ownTimeouts !== undefined)
      }
      return result
    }

    // Failure (thrown, doomed, or aborted on the server): ROLLBACK TO its savepoint, then RELEASE it.
    tx.savepointRolledBack(materialized)
    tx.scope?.rolledBack(this)
    if (materialized) {
      tx.wire.queueRollbackTo(
        this.statement('rollback-to', rollbackToStatement(this.savepointName), false),
        this.statement('release', releaseStatement(this.savepointName), false),
      )
      // onRollback hooks promise that the rollback happened: send it now rather than merging it.
      if (tx.hooks.hasRollbackHooksWithin(this)) await tx.wire.flushNow()
    }
    await tx.hooks.savepointRolledBack(this)
    if (threw) throw thrown
    if (lostWork) throw new TransactionManagementError(withName(ABORTED_MESSAGE, this.name), { cause: state.cause })
    if (state.kind === 'doomed' && state.byError)
      throw new TransactionManagementError(withName(SWALLOWED_MESSAGE, this.name), { cause: state.cause })
    // setRollback(true): rolled back silently.
    return result
  }

  // ---- __exit__ of the outermost block ---------------------------------------------------------------

  private async exitOutermost<T>(threw: boolean, thrown: unknown, result: T): Promise<T> {
    const tx = this.tx
    this.popStack()
    try {
      const state = tx.state
      if (state.kind === 'lost') {
        // The server rolled back when the connection went: nothing to send.
        tx.wire.release(state.cause)
        traceEnd(tx, 'rolled_back', threw ? thrown : state.cause)
        await tx.hooks.runRollbackHooks()
        // The callback's own error (unrelated to the connection) is rethrown unchanged, as always,
        // unless db.close() aborted the transaction: then every error inside is a consequence.
        if (threw && !isConnectionLoss(thrown) && !tx.aborted) throw thrown
        throw lostError(state.cause)
      }
      if (!threw && (state.kind === 'ok' || state.kind === 'aborted')) {
        // Success: COMMIT — only if BEGIN was sent; a block that ran nothing has nothing to commit.
        // (An aborted transaction is committed too: the server answers ROLLBACK, which is reported.)
        if (tx.begun) {
          try {
            await tx.wire.commit()
          } catch (error) {
            const unknown = error instanceof CommitOutcomeUnknownError
            traceEnd(tx, unknown ? 'unknown' : 'rolled_back', error)
            if (unknown) {
              // It may have committed: running onRollback hooks (compensations) could corrupt data,
              // and onCommit hooks could announce what never happened. Neither runs.
              tx.hooks.discard()
            } else await tx.hooks.runRollbackHooks()
            throw error
          }
        } else tx.wire.release()
        tx.ended = true
        traceEnd(tx, 'committed', undefined)
        await tx.hooks.runCommitHooks()
        return result
      }
      // Failure (thrown, doomed, or a control statement failed): ROLLBACK.
      await tx.wire.rollback()
      tx.ended = true
      traceEnd(tx, 'rolled_back', threw ? thrown : rollbackCause(state))
      await tx.hooks.runRollbackHooks()
      if (threw) throw thrown
      if (state.kind === 'failed') throw fatalError(state.cause)
      if (state.kind === 'doomed' && state.byError)
        throw new TransactionManagementError(withName(SWALLOWED_MESSAGE, this.name), { cause: state.cause })
      return result
    } finally {
      tx.ended = true
      // An exit path that did not tell the tracer (an internal error): its span still ends. A no-op
      // when the outcome was reported (a scope ends once). No catch clause for its error: it would
      // cost every untraced block's frame.
      traceEnd(tx, 'rolled_back', undefined)
      if (tx.client !== undefined)
        tx.wire.release(new Error('pg-atomic released a connection after an unexpected exit path'))
      tx.db.transactionEnded(tx)
    }
  }
}

/** Tells the tracer, if one is installed, how the transaction ended (before its hooks run). */
function traceEnd(tx: Transaction, outcome: TransactionOutcome, error: unknown): void {
  tx.scope?.end(outcome, error, tx.wire.roundTrips)
}

/** The error that made the transaction roll back; `undefined` for `setRollback(true)` alone (intentional). */
function rollbackCause(state: TransactionState): unknown {
  return state.kind === 'failed' || (state.kind === 'doomed' && state.byError) ? state.cause : undefined
}

function assertHook(fn: unknown, what: string): asserts fn is Hook {
  if (typeof fn !== 'function') throw new InvalidOptionError('callback', `${what}()'s callback must be a function.`)
}
