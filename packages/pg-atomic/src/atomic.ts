/**
 * The block state machine: Django's `Atomic` for node-postgres.
 *
 * - A {@link Transaction} exists per outermost block. It owns the (lazily checked-out) connection,
 *   the stack of active blocks, the doom flag (Django's `needs_rollback`), the hooks, and the
 *   control statements that are deferred so they can share round trips.
 * - A {@link Block} exists per `atomic()` call and is also the handle the callback receives. Each
 *   block serializes its own operations (queries, and the whole lifetime of each child block) in
 *   FIFO order, so `Promise.all` of sibling blocks or queries never interleaves savepoints. The
 *   block whose operation runs is therefore always the top of the transaction's stack.
 *
 * Round trips: BEGIN (+ SET LOCALs) and the SAVEPOINTs of blocks entered before the first query
 * go in one simple-protocol string just before that query. The RELEASE of a successful nested
 * block waits for the next control statement (or is dropped by COMMIT/ROLLBACK/an enclosing
 * ROLLBACK TO). The ROLLBACK TO of a failed nested block is merged with the next control statement
 * of the same event-loop turn, and otherwise sent on the next turn (setImmediate).
 *
 * @module
 */
import { performance } from 'node:perf_hooks'
import type { PoolClient, QueryConfig, QueryResult, QueryResultRow } from 'pg'
import Cursor from 'pg-cursor'
import { currentBlock, storage } from './context'
import type { Frame } from './context'
import {
  AtomicError,
  CommitOutcomeUnknownError,
  ConnectionLostError,
  DOOMED_MESSAGE,
  DURABLE_NESTED_MESSAGE,
  FORBIDDEN_IN_ATOMIC_MESSAGE,
  InvalidOptionError,
  OnCommitHookError,
  TransactionManagementError,
  isConnectionLoss,
  lockNotAvailableFrom,
  sqlState,
} from './errors'
import { hookErrorChannel, retryChannel, statementChannel } from './events'
import type { StatementKind } from './events'
import type { AtomicLogger, ResolvedOptions, RetryPolicy, TransactionDefaults } from './options'
import { TIMEOUT_OPTIONS } from './vocabulary'
import type { IsolationLevel, TimeoutOption } from './vocabulary'
import {
  COMMIT,
  ROLLBACK,
  beginStatement,
  releaseStatement,
  resetLocalStatement,
  rollbackToStatement,
  savepointName,
  savepointStatement,
  setLocalStatement,
} from './sql/transaction'
import type { BeginCharacteristics } from './sql/transaction'
import { findTransactionControl } from './sql/scan'
import type { CursorOptions, Hook, OnCommitOptions, TransactionHandle, TransactionInfo } from './types'

/** What the state machine needs from a database. @internal */
export interface DatabaseCore {
  readonly alias: string
  readonly defaults: Readonly<TransactionDefaults>
  /** The database's default retry policy for outermost blocks. */
  readonly retry: RetryPolicy | undefined
  readonly logger: AtomicLogger
  /** Checks out a connection with an `'error'` listener attached by the caller. */
  connect(): Promise<PoolClient>
  /** Sends a protocol cancel request for the statement `client` may be running, if any (bounded in time). */
  cancelStatement(client: PoolClient): Promise<void>
  /** Refuses new outermost blocks (closing/closed database) by throwing. */
  assertOpen(): void
  transactionStarted(tx: Transaction): void
  transactionEnded(tx: Transaction): void
}

/** @internal */
export const ENDED_MESSAGE =
  "This 'atomic' block has already ended, so its transaction can no longer be used and the statement was not run. Await all work of a block inside that block."
/** @internal */
export const SWALLOWED_MESSAGE =
  "The 'atomic' block finished normally, but an error inside it was caught and not re-raised, so its work was rolled back. Let the error propagate, or wrap the failing part in a nested atomic() block so that only that part is rolled back."
const CURSOR_OPEN_MESSAGE =
  "A cursor is open on this transaction's connection: read it to the end or break out of its loop before running other statements in the same transaction."

let nextTransactionId = 1

type TimeoutMap = Readonly<Partial<Record<TimeoutOption, number>>>
const NO_TIMEOUTS: TimeoutMap = Object.freeze({})

interface Pending {
  /** The `name` option of the block the statement belongs to. */
  readonly name: string | undefined
  readonly kind: StatementKind
  readonly sql: string
  readonly depth: number
  readonly savepoint: string | undefined
  /** A successful RELEASE or a timeout restore: unnecessary before COMMIT / ROLLBACK. */
  readonly droppable: boolean
}

interface HookEntry {
  readonly kind: 'commit' | 'rollback'
  readonly fn: Hook
  readonly robust: boolean
  /** Innermost block with a savepoint (or the outermost block) active at registration. */
  readonly owner: Block
}

function hookName(fn: Hook): string {
  return fn.name === '' ? 'an anonymous function' : fn.name
}

