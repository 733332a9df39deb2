/**
 * The connection of one transaction: checkout, the queue of deferred control statements and how
 * they share round trips, sending (published on the statement channel), COMMIT and ROLLBACK, and
 * returning the connection to the pool — or destroying it when its state is not known to be idle.
 *
 * It decides nothing about blocks: the block state machine (block.ts) says which control
 * statements are needed; this module gets them to the server in as few round trips as it safely
 * can.
 *
 * 1. Control statements needed before a user statement (BEGIN and its SET LOCALs, SAVEPOINTs,
 *    pending statements) travel in the same round trip as the statement, before the same Sync
 *    ({@link Wire.sendWith}, pipeline.ts): if one fails, the statement does not run. A statement
 *    that cannot be pipelined gets them in one simple-protocol round trip of their own first
 *    ({@link Wire.sendBefore}).
 * 2. A successful nested block's RELEASE is queued as droppable: it rides with the next control
 *    statement, or is dropped by COMMIT / ROLLBACK / an enclosing ROLLBACK TO.
 * 3. A failed nested block's ROLLBACK TO is queued as must-flush: merged with the next control
 *    statement of the same event-loop turn, else sent on the next turn (so its locks are freed).
 *
 * @module
 * @internal
 */
import { performance } from 'node:perf_hooks'
import type { PoolClient, QueryConfig, QueryResult, QueryResultRow } from 'pg'
import { CommitOutcomeUnknownError, TransactionManagementError, isConnectionLoss, sqlState } from '../errors'
import { statementChannel } from '../events'
import type { StatementKind } from '../events'
import type { TransactionScope } from '../instrumentation'
import { COMMIT, ROLLBACK } from '../sql/transaction'
import { COMMIT_ANSWERED_ROLLBACK_MESSAGE, COMMIT_UNKNOWN_MESSAGE, fatalError, lostError } from './messages'
import { queryRecordingTags, runPipelined } from './pipeline'
import type { Server } from '../replicas/route'
import { WAL_INSERT_LSN_QUERY } from '../sql/replicas'
import type { TransactionState } from './state'

/** A control statement on its way to the server. */
export interface ControlStatement {
  /** The `name` option of the block the statement belongs to. */
  readonly name: string | undefined
  readonly kind: StatementKind
  readonly sql: string
  readonly depth: number
  readonly savepoint: string | undefined
  /** A successful RELEASE or a timeout restore: unnecessary before COMMIT / ROLLBACK. */
  readonly droppable: boolean
}

/** What the wire needs from its database. */
export interface WireDatabase {
  readonly alias: string
  /**
   * Checks out a connection from the primary, or for a read that should go to a replica;
   * `independent` for a requiresNew block's (a bounded wait).
   */
  connect(server?: Server, independent?: boolean): Promise<PoolClient>
  /** Records the primary's WAL position after a commit (read your writes); see {@link WireOwner.commitLsn}. */
  committedAt(lsn: string | undefined): void
  /**
   * A commit whose WAL position could not be read (`error`, from the statement after COMMIT): logs
   * it and makes the context's reads go to the primary until a later position is known.
   */
  commitPositionUnknown(error: unknown): void
  /** Sends a protocol cancel request for the statement `client` may be running (bounded in time). */
  cancelStatement(client: PoolClient): Promise<void>
}

/** What the wire needs from its transaction. */
export interface WireOwner {
  readonly id: number
  readonly db: WireDatabase
  /** The `name` option of the outermost block (carried by BEGIN, COMMIT and ROLLBACK events). */
  readonly outermostName: string | undefined
  /** A requiresNew block's transaction (its checkout is bounded). */
  readonly independent: boolean
  readonly state: TransactionState
  /** The tracer's view of the transaction, when one is installed. */
  readonly scope: TransactionScope | undefined
  /** The server the transaction checks out from (decided once, for its outermost block). */
  readonly server: Server
  /**
   * Whether COMMIT also asks for the primary's WAL position, for the read-your-writes of the
   * replicas: only a transaction that may have written, on a database with replicas.
   */
  readonly commitLsn: boolean
  /** Whether nothing else is using the connection, so a deferred ROLLBACK TO may be sent on its own. */
  idle(): boolean
  connectionLost(error: unknown): void
  controlFailed(error: unknown): void
}

