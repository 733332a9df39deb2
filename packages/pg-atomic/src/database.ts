/**
 * `createDatabase()` and `getDatabase()`, query routing (the ambient transaction or the pool),
 * cursors outside blocks, checkout and check-in of connections, and `close()`.
 *
 * @module
 */
import { EventEmitter } from 'node:events'
import pg from 'pg'
import type { Pool, PoolClient, QueryConfig, QueryResult, QueryResultRow } from 'pg'
import Cursor from 'pg-cursor'
import { enterAtomic } from './atomic/block'
import type { Block } from './atomic/block'
import { cursorRows } from './atomic/cursor'
import { ENDED_MESSAGE } from './atomic/messages'
import { normalizeQuery, refuseTransactionControl, resolveBatchSize } from './atomic/statement'
import type { DatabaseCore, Transaction } from './atomic/transaction'
import type { CapturedHook } from './atomic/hooks'
import { currentBlock } from './context'
import {
  AcquireTimeoutError,
  InvalidOptionError,
  TransactionManagementError,
  isConnectionLoss,
  sqlState,
} from './errors'
import { resolveAtomicOptions, resolveDatabaseConfig } from './options'
import { createPoolFacade, onCheckedOutClientError } from './pool-facade'
import { findDatabase, register, unregister } from './registry'
import { blockedByStatement } from './sql/insight'
import type {
  AtomicLogger,
  AtomicOptions,
  DatabaseConfig,
  ResolvedDatabaseConfig,
  RetryPolicy,
  TransactionDefaults,
} from './options'
import type { CursorOptions, TransactionHandle, TransactionInfo } from './types'
import { formatLsn, parseLsn } from './replicas/lsn'
import type { Server } from './replicas/route'
import { ReplicaSet } from './replicas/router'
import { UNKNOWN_LSN, forgetDatabase, noteCommit, notePending, requiredLsn, settlePending } from './replicas/session'
import { BEGIN_READ_ONLY_QUERY, READ_ONLY_TRANSACTION_QUERY, WAL_INSERT_LSN_QUERY } from './sql/replicas'
import { COMMIT, ROLLBACK } from './sql/transaction'
import { canPipeline, runPipelined, withSerializedValues } from './atomic/pipeline'

/** How long a requiresNew block waits for its second connection when the database sets no acquireTimeoutMs. */
const REQUIRES_NEW_ACQUIRE_TIMEOUT_MS = 5000

/** Options of `db.close()`. */
export interface CloseOptions {
  /**
   * How long to wait for running blocks before rolling them back (their connections are
   * destroyed, so the server rolls back). Default: the database's `closeTimeoutMs` (10 000 ms).
   */
  timeoutMs?: number
}

/**
 * Reads sent to a read replica: `db.replica`. Outside a block of the database they go to a
 * replica that is up, lags at most `replicaOptions.maxLagMs`, and has replayed the current
 * read-your-writes context's last commit (see `withReadYourWrites`), else to the primary (or they
 * fail, with `whenUnavailable: 'fail'`). Inside a block of the database they run in the block, on
 * its server, like `db.query()`: a transaction sees its own writes. Without replicas configured,
 * everything goes to the primary.
 *
 * @example
 * ```ts
 * const { rows } = await db.replica.query<{ n: number }>('select count(*)::int as n from orders')
 * for await (const row of db.replica.cursor<{ id: number }>('select id from orders')) console.log(row.id)
 * ```
 */
export interface ReplicaReader {
  /** Runs a read-only statement on a replica (see {@link ReplicaReader}). Returns pg's `QueryResult`. */
  query<R extends QueryResultRow = QueryResultRow>(text: string, values?: readonly unknown[]): Promise<QueryResult<R>>
  /** Runs a read-only statement given as a pg `QueryConfig`, as above. */
  query<R extends QueryResultRow = QueryResultRow>(config: QueryConfig): Promise<QueryResult<R>>
  /** Streams rows through `pg-cursor` from a replica (see {@link ReplicaReader} and `db.cursor()`). */
  cursor<R extends QueryResultRow = QueryResultRow>(
    text: string,
    values?: readonly unknown[],
    options?: CursorOptions,
  ): AsyncIterable<R>
  /**
   * The primary's WAL position (`'0/3000148'`) at the current read-your-writes context's last commit
   * on this database — what a replica must have replayed to serve the context's reads — or
   * `undefined` when it has committed nothing there (or the database has no replicas). After a
   * commit whose position could not be read, `'FFFFFFFF/FFFFFFFF'` (no replica has replayed it: the
   * context reads on the primary) until a later commit's position is known.
   */
  lastCommitLsn(): string | undefined
}