/** Validates and normalizes the arguments of `query()`. @internal */
export function normalizeQuery(textOrConfig: string | QueryConfig, values: readonly unknown[] | undefined): QueryConfig {
  if (typeof textOrConfig === 'string') return values === undefined ? { text: textOrConfig } : { text: textOrConfig, values: values as unknown[] }
  if (typeof textOrConfig !== 'object' || textOrConfig === null || typeof textOrConfig.text !== 'string') {
    throw new InvalidOptionError('text', 'query() expects SQL text (a string) or a QueryConfig object with a "text" string.')
  }
  if (typeof (textOrConfig as { submit?: unknown }).submit === 'function') {
    // A submittable (pg-cursor, pg-query-stream) keeps the connection busy until it is closed; run
    // through query() it would hang the transaction or go back to the pool still busy.
    throw new TransactionManagementError('Submittable queries (cursors, streams) cannot be run through query(); use db.cursor() or tx.cursor() to stream rows.')
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
      `${FORBIDDEN_IN_ATOMIC_MESSAGE} ${command} cannot be sent inside an atomic() block: nest atomic() blocks for savepoints and let the outermost block commit or roll back.`,
    )
  }
  throw new TransactionManagementError(
    `${command} was refused: outside an atomic() block every statement runs in autocommit mode on a pooled connection, and transaction control sent this way would leave the connection idle in transaction. Use atomic() to run a transaction.`,
  )
}

/**
 * One transaction: the state shared by an outermost block and all blocks nested in it.
 * @internal
 */
export class Transaction {
  readonly id = nextTransactionId++
  readonly db: DatabaseCore
  readonly characteristics: BeginCharacteristics
  /** The outermost block's timeouts (applied with SET LOCAL after BEGIN). */
  readonly timeouts: TimeoutMap
  client: PoolClient | undefined = undefined
  begun = false
  ended = false
  readonly stack: Block[] = []
  /** Number of stack entries whose BEGIN/SAVEPOINT has been sent. */
  materializedUpTo = 0
  savepointCounter = 0
  pending: Pending[] = []
  /** Pending contains statements that must run before the next query (ROLLBACK TO, timeout restore). */
  mustFlush = false
  private flushScheduled = false
  private flushing: Promise<void> | undefined = undefined
  private inFlight = false
  /** A connection error reported while a statement was in flight: applied after that statement settled. */
  private deferredClientError: { error: unknown } | undefined = undefined

  /**
   * An operation is using the connection. While it is, a connection error reported by the client's
   * 'error' event is held back until the operation settles, so the operation's own error (which
   * says what happened to it) is the one recorded as the cause; pg can emit the event first when
   * both arrive in one socket read (seen through PgBouncer).
   */
  get busy(): boolean {
    return this.inFlight
  }

  set busy(value: boolean) {
    this.inFlight = value
    if (!value && this.deferredClientError !== undefined) {
      const { error } = this.deferredClientError
      this.deferredClientError = undefined
      this.markLost(error)
    }
  }
  /** Django's `needs_rollback`. */
  needsRollback = false
  /** The doom came from an error (reported at exit), not from setRollback(true) (silent). */
  rollbackByError = false
  rollbackCause: unknown = undefined
  /** The connection is gone. */
  lost = false
  lostError: unknown = undefined
  /** A control statement failed: the server-side state no longer matches ours; only ROLLBACK is safe. */
  fatal = false
  fatalError: unknown = undefined
  hooks: HookEntry[] = []
  cursor: { readonly cursor: Cursor; readonly block: Block } | undefined = undefined
  /** The async context the outermost block was entered from: hooks run there, outside the transaction. */
  readonly outer: Frame | undefined
  /** The `name` option of the outermost block (carried by BEGIN, COMMIT and ROLLBACK events). */
  readonly outermostName: string | undefined

  constructor(db: DatabaseCore, options: ResolvedOptions, outer: Frame | undefined) {
    this.db = db
    this.outer = outer
    this.outermostName = options.name
    const d = db.defaults
    this.characteristics = {
      isolationLevel: options.isolationLevel ?? d.isolationLevel,
      readOnly: options.readOnly ?? d.readOnly,
      deferrable: options.deferrable ?? d.deferrable,
    }
    let timeouts: Partial<Record<TimeoutOption, number>> | undefined
    for (const option of TIMEOUT_OPTIONS) {
      const value = options[option] ?? d[option]
      if (value !== undefined) (timeouts ??= {})[option] = value
    }
    this.timeouts = timeouts === undefined ? NO_TIMEOUTS : Object.freeze(timeouts)
  }

  /** Listener attached to the client for the whole checkout: pg-pool removes its own. */
  readonly onClientError = (error: unknown): void => {
    if (this.inFlight) this.deferredClientError ??= { error }
    else this.markLost(error)
  }

  markLost(error: unknown): void {
    if (!this.lost) {
      this.lost = true
      this.lostError = error
    }
  }

  /** A statement of the user failed: the block is doomed (deliberate difference 1). */
  statementFailed(error: unknown): void {
    // Only a connection we had can be lost: a checkout that failed (ECONNREFUSED, timeout) is not.
    if (this.client !== undefined && isConnectionLoss(error)) this.markLost(error)
    this.needsRollback = true
    if (!this.rollbackByError) {
      this.rollbackByError = true
      this.rollbackCause = error
    }
  }