/** The connection of one transaction. */
export class Wire {
  client: PoolClient | undefined = undefined
  /** Control statements waiting for the next round trip. */
  private pending: ControlStatement[] = []
  /** Pending contains statements that must run before the next statement (ROLLBACK TO, timeout restore). */
  private mustFlush = false
  private flushScheduled = false
  private flushing: Promise<void> | undefined = undefined
  private inFlight = false
  /** A connection error reported while a statement was in flight: applied after that statement settled. */
  private deferredClientError: { error: unknown } | undefined = undefined
  private abortCheckout: ((error: unknown) => void) | undefined = undefined
  /** Round trips made on this connection by the transaction (control statements, statements, cursor reads). */
  roundTrips = 0

  constructor(private readonly owner: WireOwner) {}

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
      this.owner.connectionLost(error)
    }
  }

  /** Listener attached to the client for the whole checkout: pg-pool removes its own. */
  private readonly onClientError = (error: unknown): void => {
    if (this.inFlight) this.deferredClientError ??= { error }
    else this.owner.connectionLost(error)
  }

  /** Whether anything must happen before the next statement (the hot path skips `prepare()`). */
  needsPrepare(): boolean {
    return this.client === undefined || this.flushing !== undefined || this.mustFlush
  }

  /**
   * Checks out a connection; gives up when the transaction is aborted meanwhile (db.close() at its
   * deadline), releasing a connection that arrives too late.
   */
  private async checkout(): Promise<PoolClient> {
    const pending = this.owner.db.connect(this.owner.server, this.owner.independent)
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

  /** Waits for a flush in flight, then checks out a connection if there is none. */
  async ready(): Promise<void> {
    if (this.flushing !== undefined) await this.flushing
    if (this.client === undefined) {
      const client = await this.checkout()
      client.on('error', this.onClientError)
      this.client = client
      this.owner.scope?.connected(client)
    }
  }

  /** Whether a statement queued as must-flush (ROLLBACK TO, timeout restore) waits for the next round trip. */
  get mustFlushPending(): boolean {
    return this.mustFlush
  }

  /** The pending statements followed by `preamble`; the queue is emptied. */
  private takePending(preamble: ControlStatement[]): ControlStatement[] {
    this.mustFlush = false
    if (this.pending.length === 0) return preamble
    const statements = this.pending
    statements.push(...preamble)
    this.pending = []
    return statements
  }

  /**
   * Sends the pending statements followed by `preamble` (BEGIN, SET LOCALs, SAVEPOINTs decided by
   * the block state machine) in one round trip of their own, before a user statement that cannot
   * be pipelined (or a cursor). A failure makes the transaction failed (or lost) and is rethrown.
   */
  async sendBefore(preamble: ControlStatement[]): Promise<void> {
    const statements = this.takePending(preamble)
    if (statements.length === 0) return
    try {
      await this.send(statements)
    } catch (error) {
      this.controlFailed(error)
      throw error
    }
  }

  /**
   * Sends the pending statements, `preamble` and the user statement `config` in one round trip,
   * before one Sync: a control statement that fails stops the statement on the server. A failed
   * control statement makes the transaction failed (or lost); either error is rethrown for the
   * caller, which dooms the block.
   */
  async sendWith<R extends QueryResultRow>(preamble: ControlStatement[], config: QueryConfig): Promise<QueryResult<R>> {
    const client = this.client as PoolClient
    const statements = this.takePending(preamble)
    this.roundTrips++
    if (statements.length === 0) return client.query<R>(config)
    const publishing = statementChannel.hasSubscribers
    const start = publishing ? performance.now() : 0
    const outcome = await runPipelined<R>(client, statements, config)
    if (outcome.ok) {
      if (publishing) this.publish(statements, performance.now() - start, undefined, statements.length, true)
      return outcome.result
    }
    const failedAt = outcome.controlsCompleted
    if (publishing) this.publish(statements, performance.now() - start, outcome.error, failedAt, true)
    if (failedAt < statements.length) this.controlFailed(outcome.error)
    // Like pg's own client.query(): the stack leads back to the caller, not to the socket.
    if (outcome.error instanceof Error) Error.captureStackTrace(outcome.error)
    throw outcome.error
  }

  /** Queues control statements for the next round trip; `mustFlush`: before the next statement. */
  queue(statements: readonly ControlStatement[], mustFlush: boolean): void {
    this.pending.push(...statements)
    if (mustFlush) this.mustFlush = true
  }

  /**
   * Queues the ROLLBACK TO (and RELEASE) of a failed nested block at `depth`; every pending
   * statement of deeper blocks becomes unnecessary. Sent with the next control statement of this
   * turn, or on its own on the next turn.
   */
  queueRollbackTo(rollbackTo: ControlStatement, release: ControlStatement): void {
    this.pending = this.pending.filter((p) => p.depth < rollbackTo.depth)
    this.pending.push(rollbackTo, release)
    this.mustFlush = true
    if (!this.flushScheduled) {
      this.flushScheduled = true
      setImmediate(this.flushOnNextTurn)
    }
  }

  /** Sends the pending statements at once (the caller holds the turn of the running block). */
  async flushNow(): Promise<void> {
    if (this.flushing !== undefined) await this.flushing
    if (this.pending.length === 0 || !this.usable() || this.client === undefined) return
    await this.sendPending()
  }

  private usable(): boolean {
    const kind = this.owner.state.kind
    return kind !== 'lost' && kind !== 'failed'
  }

  /** Sends a pending ROLLBACK TO that no statement of the same turn picked up, so locks are freed. */
  private readonly flushOnNextTurn = (): void => {
    this.flushScheduled = false
    if (!this.mustFlush || this.busy || !this.owner.idle() || !this.usable() || this.client === undefined) return
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

  private controlFailed(error: unknown): void {
    if (isConnectionLoss(error)) this.owner.connectionLost(error)
    else this.owner.controlFailed(error)
  }

  /**
   * Sends control statements as one simple-protocol round trip and publishes them. `trailer`, a
   * statement of the library's own (the WAL position after COMMIT), ends the same string unpublished.
   */
  async send(
    statements: readonly ControlStatement[],
    trailer?: { readonly sql: string; readonly tags: string[] },
  ): Promise<QueryResult | QueryResult[]> {
    const client = this.client as PoolClient
    let sql = statements.length === 1 ? (statements[0] as ControlStatement).sql : statements.map(sqlOf).join('; ')
    if (trailer !== undefined) sql = `${sql}; ${trailer.sql}`
    this.roundTrips++
    if (!statementChannel.hasSubscribers)
      return trailer === undefined
        ? (client.query(sql) as Promise<QueryResult | QueryResult[]>)
        : queryRecordingTags(client, sql, trailer.tags)
    const start = performance.now()
    let error: unknown
    try {
      return trailer === undefined
        ? ((await client.query(sql)) as QueryResult | QueryResult[])
        : await queryRecordingTags(client, sql, trailer.tags)
    } catch (e) {
      error = e
      throw e
    } finally {
      // With a trailer, the statements whose CommandComplete arrived before the error succeeded.
      const failedAt = trailer === undefined ? 0 : Math.min(trailer.tags.length, statements.length)
      this.publish(statements, performance.now() - start, error, failedAt, false)
    }
  }

  /**
   * Publishes one event per control statement of a round trip. `error` is the round trip's error,
   * given to the statements from index `failedAt` on (the failed one and those the server skipped).
   */
  private publish(
    statements: readonly ControlStatement[],
    durationMs: number,
    error: unknown,
    failedAt: number,
    withStatement: boolean,
  ): void {
    for (let i = 0; i < statements.length; i++) {
      const s = statements[i] as ControlStatement
      statementChannel.publish({
        kind: s.kind,
        sql: s.sql,
        transactionId: this.owner.id,
        database: this.owner.db.alias,
        depth: s.depth,
        savepoint: s.savepoint,
        name: s.name,
        durationMs,
        batchSize: statements.length,
        withStatement,
        error: i >= failedAt ? error : undefined,
      })
    }
  }

  private terminal(kind: 'commit' | 'rollback'): ControlStatement {
    if (this.owner.outermostName === undefined) return kind === 'commit' ? PLAIN_COMMIT : PLAIN_ROLLBACK
    return {
      kind,
      sql: kind === 'commit' ? COMMIT : ROLLBACK,
      depth: 1,
      savepoint: undefined,
      droppable: false,
      name: this.owner.outermostName,
    }
  }

  /**
   * Sends COMMIT (after any pending ROLLBACK TO) and returns the connection. Throws on every kind
   * of failure:
   *
   * 1. the connection was lost before: `ConnectionLostError` (nothing committed);
   * 2. a control statement had failed: the fatal error (rolled back);
   * 3. the connection was lost with COMMIT in flight: `CommitOutcomeUnknownError` — except when the
   *    server said why it ended the session before COMMIT arrived (idle-in-transaction timeout);
   * 4. COMMIT raised (serialization failure at commit, deferred constraint): that error, after
   *    making sure the transaction is rolled back;
   * 5. COMMIT was answered with ROLLBACK (the transaction had failed): `TransactionManagementError`.
   */
  async commit(): Promise<void> {
    if (this.flushing !== undefined) await this.flushing
    const state = this.owner.state
    if (state.kind === 'lost') throw lostError(state.cause)
    if (state.kind === 'failed') throw fatalError(state.cause)
    const statements = this.pending.filter((p) => !p.droppable)
    this.pending = []
    statements.push(this.terminal('commit'))
    let result: QueryResult | QueryResult[]
    // Read your writes: the WAL position rides after COMMIT in the same string, no round trip of
    // its own. If COMMIT fails the server skips it; after a COMMIT answered ROLLBACK it is ignored.
    // The command tags that arrived say whether an error came from COMMIT or from after it.
    const trailer = this.owner.commitLsn ? { sql: WAL_INSERT_LSN_QUERY, tags: [] as string[] } : undefined
    this.busy = true
    try {
      result = await this.send(statements, trailer)
    } catch (error) {
      this.busy = false
      const commitTag = trailer?.tags[statements.length - 1]
      if (commitTag === 'COMMIT') {
        // COMMIT completed and the statement after it failed (cancelled, statement_timeout, no
        // EXECUTE on pg_current_wal_insert_lsn(), connection lost): committed, position unknown.
        await this.endAfterCommit(error)
        this.owner.db.commitPositionUnknown(error)
        return
      }
      if (commitTag === 'ROLLBACK') {
        await this.endAfterCommit(error)
        const s = this.owner.state
        throw new TransactionManagementError(COMMIT_ANSWERED_ROLLBACK_MESSAGE, {
          cause: s.kind === 'ok' ? undefined : s.cause,
        })
      }
      const now = this.owner.state
      if (now.kind === 'lost' || isConnectionLoss(error)) {
        this.owner.connectionLost(error)
        const lost = this.owner.state
        const lostCause = lost.kind === 'lost' ? lost.cause : error
        this.release(error)
        // The idle-in-transaction timeout ended the session before COMMIT arrived: nothing was committed.
        if (sqlState(error) === '25P03' || sqlState(lostCause) === '25P03') throw lostError(lostCause)
        throw new CommitOutcomeUnknownError(COMMIT_UNKNOWN_MESSAGE, { cause: error })
      }
      await this.rollbackIfStillOpen()
      throw error
    }
    this.busy = false
    const results = Array.isArray(result) ? result : [result]
    const last = results[statements.length - 1]
    if (last?.command === 'ROLLBACK') {
      this.release()
      const s = this.owner.state
      throw new TransactionManagementError(COMMIT_ANSWERED_ROLLBACK_MESSAGE, {
        cause: s.kind === 'ok' ? undefined : s.cause,
      })
    }
    if (this.owner.commitLsn) this.owner.db.committedAt((results[statements.length]?.rows[0] as { lsn?: string })?.lsn)
    this.release()
  }

  /**
   * The round trip of COMMIT and the WAL position failed after COMMIT's CommandComplete: the
   * transaction has ended. Returns the connection (destroyed unless it is idle), and, when COMMIT
   * committed, tells the database its position is unknown (its read-your-writes then go to the
   * primary). Never throws: the block committed.
   */
  private async endAfterCommit(error: unknown): Promise<void> {
    const client = this.client
    if (isConnectionLoss(error) || this.owner.state.kind === 'lost' || client === undefined) this.release(error)
    else {
      await readyForQuery(client)
      this.release(client.getTransactionStatus?.() === 'I' ? undefined : error)
    }
  }

  private async rollbackIfStillOpen(): Promise<void> {
    // pg rejects on ErrorResponse, before ReadyForQuery (which carries the status) is processed.
    if (this.client !== undefined) await readyForQuery(this.client)
    const status = this.client?.getTransactionStatus?.()
    if (status === 'I') this.release()
    else await this.rollback()
  }

  /** Sends ROLLBACK; a failure destroys the connection (the server rolls back on disconnect). */
  async rollback(): Promise<void> {
    if (this.flushing !== undefined) await this.flushing
    this.pending = []
    this.mustFlush = false
    if (this.client === undefined) return
    const state = this.owner.state
    if (state.kind === 'lost') {
      this.release(state.cause)
      return
    }
    this.busy = true
    try {
      await this.send([this.terminal('rollback')])
    } catch (error) {
      this.busy = false
      this.release(error)
      return
    }
    this.busy = false
    this.release()
  }

  /**
   * Aborts from outside (db.close() at its deadline): a pending checkout gives up, a running
   * statement is cancelled and the connection destroyed, so the session ends and its locks are
   * freed at once.
   */
  async abort(reason: unknown): Promise<void> {
    this.abortCheckout?.(lostError(reason))
    const client = this.client
    if (client === undefined) return
    // A cancel request stops a running or waiting statement (PgBouncer routes it to the right
    // server); destroying the socket then ends the session, which rolls back and frees the locks.
    await this.owner.db.cancelStatement(client)
    this.release(reason)
  }

  /**
   * Returns the connection to the pool only when it is idle (transaction status 'I') and nothing
   * went wrong; destroys it otherwise.
   */
  release(destroyReason?: unknown): void {
    const client = this.client
    if (client === undefined) return
    this.client = undefined
    if (destroyReason !== undefined || this.owner.state.kind === 'lost') {
      // Keep our 'error' listener: the socket may still report errors while it is being torn down.
      client.release(
        destroyReason instanceof Error
          ? destroyReason
          : new Error('pg-atomic destroyed a connection in an unknown state'),
      )
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
}

/** COMMIT and ROLLBACK of an unnamed block: the common case, allocated once. */
const PLAIN_COMMIT: ControlStatement = Object.freeze({
  kind: 'commit',
  sql: COMMIT,
  depth: 1,
  savepoint: undefined,
  droppable: false,
  name: undefined,
})
const PLAIN_ROLLBACK: ControlStatement = Object.freeze({
  kind: 'rollback',
  sql: ROLLBACK,
  depth: 1,
  savepoint: undefined,
  droppable: false,
  name: undefined,
})

function sqlOf(statement: ControlStatement): string {
  return statement.sql
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