/** A registered PostgreSQL database: the entry point for transactions and queries. */
export interface Database {
  /** The alias the database is registered under. */
  readonly alias: string
  /**
   * A pg `Pool`-compatible facade: inside an `atomic()` block of this database, `query()` and
   * `connect()` use the block's connection (a client's `release()` then does not return it);
   * outside, they use the pool. Hand it to libraries that take a pool (Kysely, Drizzle, ...).
   */
  readonly pool: Pool
  /** Reads that go to a read replica (see {@link ReplicaReader}). */
  readonly replica: ReplicaReader
  /** Runs `fn` in a block of this database (see the module-level {@link atomic}). */
  atomic<T>(fn: (tx: TransactionHandle) => T | Promise<T>): Promise<T>
  /** Runs `fn` in a block of this database with `options` (validated before any SQL; no `using`). */
  /** Runs `fn` outside any transaction of this database (`propagation: 'notSupported'` / `'never'`); no handle. */
  atomic<T>(
    options: Omit<AtomicOptions, 'using'> & { propagation: 'notSupported' | 'never' },
    fn: () => T | Promise<T>,
  ): Promise<T>
  atomic<T>(options: Omit<AtomicOptions, 'using'>, fn: (tx: TransactionHandle) => T | Promise<T>): Promise<T>
  /**
   * Runs a statement: inside a block of this database on the block's connection, outside on a
   * pooled connection in autocommit mode. Returns pg's `QueryResult`.
   */
  query<R extends QueryResultRow = QueryResultRow>(text: string, values?: readonly unknown[]): Promise<QueryResult<R>>
  /** Runs a statement given as a pg `QueryConfig` (`{ text, values, rowMode, types, ... }`), as above. */
  query<R extends QueryResultRow = QueryResultRow>(config: QueryConfig): Promise<QueryResult<R>>
  /**
   * Streams rows through `pg-cursor`. Inside a block it reads on the block's connection (in its
   * snapshot); outside it holds one pooled connection until the iteration ends. Breaking out of
   * the loop or an error closes the cursor and frees the connection.
   */
  cursor<R extends QueryResultRow = QueryResultRow>(
    text: string,
    values?: readonly unknown[],
    options?: CursorOptions,
  ): AsyncIterable<R>
  /** Whether the current async context is inside an active block of this database. */
  inAtomicBlock(): boolean
  /** A snapshot of the current transaction of this database, or `undefined` outside a block. */
  currentTransaction(): TransactionInfo | undefined
  /**
   * Refuses new outermost blocks, waits for running ones (bounded by `timeoutMs`), rolls back
   * those still running at the deadline, ends the pool if pg-atomic created it, and frees the alias.
   */
  close(options?: CloseOptions): Promise<void>
}

/** The implementation behind {@link Database}; internal modules (locks) use its extra members. @internal */
export class DatabaseImpl implements Database, DatabaseCore {
  readonly alias: string
  readonly defaults: Readonly<TransactionDefaults>
  readonly logger: AtomicLogger
  readonly retry: RetryPolicy | undefined
  private readonly acquireTimeoutMs: number | undefined
  readonly realPool: Pool
  /** The replica pool of each replica connection checked out (a pooled client never changes pool). */
  private readonly replicaPools = new WeakMap<PoolClient, Pool>()
  readonly pool: Pool
  readonly replica: ReplicaReader
  readonly hasReplicas: boolean
  private readonly replicaSet: ReplicaSet | undefined
  /** Connections go through a transaction-mode pooler: session features are refused. */
  readonly transactionPooling: boolean
  private readonly ownsPool: boolean
  private readonly closeTimeoutMs: number
  private closing = false
  private closed = false
  private closePromise: Promise<void> | undefined
  private readonly transactions = new Set<Transaction>()
  private drained: (() => void) | undefined
  /** The open test transaction of pg-atomic/testing, if any. @internal */
  testRoot: Block | undefined = undefined
  /** Where the test kit captures onCommit hooks. @internal */
  testHooks: ((hooks: readonly CapturedHook[]) => void) | undefined = undefined

