/**
 * One transaction: what an outermost block and every block nested in it share — the stack of
 * active blocks, the one {@link TransactionState} and its transitions, the hooks, the open cursor,
 * and the connection ({@link Wire}).
 *
 * @module
 * @internal
 */
import pg from 'pg'
import type { PoolClient } from 'pg'
import type { Frame } from '../context'
import type { TransactionScope } from '../instrumentation'
import { AtomicError, DOOMED_MESSAGE, TransactionManagementError, isConnectionLoss } from '../errors'
import type { AtomicLogger, ResolvedOptions, RetryPolicy, TransactionDefaults } from '../options'
import { beginStatement, savepointStatement, setLocalStatement } from '../sql/transaction'
import type { BeginCharacteristics } from '../sql/transaction'
import { TIMEOUT_OPTIONS } from '../vocabulary'
import type { TimeoutOption } from '../vocabulary'
import type { Server } from '../replicas/route'
import type { Block } from './block'
import type { OpenPortal } from './cursor'
import { Hooks } from './hooks'
import type { CapturedHook } from './hooks'
import { CURSOR_OPEN_MESSAGE, ENDED_MESSAGE, fatalError, lostError } from './messages'
import {
  OK,
  afterBlockError,
  afterConnectionLoss,
  afterControlError,
  afterSavepointRollback,
  afterSetRollback,
  afterStatementError,
  afterUnsentSavepointExit,
  needsRollback,
} from './state'
import type { TransactionState } from './state'
import { Wire } from './wire'
import type { ControlStatement, WireDatabase, WireOwner } from './wire'

/** What the state machine needs from a database. @internal */
export interface DatabaseCore extends WireDatabase {
  readonly defaults: Readonly<TransactionDefaults>
  /** The database's default retry policy for outermost blocks. */
  readonly retry: RetryPolicy | undefined
  readonly logger: AtomicLogger
  /** Refuses new outermost blocks (closing/closed database) by throwing. */
  assertOpen(): void
  transactionStarted(tx: Transaction): void
  transactionEnded(tx: Transaction): void
  /**
   * The test transaction of `pg-atomic/testing` when one is open on this database: work that runs
   * outside any block of the current async context joins it.
   */
  testRoot: Block | undefined
  /** Receives the onCommit hooks of blocks that would have committed in a test transaction. */
  testHooks: ((hooks: readonly CapturedHook[]) => void) | undefined
  /**
   * Whether the session with server process id `waiting` waits for a lock `holder` holds
   * (`pg_blocking_pids`), asked on a short-lived connection of its own.
   */
  blockedBy(waiting: number, holder: number): Promise<boolean>
  /** Whether `client` is a connection of the primary (a replica-routed block may fall back to it). */
  isPrimaryClient(client: PoolClient): boolean
  /** Read replicas are configured: read-only outermost blocks may go to one (replicas/route.ts). */
  readonly hasReplicas: boolean
}

/** Timeouts by option, as applied with SET LOCAL. @internal */
export type TimeoutMap = Readonly<Partial<Record<TimeoutOption, number>>>
const NO_TIMEOUTS: TimeoutMap = Object.freeze({})

let nextTransactionId = 1

/** `BEGIN` of an unnamed block with the server's characteristics: the common case, allocated once. */
const PLAIN_BEGIN: ControlStatement = Object.freeze({
  kind: 'begin',
  sql: beginStatement({ isolationLevel: undefined, readOnly: undefined, deferrable: undefined }),
  depth: 1,
  savepoint: undefined,
  droppable: false,
  name: undefined,
})