  /** A control statement failed: nothing but ROLLBACK is safe any more. */
  controlFailed(error: unknown): void {
    if (isConnectionLoss(error)) this.markLost(error)
    else if (!this.fatal) {
      this.fatal = true
      this.fatalError = error
    }
  }

  /** The error for any operation attempted now, or `undefined` when operations may proceed. */
  unusableError(block: Block): AtomicError | undefined {
    if (block.ended || this.ended) return new TransactionManagementError(ENDED_MESSAGE)
    if (this.lost) return lostError(this.lostError)
    if (this.fatal) return fatalError(this.fatalError)
    if (this.needsRollback) return new TransactionManagementError(DOOMED_MESSAGE, { cause: this.rollbackCause })
    if (this.cursor !== undefined) return new TransactionManagementError(CURSOR_OPEN_MESSAGE)
    return undefined
  }

  /**
   * Checks out a connection; gives up when the transaction is aborted meanwhile (db.close() at its
   * deadline), releasing a connection that arrives too late.
   */
  private async checkout(): Promise<PoolClient> {
    const pending = this.db.connect()
    let adopted = false
    try {
      const client = await new Promise<PoolClient>((resolve, reject) => {
        this.abortCheckout = reject
        pending.then(resolve, reject)
      })
      adopted = true
      return client
    } finally {
      this.abortCheckout = undefined
      if (!adopted) {
        // A pool that is ending never answers; one that answers late gets its connection back.
        pending.then(
          (late) => late.release(),
          () => undefined,
        )
      }
    }
  }

  private abortCheckout: ((error: unknown) => void) | undefined = undefined

  /** db.close() aborted the transaction at its deadline. */
  aborted = false

  /**
   * Aborts the transaction from outside (db.close() at its deadline): it is marked lost, a pending
   * checkout gives up, a running statement is cancelled and the connection destroyed, so the
   * session ends and its locks are freed at once. The block's caller gets ConnectionLostError
   * with `reason` as cause.
   */
  async abort(reason: AtomicError): Promise<void> {
    this.aborted = true
    this.markLost(reason)
    this.abortCheckout?.(lostError(reason))
    const client = this.client
    if (client === undefined) return
    // A cancel request stops a running or waiting statement (PgBouncer routes it to the right
    // server); destroying the socket then ends the session, which rolls back and frees the locks.
    await this.db.cancelStatement(client)
    this.releaseClient(reason)
  }

  /** Whether anything must happen before the next statement (the hot path skips `prepare()`). */
  needsPrepare(): boolean {
    return this.client === undefined || this.flushing !== undefined || this.mustFlush || this.materializedUpTo < this.stack.length
  }

  /** Makes the connection ready for a statement of the block at the top of the stack: checkout, BEGIN, SAVEPOINTs, pending. */
  async prepare(): Promise<void> {
    if (this.flushing !== undefined) await this.flushing
    if (this.client === undefined) {
      const client = await this.checkout()
      client.on('error', this.onClientError)
      this.client = client
    }
    let statements: Pending[]
    if (!this.begun) {
      const name = this.outermostName
      statements = [{ kind: 'begin', sql: beginStatement(this.characteristics), depth: 1, savepoint: undefined, droppable: false, name }]
      for (const option of TIMEOUT_OPTIONS) {
        const value = this.timeouts[option]
        if (value !== undefined) statements.push({ kind: 'set-local', sql: setLocalStatement(option, value), depth: 1, savepoint: undefined, droppable: false, name })
      }
      this.begun = true
    } else if (this.mustFlush || this.materializedUpTo < this.stack.length) {
      statements = this.pending
      this.pending = []
      this.mustFlush = false
    } else return
    const stack = this.stack
    for (let i = this.materializedUpTo; i < stack.length; i++) {
      const b = stack[i] as Block
      if (b.savepointName === undefined) continue
      const name = b.options.name
      statements.push({ kind: 'savepoint', sql: savepointStatement(b.savepointName), depth: b.depth, savepoint: b.savepointName, droppable: false, name })
      if (b.ownTimeouts !== undefined) {
        for (const option of TIMEOUT_OPTIONS) {
          const value = b.ownTimeouts[option]
          if (value !== undefined) statements.push({ kind: 'set-local', sql: setLocalStatement(option, value), depth: b.depth, savepoint: b.savepointName, droppable: false, name })
        }
      }
    }
    this.materializedUpTo = stack.length
    if (statements.length === 0) return
    try {
      await this.send(statements)
    } catch (error) {
      this.controlFailed(error)
      throw error
    }
  }