  constructor(config: ResolvedDatabaseConfig) {
    this.alias = config.alias
    this.defaults = config.defaults
    this.logger = config.logger
    this.closeTimeoutMs = config.closeTimeoutMs
    this.transactionPooling = config.transactionPooling
    this.retry = config.retry
    this.acquireTimeoutMs = config.acquireTimeoutMs
    this.ownsPool = config.pool === undefined
    this.realPool = config.pool ?? new pg.Pool(config.poolConfig)
    if (this.ownsPool) {
      // An idle client whose backend dies is removed by pg-pool, which then emits 'error' on the
      // pool; without a listener that would crash the process.
      this.realPool.on('error', (error) => {
        if (this.realPool.listenerCount('error') === 1)
          this.logger.error(
            `An idle connection of database '${this.alias}' failed and was removed from the ` +
              `pool; the error is attached.`,
            error,
          )
      })
    }
    this.pool = createPoolFacade(this)
    this.replicaSet =
      config.replicas.length === 0
        ? undefined
        : new ReplicaSet(config.alias, config.replicas, config.replicaOptions, config.logger)
    this.hasReplicas = this.replicaSet !== undefined
    this.replica = createReplicaReader(this)
  }

  // ---- DatabaseCore -------------------------------------------------------------------------

  /**
   * Checks out a connection: for `'replica'`, one of a replica that can serve the current
   * context's reads (replicas/router.ts), else the primary's (or ReplicaUnavailableError).
   */
  connect(server: Server = 'primary', independent = false): Promise<PoolClient> {
    if (server === 'replica' && this.replicaSet !== undefined) return this.connectForRead(this.replicaSet, independent)
    return this.connectPrimary(independent)
  }

  private async connectForRead(replicas: ReplicaSet, independent: boolean): Promise<PoolClient> {
    // A write on a db.pool connection released just before: its position is being read.
    const pending = settlePending()
    if (pending !== undefined) await pending
    const required = requiredLsn(this)
    // A commit of the context whose position is unknown: no replica can be shown to have replayed it.
    if (required === UNKNOWN_LSN) return this.connectPrimary(independent)
    const found = await replicas.checkout(required)
    if (found.kind !== 'replica') return this.connectPrimary(independent)
    this.replicaPools.set(found.client, found.pool)
    return found.client
  }

  /** Whether `client` is a connection of the primary (not of a replica). @internal */
  isPrimaryClient(client: PoolClient): boolean {
    return !this.replicaPools.has(client)
  }

  /** Records the primary's WAL position after a commit in the current read-your-writes context. */
  committedAt(lsn: string | undefined): void {
    const position = parseLsn(lsn)
    if (position !== undefined) noteCommit(this, position)
  }

  /**
   * A commit on the primary whose WAL position could not be read: logged (the SQLSTATE or error
   * class, never the server's message), and remembered as unknown, so the context's replica reads go
   * to the primary until a later commit's position is known (WAL positions only grow: any position
   * read after this commit covers it).
   */
  /**
   * A `db.pool` connection used outside blocks, released on a database with replicas: its work may
   * have committed writes, so the primary's WAL position is read on it before it goes back
   * (`giveBack`), and replica reads wait for that (read your writes for query builders). When the
   * read fails, the position counts as unknown and the connection is destroyed. @internal
   */
  positionAtRelease(client: PoolClient, giveBack: () => void, destroy: (error: Error) => void): void {
    notePending(
      this.noteAutocommit(client).then(giveBack, (error: unknown) => {
        this.commitPositionUnknown(error)
        destroy(new Error('pg-atomic could not read the WAL position after work on a db.pool connection'))
      }),
    )
  }