/** One transaction. @internal */
export class Transaction implements WireOwner {
  readonly id = nextTransactionId++
  readonly db: DatabaseCore
  readonly characteristics: BeginCharacteristics
  /** The outermost block's timeouts (applied with SET LOCAL after BEGIN). */
  readonly timeouts: TimeoutMap
  /** The async context the outermost block was entered from: hooks run there, outside the transaction. */
  readonly outer: Frame | undefined
  /** The `name` option of the outermost block (carried by BEGIN, COMMIT and ROLLBACK events). */
  readonly outermostName: string | undefined
  readonly wire: Wire
  readonly hooks: Hooks
  /** BEGIN has been sent. */
  begun = false
  /** The outermost block has exited: nothing can use the transaction any more. */
  ended = false
  /** db.close() aborted the transaction at its deadline. */
  aborted = false
  /**
   * A `propagation: 'requiresNew'` block's transaction: its checkout happens while the suspended
   * transaction holds a connection of the same pool, so it is bounded (see DatabaseImpl.connect).
   */
  independent = false
  /** The active blocks, outermost first; the running block is always the top. */
  readonly stack: Block[] = []
  /** Number of stack entries whose BEGIN/SAVEPOINT has been sent. */
  materializedUpTo = 0
  savepointCounter = 0
  /** The cursor open on the connection, if any, and the block that opened it. */
  cursor: OpenPortal | undefined = undefined
  /** The server the connection comes from (`'replica'`: a read that may still be served by the primary). */
  readonly server: Server
  readonly commitLsn: boolean
  private current: TransactionState = OK

  constructor(db: DatabaseCore, options: ResolvedOptions, outer: Frame | undefined, server: Server = 'primary') {
    this.db = db
    this.server = server
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
    this.commitLsn = db.hasReplicas && server === 'primary' && this.characteristics.readOnly !== true
    this.wire = new Wire(this)
    this.hooks = new Hooks(db, this.id, outer)
  }

  get client(): PoolClient | undefined {
    return this.wire.client
  }

  /** The tracer's view of this transaction (pg-atomic/otel), when one is installed (kept by the hooks). */
  get scope(): TransactionScope | undefined {
    return this.hooks.scope
  }

  // ---- the state and its transitions (its only writers) ---------------------------------------

  /** The health of the transaction. */
  get state(): TransactionState {
    return this.current
  }

  /** Whether the transaction will roll back (Django's `get_rollback()`). */
  get rollbackPending(): boolean {
    const kind = this.current.kind
    return kind === 'lost' || kind === 'failed' || needsRollback(this.current)
  }

  /** A user statement failed (or could not be sent): the block is doomed (deliberate difference 1). */
  statementFailed(error: unknown): void {
    // Only a connection we had can be lost: a checkout that failed (ECONNREFUSED, timeout) is not.
    if (this.wire.client !== undefined && isConnectionLoss(error)) {
      this.connectionLost(error)
      return
    }
    // A statement the server answered with an error aborts the server-side transaction.
    this.current = afterStatementError(this.current, error, this.begun && error instanceof pg.DatabaseError)
  }

  /** A nested block without savepoint threw: its enclosing block is doomed (Django). */
  blockFailed(thrown: unknown): void {
    this.current = afterBlockError(this.current, thrown)
  }

  /** A control statement failed: nothing but ROLLBACK is safe. */
  controlFailed(error: unknown): void {
    this.current = isConnectionLoss(error)
      ? afterConnectionLoss(this.current, error)
      : afterControlError(this.current, error)
  }

  /** The connection is gone. */
  connectionLost(error: unknown): void {
    this.current = afterConnectionLoss(this.current, error)
  }

  /** `setRollback(flag)`. */
  setRollback(flag: boolean): void {
    this.current = afterSetRollback(this.current, flag)
  }

  /** A nested block with a savepoint exits after a failure: `sent` when its ROLLBACK TO is sent. */
  savepointRolledBack(sent: boolean): void {
    this.current = sent ? afterSavepointRollback(this.current) : afterUnsentSavepointExit(this.current)
  }

  // ---- what may run now ------------------------------------------------------------------------

  /** Whether nothing else is using the connection, so a deferred ROLLBACK TO may be sent on its own. */
  idle(): boolean {
    return !this.ended && this.cursor === undefined
  }

  /** The error for any operation attempted now through `block`, or `undefined` when it may proceed. */
  unusableError(block: Block): AtomicError | undefined {
    if (block.ended || this.ended) return new TransactionManagementError(ENDED_MESSAGE)
    const state = this.current
    switch (state.kind) {
      case 'lost':
        return lostError(state.cause)
      case 'failed':
        return fatalError(state.cause)
      case 'doomed':
        return new TransactionManagementError(DOOMED_MESSAGE, { cause: state.cause })
      case 'aborted':
      case 'ok':
        return this.cursor !== undefined ? new TransactionManagementError(CURSOR_OPEN_MESSAGE) : undefined
    }
  }