  /** Sends control statements as one simple-protocol round trip and publishes them. */
  async send(statements: readonly Pending[]): Promise<QueryResult | QueryResult[]> {
    const client = this.client as PoolClient
    const sql = statements.length === 1 ? (statements[0] as Pending).sql : statements.map((s) => s.sql).join('; ')
    if (!statementChannel.hasSubscribers) return client.query(sql) as Promise<QueryResult | QueryResult[]>
    const start = performance.now()
    let error: unknown
    try {
      return (await client.query(sql)) as QueryResult | QueryResult[]
    } catch (e) {
      error = e
      throw e
    } finally {
      const durationMs = performance.now() - start
      for (const s of statements) {
        statementChannel.publish({
          kind: s.kind,
          sql: s.sql,
          transactionId: this.id,
          database: this.db.alias,
          depth: s.depth,
          savepoint: s.savepoint,
          name: s.name,
          durationMs,
          batchSize: statements.length,
          error,
        })
      }
    }
  }

  /** Queues the ROLLBACK TO of a failed nested block; sent with the next control statement or next turn. */
  queueRollbackTo(block: Block): void {
    const savepoint = block.savepointName as string
    const name = block.options.name
    // An enclosing ROLLBACK TO makes every pending statement of deeper blocks unnecessary.
    this.pending = this.pending.filter((p) => p.depth < block.depth)
    this.pending.push(
      { kind: 'rollback-to', sql: rollbackToStatement(savepoint), depth: block.depth, savepoint, droppable: false, name },
      { kind: 'release', sql: releaseStatement(savepoint), depth: block.depth, savepoint, droppable: false, name },
    )
    this.mustFlush = true
    if (!this.flushScheduled) {
      this.flushScheduled = true
      setImmediate(this.flushOnNextTurn)
    }
  }

  hasRollbackHooksWithin(block: Block): boolean {
    for (const h of this.hooks) if (h.kind === 'rollback' && isWithin(h.owner, block)) return true
    return false
  }

  /** Sends the pending statements at once (the caller holds the turn of the running block). */
  async flushNow(): Promise<void> {
    if (this.flushing !== undefined) await this.flushing
    if (this.pending.length === 0 || this.lost || this.fatal || this.client === undefined) return
    await this.sendPending()
  }

  /** Sends a pending ROLLBACK TO that no statement of the same turn picked up, so locks are freed. */
  private readonly flushOnNextTurn = (): void => {
    this.flushScheduled = false
    if (!this.mustFlush || this.busy || this.ended || this.lost || this.fatal || this.cursor !== undefined || this.client === undefined) return
    this.flushing = this.sendPending().then(() => {
      this.flushing = undefined
    })
  }

  /** Sends every pending statement in one round trip; a failure makes the transaction fatal. Never rejects. */
  private async sendPending(): Promise<void> {
    const statements = this.pending
    this.pending = []
    this.mustFlush = false
    this.busy = true
    try {
      await this.send(statements)
    } catch (error) {
      this.controlFailed(error)
    } finally {
      this.busy = false
    }
  }

  /** Sends COMMIT (with any pending ROLLBACK TO before it). Throws on every kind of failure. */
  async commit(): Promise<void> {
    if (this.flushing !== undefined) await this.flushing
    if (this.lost) throw lostError(this.lostError)
    if (this.fatal) throw fatalError(this.fatalError)
    const statements = this.pending.filter((p) => !p.droppable)
    this.pending = []
    statements.push({ kind: 'commit', sql: COMMIT, depth: 1, savepoint: undefined, droppable: false, name: this.outermostName })
    let result: QueryResult | QueryResult[]
    this.busy = true
    try {
      result = await this.send(statements)
    } catch (error) {
      this.busy = false
      if (this.lost || isConnectionLoss(error)) {
        this.markLost(error)
        this.releaseClient(error)
        // The idle-in-transaction timeout ended the session before COMMIT arrived: nothing was committed.
        if (sqlState(error) === '25P03' || sqlState(this.lostError) === '25P03') throw lostError(this.lostError)
        throw new CommitOutcomeUnknownError(
          'The connection was lost while COMMIT was in flight: the transaction may or may not have been committed. It was not retried; check the data before doing the work again.',
          { cause: error },
        )
      }
      // COMMIT raised (serialization failure at commit, deferred constraint): the server rolled back.
      await this.rollbackIfStillOpen()
      throw error
    }
    this.busy = false
    const last = Array.isArray(result) ? result[result.length - 1] : result
    if (last?.command === 'ROLLBACK') {
      this.releaseClient()
      throw new TransactionManagementError(
        'COMMIT was answered with ROLLBACK: the transaction had failed on the server, so nothing was committed.',
        { cause: this.rollbackCause },
      )
    }
    this.releaseClient()
  }

  private async rollbackIfStillOpen(): Promise<void> {
    // pg rejects on ErrorResponse, before ReadyForQuery (which carries the status) is processed.
    if (this.client !== undefined) await readyForQuery(this.client)
    const status = this.client?.getTransactionStatus?.()
    if (status === 'I') this.releaseClient()
    else await this.rollback()
  }