  commitPositionUnknown(error: unknown): void {
    noteCommit(this, UNKNOWN_LSN)
    const code = sqlState(error)
    const what = code !== undefined ? `SQLSTATE ${code}` : error instanceof Error ? error.name : typeof error
    this.logger.error(
      `A transaction of database '${this.alias}' committed, but reading the primary's WAL position right ` +
        `after it failed (${what}): until a later commit's position is known, this context's replica ` +
        'reads go to the primary.',
    )
  }

  /** The current context's last commit position, formatted; see {@link ReplicaReader.lastCommitLsn}. */
  lastCommitLsn(): string | undefined {
    const lsn = this.hasReplicas ? requiredLsn(this) : undefined
    return lsn === undefined ? undefined : formatLsn(lsn)
  }

  /**
   * Checks out a connection of the primary. With `acquireTimeoutMs`, a checkout that has to wait
   * (the pool is exhausted) fails with AcquireTimeoutError after that long; only then is a timer set.
   */
  private connectPrimary(independent = false): Promise<PoolClient> {
    const pool = this.realPool
    // A requiresNew block checks out while its suspended transaction holds a connection of the
    // same pool: when every request does that at once, none can go on. Its wait is always bounded.
    const timeoutMs = this.acquireTimeoutMs ?? (independent ? REQUIRES_NEW_ACQUIRE_TIMEOUT_MS : undefined)
    if (timeoutMs === undefined || pool.idleCount > 0 || pool.totalCount < (pool.options.max ?? 10))
      return pool.connect()
    if (independent && (pool.options.max ?? 10) === 1) {
      return Promise.reject(this.acquireTimeoutError(0, independent))
    }
    const pending = pool.connect()
    return new Promise<PoolClient>((resolve, reject) => {
      let timedOut = false
      const timer = setTimeout(() => {
        timedOut = true
        reject(this.acquireTimeoutError(timeoutMs, independent))
      }, timeoutMs)
      pending.then(
        (client) => {
          clearTimeout(timer)
          if (timedOut) client.release()
          else resolve(client)
        },
        (error: unknown) => {
          clearTimeout(timer)
          if (!timedOut) reject(error)
        },
      )
    })
  }

  private acquireTimeoutError(timeoutMs: number, independent: boolean): AcquireTimeoutError {
    const pool = this.realPool
    const poolSize = pool.options.max ?? 10
    let heldByBlocks = 0
    for (const tx of this.transactions) if (tx.client !== undefined) heldByBlocks++
    const waiting = pool.waitingCount
    const why = independent
      ? poolSize === 1
        ? `A requiresNew atomic() block of database '${this.alias}' needs a second connection while ` +
          'the transaction it suspends holds one, and the pool has max 1: it could never get one. ' +
          'Raise max, or leave out requiresNew.'
        : `A requiresNew atomic() block of database '${this.alias}' needs a second connection while ` +
          `the transaction it suspends holds one, and none became free within ${timeoutMs} ms: ` +
          `the pool's max is ${poolSize}, ${pool.totalCount - pool.idleCount} connections are ` +
          `checked out (${heldByBlocks} by atomic() blocks), and ${waiting} requests are waiting. ` +
          'When every request holds a connection and waits for a second, none can go on: raise ' +
          'max above the number of requests that can reach a requiresNew block at the same time.'
      : `No connection of database '${this.alias}' became free within ${timeoutMs} ms: ` +
        `the pool's max is ${poolSize}, ${pool.totalCount - pool.idleCount} connections ` +
        `are checked out (${heldByBlocks} by atomic() blocks), and ${waiting} requests ` +
        `are waiting. Keep transactions short, raise max, or look for blocks that wait ` +
        `on each other.`
    return new AcquireTimeoutError(why, { poolSize, heldByBlocks, waiting })
  }