  /** The error for entering a nested block now, or `undefined`. */
  closedError(parent: Block): AtomicError | undefined {
    if (parent.ended || this.ended) return new TransactionManagementError(ENDED_MESSAGE)
    const state = this.current
    if (state.kind === 'lost') return lostError(state.cause)
    if (state.kind === 'failed') return fatalError(state.cause)
    return undefined
  }

  // ---- getting the connection ready for a statement ----------------------------------------------

  /** Whether anything must happen before the next statement (the hot path skips `prepare()`). */
  needsPrepare(): boolean {
    return !this.begun || this.materializedUpTo < this.stack.length || this.wire.needsPrepare()
  }

  /**
   * Makes the connection ready for a statement of the block at the top of the stack: checkout,
   * then in one round trip of their own the pending statements, BEGIN (with its SET LOCALs) if not
   * yet sent, and the SAVEPOINTs of the blocks entered since the last statement. For statements
   * that cannot share their round trip (cursors, several statements in one string).
   */
  async prepare(): Promise<void> {
    const preamble = await this.preamble()
    if (preamble !== undefined) await this.wire.sendBefore(preamble)
  }

  /**
   * Checks out a connection if needed and returns the control statements the next statement of
   * the block at the top of the stack needs — BEGIN (with its SET LOCALs) if not yet sent, the
   * SAVEPOINTs (with their SET LOCALs) of the blocks entered since the last statement — to be sent
   * after the wire's pending statements; `undefined` when nothing needs sending. They are
   * recorded as sent: the caller must send them before (or with) the statement.
   */
  async preamble(): Promise<ControlStatement[] | undefined> {
    await this.wire.ready()
    let preamble: ControlStatement[]
    if (!this.begun) {
      // Lazy BEGIN: a block that runs no statement sends nothing at all.
      const name = this.outermostName
      const c = this.characteristics
      const plain =
        name === undefined && c.isolationLevel === undefined && c.readOnly === undefined && c.deferrable === undefined
      preamble = [
        plain
          ? PLAIN_BEGIN
          : { kind: 'begin', sql: beginStatement(c), depth: 1, savepoint: undefined, droppable: false, name },
      ]
      for (const option of TIMEOUT_OPTIONS) {
        const value = this.timeouts[option]
        if (value !== undefined)
          preamble.push({
            kind: 'set-local',
            sql: setLocalStatement(option, value),
            depth: 1,
            savepoint: undefined,
            droppable: false,
            name,
          })
      }
      this.begun = true
    } else if (this.wire.mustFlushPending || this.materializedUpTo < this.stack.length) {
      preamble = []
    } else return undefined
    // Lazy SAVEPOINTs: only the blocks that are still active when a statement runs get one.
    const stack = this.stack
    for (let i = this.materializedUpTo; i < stack.length; i++) {
      const b = stack[i] as Block
      if (b.savepointName === undefined) continue
      const name = b.options.name
      preamble.push({
        kind: 'savepoint',
        sql: savepointStatement(b.savepointName),
        depth: b.depth,
        savepoint: b.savepointName,
        droppable: false,
        name,
      })
      if (b.ownTimeouts !== undefined) {
        for (const option of TIMEOUT_OPTIONS) {
          const value = b.ownTimeouts[option]
          if (value !== undefined)
            preamble.push({
              kind: 'set-local',
              sql: setLocalStatement(option, value),
              depth: b.depth,
              savepoint: b.savepointName,
              droppable: false,
              name,
            })
        }
      }
    }
    this.materializedUpTo = stack.length
    return preamble
  }

  /**
   * Aborts the transaction from outside (db.close() at its deadline): it is marked lost, a pending
   * checkout gives up, a running statement is cancelled and the connection destroyed, so the
   * session ends and its locks are freed at once. The block's caller gets ConnectionLostError
   * with `reason` as cause.
   */
  async abort(reason: AtomicError): Promise<void> {
    this.aborted = true
    this.connectionLost(reason)
    await this.wire.abort(reason)
  }
}