  /** Sends ROLLBACK; a failure destroys the connection (the server rolls back on disconnect). */
  async rollback(): Promise<void> {
    if (this.flushing !== undefined) await this.flushing
    this.pending = []
    this.mustFlush = false
    if (this.client === undefined) return
    if (this.lost) {
      this.releaseClient(this.lostError)
      return
    }
    this.busy = true
    try {
      await this.send([{ kind: 'rollback', sql: ROLLBACK, depth: 1, savepoint: undefined, droppable: false, name: this.outermostName }])
    } catch (error) {
      this.busy = false
      this.releaseClient(error)
      return
    }
    this.busy = false
    this.releaseClient()
  }

  /**
   * Returns the connection to the pool only when it is idle (transaction status 'I') and nothing
   * went wrong; destroys it otherwise.
   */
  releaseClient(destroyReason?: unknown): void {
    const client = this.client
    if (client === undefined) return
    this.client = undefined
    if (destroyReason !== undefined || this.lost) {
      // Keep our 'error' listener: the socket may still report errors while it is being torn down.
      client.release(destroyReason instanceof Error ? destroyReason : new Error('pg-atomic destroyed a connection in an unknown state'))
      return
    }
    const status = client.getTransactionStatus?.()
    if (status !== undefined && status !== 'I') {
      client.release(new Error(`pg-atomic destroyed a connection whose transaction status was '${status}'`))
      return
    }
    client.removeListener('error', this.onClientError)
    client.release()
  }

  addHook(block: Block, kind: 'commit' | 'rollback', fn: Hook, robust: boolean): void {
    this.hooks.push({ kind, fn, robust, owner: block.rollbackOwner })
  }

  /** A nested block rolled back: drop its onCommit hooks and run its onRollback hooks. */
  async savepointRolledBack(block: Block): Promise<void> {
    if (this.hooks.length === 0) return
    const keep: HookEntry[] = []
    const run: HookEntry[] = []
    for (const h of this.hooks) {
      if (isWithin(h.owner, block)) {
        if (h.kind === 'rollback') run.push(h)
      } else keep.push(h)
    }
    this.hooks = keep
    for (const h of run) await this.callRollbackHook(h)
  }

  async runRollbackHooks(): Promise<void> {
    const hooks = this.hooks
    this.hooks = []
    for (const h of hooks) if (h.kind === 'rollback') await this.callRollbackHook(h)
  }

  /** Runs onCommit hooks FIFO after COMMIT; a non-robust failure stops and is reported as committed. */
  async runCommitHooks(): Promise<void> {
    const hooks = this.hooks
    this.hooks = []
    for (const h of hooks) {
      if (h.kind !== 'commit') continue
      try {
        await this.outside(h.fn)
      } catch (error) {
        if (!h.robust) {
          throw new OnCommitHookError(
            `The transaction was committed, but the onCommit hook ${hookName(h.fn)} failed, so the hooks registered after it were not run. Do not retry the transaction: its data is committed.`,
            { cause: error },
          )
        }
        reportHookError(this.db, 'commit', this.id, h.fn, error)
      }
    }
  }

  /** Runs a hook in the context the transaction was entered from, i.e. outside the transaction. */
  private outside(fn: Hook): unknown {
    return this.outer === undefined ? storage.exit(fn) : storage.run(this.outer, fn)
  }

  private async callRollbackHook(h: HookEntry): Promise<void> {
    try {
      await this.outside(h.fn)
    } catch (error) {
      reportHookError(this.db, 'rollback', this.id, h.fn, error)
    }
  }
}

/** Logs a hook error and publishes it on the hook-error channel. @internal */
export function reportHookError(db: DatabaseCore, kind: 'commit' | 'rollback', transactionId: number | undefined, fn: Hook, error: unknown): void {
  const where = transactionId === undefined ? '' : ` during transaction ${transactionId}`
  const reason = error instanceof Error ? error.message : String(error)
  db.logger.error(`Error calling ${hookName(fn)} in ${kind === 'commit' ? 'onCommit' : 'onRollback'}()${where} (${reason}).`, error)
  if (hookErrorChannel.hasSubscribers) hookErrorChannel.publish({ kind, transactionId, database: db.alias, error })
}

/** Resolves once the client has processed the ReadyForQuery that follows an error (or has ended). */
function readyForQuery(client: PoolClient): Promise<void> {
  if ((client as PoolClient & { readyForQuery?: boolean }).readyForQuery !== false) return Promise.resolve()
  return new Promise<void>((resolve) => {
    const done = (): void => {
      client.removeListener('drain', done)
      client.removeListener('end', done)
      resolve()
    }
    client.on('drain', done)
    client.on('end', done)
  })
}

function lostError(cause: unknown): ConnectionLostError {
  return new ConnectionLostError(
    'The connection to PostgreSQL was lost during the transaction: the server rolled it back and nothing of it was committed. The connection was destroyed.',
    { cause },
  )
}

function fatalError(cause: unknown): TransactionManagementError {
  return new TransactionManagementError(
    'A transaction control statement failed, so the state of the transaction is unknown; it will be rolled back and no further statements can run in it.',
    { cause },
  )
}

function isWithin(owner: Block, block: Block): boolean {
  for (let b: Block | undefined = owner; b !== undefined; b = b.parent) if (b === block) return true
  return false
}