  /**
   * Sends a protocol cancel request for the statement `client` may be running, from a short-lived
   * connection to the server `client` is connected to (the primary or its replica), and waits (at
   * most 2 s) for the server to take it. Works through PgBouncer, which
   * maps the key to the right server, and needs no privilege (unlike pg_terminate_backend).
   */
  async cancelStatement(client: PoolClient): Promise<void> {
    // Sent whether or not a statement is running: the server ignores a cancel for an idle session.
    const target = client as PoolClient & { processID?: number; secretKey?: number }
    if (typeof target.processID !== 'number') return
    // The server the client is connected to: a replica's key means nothing to the primary.
    const pool = (this.replicaPools.get(client) ?? this.realPool) as Pool & { Client: typeof pg.Client }
    const canceler = new pool.Client(pool.options) as pg.Client & {
      connection: EventEmitter & {
        connect(port: number | string, host?: string): void
        cancel(pid: number, key: number): void
        stream: { destroy(): void }
      }
      host: string
      port: number
    }
    const con = canceler.connection
    await new Promise<void>((resolve) => {
      const timer = setTimeout(done, 2000)
      function done(): void {
        clearTimeout(timer)
        con.removeAllListeners('connect')
        con.stream.destroy()
        resolve()
      }
      // The server answers a cancel request by closing the connection.
      con.once('end', done)
      con.on('error', done)
      con.once('connect', () => con.cancel(target.processID as number, target.secretKey as number))
      if (canceler.host.startsWith('/')) con.connect(`${canceler.host}/.s.PGSQL.${canceler.port}`)
      else con.connect(canceler.port, canceler.host)
    })
  }

  async blockedBy(waiting: number, holder: number): Promise<boolean> {
    const pool = this.realPool as Pool & { Client: typeof pg.Client }
    // Not from the pool: it may be exhausted by the very sessions being checked.
    const client = new pool.Client(pool.options)
    client.on('error', () => undefined)
    await client.connect()
    try {
      const { rows } = await client.query<{ blocked: boolean }>(blockedByStatement(), [holder, waiting])
      return rows[0]?.blocked === true
    } finally {
      await client.end()
    }
  }

  assertOpen(): void {
    if (this.closing) {
      throw new TransactionManagementError(
        `Database '${this.alias}' is closing or closed: no new atomic() block can start on it.`,
      )
    }
  }

  transactionStarted(tx: Transaction): void {
    this.transactions.add(tx)
  }

  transactionEnded(tx: Transaction): void {
    this.transactions.delete(tx)
    if (this.transactions.size === 0 && this.drained !== undefined) this.drained()
  }

  // ---- public API ---------------------------------------------------------------------------

  atomic<T>(fn: (tx: TransactionHandle) => T | Promise<T>): Promise<T>
  atomic<T>(
    options: Omit<AtomicOptions, 'using'> & { propagation: 'notSupported' | 'never' },
    fn: () => T | Promise<T>,
  ): Promise<T>
  atomic<T>(options: Omit<AtomicOptions, 'using'>, fn: (tx: TransactionHandle) => T | Promise<T>): Promise<T>
  atomic<T>(
    optionsOrFn: Omit<AtomicOptions, 'using'> | ((tx: TransactionHandle) => T | Promise<T>),
    maybeFn?: (tx: TransactionHandle) => T | Promise<T>,
  ): Promise<T> {
    try {
      if (typeof optionsOrFn === 'function') {
        if (maybeFn !== undefined)
          throw new InvalidOptionError(
            'options',
            'db.atomic() takes its options first: db.atomic(options, fn), not db.atomic(fn, options).',
          )
        return enterAtomic(this, resolveAtomicOptions(undefined), optionsOrFn)
      }
      const options = resolveAtomicOptions(optionsOrFn)
      if (options.using !== 'default' && options.using !== this.alias) {
        throw new InvalidOptionError(
          'using',
          `Invalid option "using" for db.atomic(): this database is '${this.alias}'; use ` +
            `the module-level atomic() to pick another database.`,
        )
      }
      return enterAtomic(this, options, maybeFn as (tx: TransactionHandle) => T | Promise<T>)
    } catch (error) {
      return Promise.reject(error)
    }
  }