const CHARACTERISTICS = ['isolationLevel', 'readOnly', 'deferrable'] as const

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
  readonly savepointName: string | undefined
  /** Innermost block, this one included, that can roll back on its own. */
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
    } else {
      this.depth = parent.depth + 1
      // Django: no savepoint inside an already-doomed transaction, so the doom cannot be undone.
      this.savepointName = options.savepoint && !tx.needsRollback ? savepointName(++tx.savepointCounter) : undefined
      this.rollbackOwner = this.savepointName === undefined ? parent.rollbackOwner : this
      let own: Partial<Record<TimeoutOption, number>> | undefined
      for (const option of TIMEOUT_OPTIONS) {
        const value = options[option]
        if (value !== undefined && value !== parent.timeouts[option]) (own ??= {})[option] = value
      }
      if (own !== undefined && this.savepointName === undefined) {
        throw new TransactionManagementError(
          options.savepoint
            ? 'Timeouts on a nested atomic() block need a savepoint to be undone afterwards, and this block gets none because the transaction is already marked for rollback.'
            : 'Timeouts on a nested atomic() block need a savepoint to be undone afterwards: remove savepoint: false, or set the timeouts on the enclosing block.',
        )
      }
      this.ownTimeouts = own === undefined ? undefined : Object.freeze(own)
      this.timeouts = own === undefined ? parent.timeouts : Object.freeze({ ...parent.timeouts, ...own })
    }
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
    const current = currentBlock(this.tx.db)
    if (current !== undefined && current !== this && !current.ended && current.tx === this.tx && isWithin(current, this)) return current
    return this
  }

  query<R extends QueryResultRow = QueryResultRow>(text: string, values?: readonly unknown[]): Promise<QueryResult<R>>
  query<R extends QueryResultRow = QueryResultRow>(config: QueryConfig): Promise<QueryResult<R>>
  query<R extends QueryResultRow = QueryResultRow>(textOrConfig: string | QueryConfig, values?: readonly unknown[]): Promise<QueryResult<R>> {
    return this.route().run<R>(textOrConfig, values)
  }

  /** Runs a user statement in this block. @internal */
  async run<R extends QueryResultRow>(textOrConfig: string | QueryConfig, values: readonly unknown[] | undefined): Promise<QueryResult<R>> {
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
      tx.busy = true
      try {
        if (tx.needsPrepare()) await tx.prepare()
        return await (tx.client as PoolClient).query<R>(config)
      } catch (error) {
        // Whatever failed (the checkout, a control statement, or the statement itself), the
        // statement did not run: the block must not commit as if it had (no silent loss).
        tx.statementFailed(error)
        throw error
      }
    } finally {
      tx.busy = false
      this.release()
    }
  }

  cursor<R extends QueryResultRow = QueryResultRow>(text: string, values?: readonly unknown[], options?: CursorOptions): AsyncIterable<R> {
    return this.route().cursorRows<R>(text, values, resolveBatchSize(options))
  }

  /** @internal */
  async *cursorRows<R extends QueryResultRow>(text: string, values: readonly unknown[] | undefined, batchSize: number): AsyncGenerator<R, void, undefined> {
    const tx = this.tx
    const early = tx.unusableError(this)
    if (early !== undefined) throw early
    refuseTransactionControl(text, true)
    let cursor: Cursor<R>
    const wait = this.acquire()
    if (wait !== undefined) await wait
    try {
      const late = tx.unusableError(this)
      if (late !== undefined) throw late
      tx.busy = true
      try {
        await tx.prepare()
      } catch (error) {
        tx.statementFailed(error)
        throw error
      }
      cursor = (tx.client as PoolClient).query(new Cursor<R>(text, values as unknown[] | undefined))
      tx.cursor = { cursor, block: this }
    } finally {
      tx.busy = false
      this.release()
    }
    let failed = false
    try {
      for (;;) {
        if (tx.cursor?.cursor !== cursor) throw new TransactionManagementError(ENDED_MESSAGE)
        let rows: R[]
        try {
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
        if (!failed && !tx.lost) await cursor.close()
      }
    }
  }

  onCommit(fn: Hook, options?: OnCommitOptions): void {
    assertHook(fn, 'onCommit')
    const block = this.route()
    if (block.ended) throw new TransactionManagementError(ENDED_MESSAGE)
    this.tx.addHook(block, 'commit', fn, options?.robust === true)
  }

  onRollback(fn: Hook): void {
    assertHook(fn, 'onRollback')
    const block = this.route()
    if (block.ended) throw new TransactionManagementError(ENDED_MESSAGE)
    this.tx.addHook(block, 'rollback', fn, true)
  }

  setRollback(flag: boolean): void {
    if (typeof flag !== 'boolean') throw new InvalidOptionError('flag', 'setRollback() expects true or false.')
    if (this.route().ended) throw new TransactionManagementError(ENDED_MESSAGE)
    const tx = this.tx
    tx.needsRollback = flag
    tx.rollbackByError = false
    tx.rollbackCause = undefined
  }

  getRollback(): boolean {
    if (this.route().ended) throw new TransactionManagementError(ENDED_MESSAGE)
    return this.tx.needsRollback
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
      rollback: tx.needsRollback,
      name: this.options.name,
    })
  }

  /** Runs the body in this block's context, waits for its queued work, then exits. @internal */
  async execute<T>(fn: (tx: TransactionHandle) => T | Promise<T>, outer: Frame | undefined): Promise<T> {
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
    // Statements and child blocks queued when the body returned are settled before the exit.
    const wait = this.acquire()
    if (wait !== undefined) await wait
    try {
      const open = this.tx.cursor
      if (open !== undefined && open.block === this) {
        this.tx.cursor = undefined
        if (!this.tx.lost) await open.cursor.close()
      }
      this.ended = true
      return await (this.parent === undefined ? this.exitOutermost(threw, thrown, result as T) : this.exitNested(threw, thrown, result as T))
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

  private async exitNested<T>(threw: boolean, thrown: unknown, result: T): Promise<T> {
    const tx = this.tx
    const materialized = this.popStack()
    if (tx.lost || tx.fatal) {
      // Nothing can be sent; the outermost block rolls back (and runs the rollback hooks).
      if (threw) throw thrown
      throw tx.lost ? lostError(tx.lostError) : fatalError(tx.fatalError)
    }
    if (this.savepointName === undefined) {
      // Joined the enclosing block: an error dooms it up to the nearest savepoint (Django).
      if (threw) {
        tx.needsRollback = true
        if (!tx.rollbackByError) {
          tx.rollbackByError = true
          tx.rollbackCause = thrown
        }
        throw thrown
      }
      if (tx.needsRollback && tx.rollbackByError) throw new TransactionManagementError(withName(SWALLOWED_MESSAGE, this), { cause: tx.rollbackCause })
      return result
    }
    if (!threw && !tx.needsRollback) {
      if (materialized) {
        tx.pending.push({ kind: 'release', sql: releaseStatement(this.savepointName), depth: this.depth, savepoint: this.savepointName, droppable: true, name: this.options.name })
        if (this.ownTimeouts !== undefined) {
          for (const option of TIMEOUT_OPTIONS) {
            if (this.ownTimeouts[option] === undefined) continue
            const outer = this.parent?.timeouts[option]
            const sql = outer === undefined ? resetLocalStatement(option) : setLocalStatement(option, outer)
            tx.pending.push({ kind: 'set-local', sql, depth: this.depth, savepoint: this.savepointName, droppable: true, name: this.options.name })
          }
          tx.mustFlush = true
        }
      }
      return result
    }
    const byError = tx.rollbackByError
    const cause = tx.rollbackCause
    tx.needsRollback = false
    tx.rollbackByError = false
    tx.rollbackCause = undefined
    if (materialized) {
      tx.queueRollbackTo(this)
      // onRollback hooks promise that the rollback happened: send it now rather than merging it.
      if (tx.hasRollbackHooksWithin(this)) await tx.flushNow()
    }
    await tx.savepointRolledBack(this)
    if (threw) throw thrown
    if (byError) throw new TransactionManagementError(withName(SWALLOWED_MESSAGE, this), { cause })
    return result
  }

  private async exitOutermost<T>(threw: boolean, thrown: unknown, result: T): Promise<T> {
    const tx = this.tx
    this.popStack()
    try {
      if (tx.lost) {
        tx.releaseClient(tx.lostError)
        await tx.runRollbackHooks()
        // The callback's own error (unrelated to the connection) is rethrown unchanged, as always,
        // unless db.close() aborted the transaction: then every error inside is a consequence.
        if (threw && !isConnectionLoss(thrown) && !tx.aborted) throw thrown
        throw lostError(tx.lostError)
      }
      if (!threw && !tx.needsRollback && !tx.fatal) {
        if (tx.begun) {
          try {
            await tx.commit()
          } catch (error) {
            await tx.runRollbackHooks()
            throw error
          }
        } else tx.releaseClient()
        tx.ended = true
        await tx.runCommitHooks()
        return result
      }
      await tx.rollback()
      tx.ended = true
      await tx.runRollbackHooks()
      if (threw) throw thrown
      if (tx.fatal) throw fatalError(tx.fatalError)
      if (tx.rollbackByError) throw new TransactionManagementError(withName(SWALLOWED_MESSAGE, this), { cause: tx.rollbackCause })
      return result
    } finally {
      tx.ended = true
      if (tx.client !== undefined) tx.releaseClient(new Error('pg-atomic released a connection after an unexpected exit path'))
      tx.db.transactionEnded(tx)
    }
  }
}

/** Appends the block's `name` option to a message, so logs say which block failed. */
function withName(message: string, block: { readonly options: ResolvedOptions }): string {
  const name = block.options.name
  return name === undefined ? message : `${message} (block "${name}")`
}

function assertHook(fn: unknown, what: string): asserts fn is Hook {
  if (typeof fn !== 'function') throw new InvalidOptionError('callback', `${what}()'s callback must be a function.`)
}

/** @internal */
export function resolveBatchSize(options: CursorOptions | undefined): number {
  const batchSize = options?.batchSize ?? 100
  if (!Number.isInteger(batchSize) || batchSize < 1) {
    throw new InvalidOptionError('batchSize', 'Invalid option "batchSize" for cursor(): it must be a whole number of at least 1.')
  }
  return batchSize
}

function runTransaction<T>(db: DatabaseCore, options: ResolvedOptions, fn: (tx: TransactionHandle) => T | Promise<T>, outer: Frame | undefined): Promise<T> {
  db.assertOpen()
  const tx = new Transaction(db, options, outer)
  const block = new Block(tx, undefined, options)
  tx.stack.push(block)
  db.transactionStarted(tx)
  return block.execute(fn, outer)
}

/** The SQLSTATE that decides a retry: the error's own, or that of the swallowed error a block rejected with. */
function retryCode(error: unknown): string | undefined {
  const own = sqlState(error)
  if (own !== undefined) return own
  return error instanceof TransactionManagementError ? sqlState(error.cause) : undefined
}

function shouldRetry(policy: RetryPolicy, error: unknown): boolean {
  // An ambiguous commit may have committed: never run the work again on our own.
  if (error instanceof CommitOutcomeUnknownError || error instanceof OnCommitHookError) return false
  if (typeof policy.retryOn === 'function') return policy.retryOn(error)
  const code = retryCode(error)
  return code !== undefined && policy.retryOn.has(code)
}

/**
 * Runs the whole block again in a fresh transaction after a retryable failure, with exponential
 * backoff and full jitter. The last error reaches the caller unchanged, with `attempts` on it.
 */
async function runWithRetry<T>(db: DatabaseCore, options: ResolvedOptions, fn: (tx: TransactionHandle) => T | Promise<T>, outer: Frame | undefined, policy: RetryPolicy): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await runTransaction(db, options, fn, outer)
    } catch (error) {
      if (attempt >= policy.maxAttempts || !shouldRetry(policy, error)) {
        if (attempt > 1 && typeof error === 'object' && error !== null && Object.isExtensible(error)) {
          Object.defineProperty(error, 'attempts', { value: attempt, enumerable: true, configurable: true, writable: true })
        }
        throw error
      }
      const ceiling = Math.min(policy.maxDelayMs, policy.baseDelayMs * 2 ** (attempt - 1))
      const delayMs = Math.floor(Math.random() * (ceiling + 1))
      if (retryChannel.hasSubscribers) {
        retryChannel.publish({ attempt, maxAttempts: policy.maxAttempts, code: retryCode(error), error, delayMs, database: db.alias, name: options.name })
      }
      if (delayMs > 0) await new Promise<void>((resolve) => setTimeout(resolve, delayMs))
    }
  }
}

/**
 * Enters a block of `db`: a new transaction, or a block nested in the current one.
 * All checks that can fail happen before any SQL is sent.
 * @internal
 */
export async function enterAtomic<T>(db: DatabaseCore, options: ResolvedOptions, fn: (tx: TransactionHandle) => T | Promise<T>): Promise<T> {
  if (typeof fn !== 'function') throw new InvalidOptionError('fn', 'atomic() expects a function to run inside the block.')
  const outer = storage.getStore()
  const found = currentBlock(db)
  // A block entered from a context whose block has ended (a timer, an event handler) does not join it.
  const parent = found !== undefined && !found.ended && !found.tx.ended ? found : undefined
  if (parent === undefined) {
    const policy = options.retry ?? db.retry
    if (policy === undefined || policy.maxAttempts === 1) return runTransaction(db, options, fn, outer)
    return runWithRetry(db, options, fn, outer, policy)
  }
  if (options.retry !== undefined) {
    throw new TransactionManagementError(
      withName('The retry option is only allowed on the outermost atomic() block, but this block is nested: PostgreSQL can only retry whole transactions (a savepoint retry keeps the old snapshot and its locks). Put retry on the outermost block.', { options }),
    )
  }
  if (options.durable) throw new TransactionManagementError(withName(DURABLE_NESTED_MESSAGE, { options }))
  const tx = parent.tx
  for (const key of CHARACTERISTICS) {
    const wanted = options[key]
    if (wanted !== undefined && wanted !== tx.characteristics[key]) {
      throw new TransactionManagementError(
        `${key} can only be chosen by the outermost atomic() block: this block is nested in a transaction whose ${key} is ${describeValue(tx.characteristics[key])}, not ${describeValue(wanted)}. Set it on the outermost block, or make this block durable so that it must be outermost.`,
      )
    }
  }
  const wait = parent.acquire()
  if (wait !== undefined) await wait
  try {
    const unusable = parent.ended || tx.ended ? new TransactionManagementError(ENDED_MESSAGE) : tx.lost ? lostError(tx.lostError) : tx.fatal ? fatalError(tx.fatalError) : undefined
    if (unusable !== undefined) throw unusable
    const block = new Block(tx, parent, options)
    tx.stack.push(block)
    return await block.execute(fn, outer)
  } finally {
    parent.release()
  }
}