  /** The active block of this database in the current context, `undefined` outside, or throws for an ended one. */
  activeBlock(): Block | undefined {
    const block = currentBlock(this)
    if (block === undefined) return undefined
    if (block.ended) throw new TransactionManagementError(ENDED_MESSAGE)
    return block
  }

  query<R extends QueryResultRow = QueryResultRow>(text: string, values?: readonly unknown[]): Promise<QueryResult<R>>
  query<R extends QueryResultRow = QueryResultRow>(config: QueryConfig): Promise<QueryResult<R>>
  query<R extends QueryResultRow = QueryResultRow>(
    textOrConfig: string | QueryConfig,
    values?: readonly unknown[],
  ): Promise<QueryResult<R>> {
    return this.routeQuery<R>(textOrConfig, values, 'primary')
  }

  /**
   * A statement of `db.query()` (`server` 'primary') or `db.replica.query()` ('replica'): in the
   * current block when there is one, else in autocommit on `server`. @internal
   */
  routeQuery<R extends QueryResultRow>(
    textOrConfig: string | QueryConfig,
    values: readonly unknown[] | undefined,
    server: Server,
  ): Promise<QueryResult<R>> {
    let block: Block | undefined
    try {
      block = this.activeBlock()
    } catch (error) {
      return Promise.reject(error)
    }
    if (block !== undefined) return block.run<R>(textOrConfig, values)
    return this.queryOutside<R>(textOrConfig, values, server)
  }

  /** Autocommit query on a pooled connection, which is checked before it goes back. */
  async queryOutside<R extends QueryResultRow>(
    textOrConfig: string | QueryConfig,
    values: readonly unknown[] | undefined,
    server: Server = 'primary',
  ): Promise<QueryResult<R>> {
    const config = normalizeQuery(textOrConfig, values)
    refuseTransactionControl(config.text, false)
    this.assertNotClosed()
    const client = await this.checkout(server)
    let failure: unknown
    try {
      const result =
        server === 'replica' && this.hasReplicas && this.isPrimaryClient(client)
          ? await this.readOnlyOnPrimary<R>(client, config)
          : await client.query<R>(config)
      if (server === 'primary' && this.hasReplicas) {
        try {
          await this.noteAutocommit(client)
        } catch (error) {
          // The statement committed: its result stands. Only its WAL position is unknown, so the
          // connection is destroyed, this is logged, and the context reads on the primary.
          failure = error
          this.commitPositionUnknown(error)
        }
      }
      return result
    } catch (error) {
      failure = error
      throw error
    } finally {
      this.checkin(client, failure)
    }
  }

  /**
   * A `db.replica` statement outside blocks that the primary serves (no replica usable): run in a
   * read-only transaction, so that a write fails with 25006 there as it would on a standby. A
   * pipelinable statement shares its round trip with {@link READ_ONLY_TRANSACTION_QUERY}; another
   * gets an explicit read-only transaction (two more round trips).
   */
  private async readOnlyOnPrimary<R extends QueryResultRow>(
    client: PoolClient,
    config: QueryConfig,
  ): Promise<QueryResult<R>> {
    if (canPipeline(config)) {
      const outcome = await runPipelined<R>(
        client,
        [{ sql: READ_ONLY_TRANSACTION_QUERY }],
        withSerializedValues(config),
        true,
      )
      if (outcome.ok) return outcome.result
      if (outcome.error instanceof Error) Error.captureStackTrace(outcome.error)
      throw outcome.error
    }
    await client.query(BEGIN_READ_ONLY_QUERY)
    let result: QueryResult<R>
    try {
      result = await client.query<R>(config)
    } catch (error) {
      // The statement's error is the one to report; a connection that cannot roll back is destroyed.
      if (!isConnectionLoss(error)) await client.query(ROLLBACK).catch(() => undefined)
      throw error
    }
    await client.query(COMMIT)
    return result
  }

  /** Statements outside blocks are still allowed while running blocks finish, not once closed. */
  assertNotClosed(): void {
    if (this.closed)
      throw new TransactionManagementError(
        `Database '${this.alias}' is closed: create a new database with createDatabase() to run more statements.`,
      )
  }

  /**
   * After an autocommit statement on the primary, with replicas: the WAL position, for the read
   * your writes of the context (one more round trip; a block's COMMIT carries it without one).
   */
  private async noteAutocommit(client: PoolClient): Promise<void> {
    const { rows } = await client.query<{ lsn: string }>(WAL_INSERT_LSN_QUERY)
    this.committedAt(rows[0]?.lsn)
  }

  async checkout(server: Server = 'primary'): Promise<PoolClient> {
    const client = await this.connect(server)
    client.on('error', onCheckedOutClientError)
    return client
  }

  /** Returns a connection used outside a block: destroyed when lost or not idle. */
  checkin(client: PoolClient, failure: unknown): void {
    if (failure !== undefined && isConnectionLoss(failure)) {
      client.release(failure instanceof Error ? failure : true)
      return
    }
    this.returnIfIdle(
      client,
      (err) => client.release(err),
      (status) =>
        `A connection of database '${this.alias}' was about to go back to the pool ` +
        `inside a transaction (status '${status}'); it was destroyed instead, which ` +
        `rolled the transaction back. Use atomic() to run transactions.`,
    )
  }

  /**
   * Returns a connection checked out outside a block to the pool when its transaction status is
   * idle; otherwise logs `leak(status)` and destroys it (which rolls the transaction back).
   */
  returnIfIdle(client: PoolClient, release: (err?: Error) => void, leak: (status: string | null) => string): void {
    const status = client.getTransactionStatus?.()
    if (status !== undefined && status !== 'I') {
      this.logger.error(leak(status))
      release(new Error(`transaction status '${status}' at release`))
      return
    }
    client.removeListener('error', onCheckedOutClientError)
    release()
  }

  cursor<R extends QueryResultRow = QueryResultRow>(
    text: string,
    values?: readonly unknown[],
    options?: CursorOptions,
  ): AsyncIterable<R> {
    const batchSize = resolveBatchSize(options)
    return this.cursorOn<R>(text, values, batchSize, 'primary')
  }

  /** A cursor in the active block of this database, else on a connection of `server`. @internal */
  cursorOn<R extends QueryResultRow>(
    text: string,
    values: readonly unknown[] | undefined,
    batchSize: number,
    server: Server,
  ): AsyncIterable<R> {
    const block = this.activeBlock()
    if (block !== undefined) return cursorRows<R>(block.builderTail(), text, values, batchSize)
    refuseTransactionControl(text, false)
    return this.cursorOutside<R>(text, values, batchSize, server)
  }

  private async *cursorOutside<R extends QueryResultRow>(
    text: string,
    values: readonly unknown[] | undefined,
    batchSize: number,
    server: Server,
  ): AsyncGenerator<R, void, undefined> {
    this.assertNotClosed()
    const client = await this.checkout(server)
    let failure: unknown
    let cursor: Cursor<R> | undefined
    // A db.replica cursor the primary serves: in an explicit read-only transaction (see readOnlyOnPrimary).
    const readOnly = server === 'replica' && this.hasReplicas && this.isPrimaryClient(client)
    try {
      if (readOnly) await client.query(BEGIN_READ_ONLY_QUERY)
      cursor = client.query(new Cursor<R>(text, values as unknown[] | undefined))
      for (;;) {
        const rows = await cursor.read(batchSize)
        if (rows.length === 0) break
        yield* rows
      }
    } catch (error) {
      failure = error
      throw error
    } finally {
      let closeError: unknown
      if (cursor !== undefined && failure === undefined) {
        try {
          await cursor.close()
          if (readOnly) await client.query(COMMIT)
        } catch (error) {
          closeError = error
          this.logger.error(
            `Closing a cursor of database '${this.alias}' failed, so its connection was ` +
              `destroyed; the error is attached.`,
            error,
          )
        }
      }
      // A cursor that failed leaves the portal's implicit transaction in an unknown state: destroy.
      const bad = failure ?? closeError
      if (bad !== undefined) client.release(bad instanceof Error ? bad : true)
      else this.checkin(client, undefined)
    }
  }

  inAtomicBlock(): boolean {
    const block = currentBlock(this)
    return block !== undefined && !block.ended
  }

  currentTransaction(): TransactionInfo | undefined {
    const block = currentBlock(this)
    return block === undefined || block.ended ? undefined : block.info()
  }

  close(options?: CloseOptions): Promise<void> {
    if (this.closePromise !== undefined) return this.closePromise
    let timeoutMs = this.closeTimeoutMs
    if (options?.timeoutMs !== undefined) {
      if (!Number.isInteger(options.timeoutMs) || options.timeoutMs < 0) {
        return Promise.reject(
          new InvalidOptionError(
            'timeoutMs',
            'Invalid option "timeoutMs" for close(): it must be a whole number of milliseconds of at least 0.',
          ),
        )
      }
      timeoutMs = options.timeoutMs
    }
    this.closing = true
    this.closePromise = this.shutdown(timeoutMs)
    return this.closePromise
  }

  private async shutdown(timeoutMs: number): Promise<void> {
    if (this.transactions.size > 0) {
      let timer: NodeJS.Timeout | undefined
      await new Promise<void>((resolve) => {
        this.drained = resolve
        timer = setTimeout(resolve, timeoutMs)
      })
      clearTimeout(timer)
      this.drained = undefined
      const aborts: Array<Promise<void>> = []
      for (const tx of this.transactions) {
        // Cancelling the running statement and destroying the connection ends the session, which
        // rolls the transaction back and frees its locks at once (a destroyed socket alone goes
        // unnoticed while a statement runs or waits on a lock); the block's caller gets a
        // ConnectionLostError whose cause says why.
        const reason = new TransactionManagementError(
          `Database '${this.alias}' was closed while this transaction was still running ` +
            `after ${timeoutMs} ms; it was rolled back.`,
        )
        aborts.push(tx.abort(reason))
      }
      await Promise.all(aborts)
    }
    this.closed = true
    unregister(this)
    forgetDatabase(this)
    await this.replicaSet?.end()
    if (this.ownsPool) await this.realPool.end()
  }
}

/** `db.replica`: the same routing as `db.query()` / `db.cursor()`, with a replica outside blocks. */
function createReplicaReader(db: DatabaseImpl): ReplicaReader {
  return Object.freeze({
    query<R extends QueryResultRow = QueryResultRow>(
      textOrConfig: string | QueryConfig,
      values?: readonly unknown[],
    ): Promise<QueryResult<R>> {
      return db.routeQuery<R>(textOrConfig, values, 'replica')
    },
    cursor<R extends QueryResultRow = QueryResultRow>(
      text: string,
      values?: readonly unknown[],
      options?: CursorOptions,
    ): AsyncIterable<R> {
      return db.cursorOn<R>(text, values, resolveBatchSize(options), 'replica')
    },
    lastCommitLsn: () => db.lastCommitLsn(),
  }) as ReplicaReader
}

/**
 * Creates a database and registers it under `alias` (default `'default'`). `config` is a connection
 * string, pg `PoolConfig` fields with pg-atomic's options, or `{ pool }` for an existing pool. It is
 * validated first: an invalid value throws `InvalidOptionError` naming the field, before anything
 * connects. Connections are opened lazily.
 *
 * @example
 * ```ts
 * const db = createDatabase({ connectionString: process.env.DATABASE_URL, lockTimeout: 5000 })
 * await db.atomic(async () => {
 *   await db.query('update accounts set balance = balance - $1 where id = $2', [100, 1])
 * })
 * await db.close()
 * ```
 */
export function createDatabase(config: DatabaseConfig | string = {}): Database {
  const resolved = resolveDatabaseConfig(typeof config === 'string' ? { connectionString: config } : config)
  if (findDatabase(resolved.alias) !== undefined) {
    throw new InvalidOptionError(
      'alias',
      `A database is already registered under the alias '${resolved.alias}': close it ` +
        `first (db.close()), or choose another alias.`,
    )
  }
  const db = new DatabaseImpl(resolved)
  register(db)
  return db
}

/** The database registered under `alias`, or `undefined`. */
export function getDatabase(alias = 'default'): Database | undefined {
  return findDatabase(alias)
}
