/**
 * The pg `Pool`-compatible facade of a database (`db.pool`), for libraries that take a pool
 * (Kysely, Drizzle, ...): inside an `atomic()` block of its database, `query()` and `connect()`
 * use the block's connection; outside, the pool.
 *
 * @module
 * @internal
 */
import { EventEmitter } from 'node:events'
import pg from 'pg'
import type { Pool, PoolClient, QueryConfig, QueryResult } from 'pg'
import type { Block } from './atomic/block'
import type { DatabaseImpl } from './database'
import { submitInBlock } from './atomic/cursor'
import type { Submittable } from './atomic/cursor'
import { TransactionManagementError } from './errors'
import { DEFAULT_OPTIONS } from './options'
import type { ResolvedOptions } from './options'
import { parseBuilderControl } from './sql/builder-control'
import type { BuilderControl, TransactionModes } from './sql/builder-control'

/** The 'error' listener kept on a connection while it is checked out outside a block. @internal */
export function onCheckedOutClientError(): void {
  // The failing query (if any) rejects with the error itself, and pg-pool destroys a client that
  // is no longer queryable when it is released. Without a listener the process would crash.
}

type QueryCallback = (err: Error | null, result?: QueryResult) => void

/** The facade of `db`, typed as the `pg.Pool` it stands in for. @internal */
export function createPoolFacade(db: DatabaseImpl): Pool {
  return new PoolFacade(db) as unknown as Pool
}

/**
 * A pg `Pool` look-alike that routes to the ambient transaction of its database.
 * @internal
 */
class PoolFacade extends EventEmitter {
  private readonly db: DatabaseImpl

  constructor(db: DatabaseImpl) {
    super()
    this.db = db
  }

  get totalCount(): number {
    return this.db.realPool.totalCount
  }
  get idleCount(): number {
    return this.db.realPool.idleCount
  }
  get waitingCount(): number {
    return this.db.realPool.waitingCount
  }
  get expiredCount(): number {
    return this.db.realPool.expiredCount
  }
  get ending(): boolean {
    return this.db.realPool.ending
  }
  get ended(): boolean {
    return this.db.realPool.ended
  }
  get options(): Pool['options'] {
    return this.db.realPool.options
  }

  override on(event: string | symbol, listener: (...args: never[]) => void): this {
    this.db.realPool.on(event as 'error', listener as () => void)
    return this
  }
  override addListener(event: string | symbol, listener: (...args: never[]) => void): this {
    return this.on(event, listener)
  }
  override once(event: string | symbol, listener: (...args: never[]) => void): this {
    this.db.realPool.once(event as 'error', listener as () => void)
    return this
  }
  override off(event: string | symbol, listener: (...args: never[]) => void): this {
    this.db.realPool.off(event as 'error', listener as () => void)
    return this
  }
  override removeListener(event: string | symbol, listener: (...args: never[]) => void): this {
    return this.off(event, listener)
  }
  override prependListener(event: string | symbol, listener: (...args: never[]) => void): this {
    this.db.realPool.prependListener(event as 'error', listener as () => void)
    return this
  }
  override prependOnceListener(event: string | symbol, listener: (...args: never[]) => void): this {
    this.db.realPool.prependOnceListener(event as 'error', listener as () => void)
    return this
  }
  override removeAllListeners(event?: string | symbol): this {
    this.db.realPool.removeAllListeners(event as 'error')
    return this
  }
  override listenerCount(event: string | symbol): number {
    return this.db.realPool.listenerCount(event as 'error')
  }
  override listeners(event: string | symbol): ReturnType<EventEmitter['listeners']> {
    return this.db.realPool.listeners(event as 'error')
  }
  override rawListeners(event: string | symbol): ReturnType<EventEmitter['rawListeners']> {
    return this.db.realPool.rawListeners(event as 'error')
  }
  override eventNames(): Array<string | symbol> {
    return this.db.realPool.eventNames()
  }
  override emit(event: string | symbol, ...args: unknown[]): boolean {
    return this.db.realPool.emit(event as 'error', ...(args as [Error, pg.PoolClient]))
  }

  query(
    textOrConfig: string | QueryConfig,
    valuesOrCallback?: readonly unknown[] | QueryCallback,
    callback?: QueryCallback,
  ): Promise<QueryResult> | undefined {
    const cb = typeof valuesOrCallback === 'function' ? valuesOrCallback : callback
    const values = typeof valuesOrCallback === 'function' ? undefined : valuesOrCallback
    const promise = this.db.query(textOrConfig as string, values)
    if (cb === undefined) return promise
    promise.then(
      (result) => cb(null, result),
      (error: Error) => cb(error),
    )
    return undefined
  }

  connect(
    callback?: (err: Error | undefined, client: PoolClient | undefined, done: (release?: unknown) => void) => void,
  ): Promise<PoolClient> | undefined {
    const promise = this.connectClient()
    if (callback === undefined) return promise
    promise.then(
      (client) =>
        callback(undefined, client, (release?: unknown) => client.release(release as boolean | Error | undefined)),
      (error: Error) => callback(error, undefined, () => undefined),
    )
    return undefined
  }

  private async connectClient(): Promise<PoolClient> {
    const block = this.db.activeBlock()
    // Inside a query builder's transaction callback, a new client belongs to that transaction.
    if (block !== undefined) return new BlockClient(block.builderTail()) as unknown as PoolClient
    this.db.assertNotClosed()
    const client = await this.db.connect()
    client.on('error', onCheckedOutClientError)
    const release = client.release.bind(client)
    const db = this.db
    let released = false
    client.release = (err?: Error | boolean): void => {
      if (released) {
        release(err)
        return
      }
      released = true
      if (err !== undefined && err !== false) {
        release(err)
        return
      }
      const giveBack = () =>
        db.returnIfIdle(
          client,
          release,
          (status) =>
            `A connection obtained from the pool of database '${db.alias}' was released ` +
            `inside a transaction (status '${status}'); it was destroyed instead of being ` +
            `returned, which rolled the transaction back. Commit or roll back before ` +
            `release(), or use atomic().`,
        )
      // With replicas, what it committed counts for read your writes (Kysely writes this way).
      if (db.hasReplicas && client.getTransactionStatus?.() === 'I') db.positionAtRelease(client, giveBack, release)
      else giveBack()
    }
    return client
  }

  /** Ends the facade's database: `db.close()` (the pool itself is ended only if pg-atomic created it). */
  end(callback?: () => void): Promise<void> | undefined {
    const promise = this.db.close()
    if (callback === undefined) return promise
    promise.then(callback, callback)
    return undefined
  }
}

// Libraries decide how to run their own transactions with `pool instanceof pg.Pool` (Drizzle
// does): the facade must pass that test. Every public Pool method and getter is defined above, so
// nothing of pg-pool's internal state is ever used through this prototype link.
Object.setPrototypeOf(PoolFacade.prototype, pg.Pool.prototype)

/**
 * The client `db.pool.connect()` returns inside a block: every query goes through the block
 * (queued, doom-checked); `release()` does not return the connection.
 *
 * Query builders run their own transactions on such a client (Kysely's `db.transaction()`,
 * Drizzle's `db.transaction()` and nested `tx.transaction()`). Inside a block their transaction
 * control maps onto nested blocks, so their work commits and rolls back with the block:
 *
 * 1. `BEGIN` / `START TRANSACTION` opens a nested block with a savepoint. Modes the transaction
 *    already has are accepted; a different isolation level, access mode or deferrable mode is
 *    refused (a nested block cannot change them).
 * 2. `COMMIT` / `END` exits it normally (its RELEASE deferred as usual); it rejects, like any
 *    block, when the block had to roll back (an error inside was caught).
 * 3. `ROLLBACK` / `ABORT` rolls it back to its savepoint, silently.
 * 4. `SAVEPOINT x` opens a nested block named `x` for this client; `RELEASE [SAVEPOINT] x` exits it
 *    (and those opened after it) normally; `ROLLBACK TO [SAVEPOINT] x` rolls back the blocks opened
 *    since `x` and `x` itself, then opens `x` again — as PostgreSQL keeps `x` after ROLLBACK TO.
 * 5. `release()` with a builder block still open rolls it back (a builder that lost track of its
 *    transaction must not commit half of it).
 *
 * Code in the builder's transaction callback that uses `db.query`, `atomic()` or the ambient
 * helpers joins the builder's transaction (see `Block.builderTail`).
 * @internal
 */
class BlockClient extends EventEmitter {
  private readonly block: Block
  /** Builder blocks opened on this client, outermost first, with the builder's savepoint name. */
  private readonly opened: Array<{ readonly block: Block; readonly name: string | undefined }> = []

  constructor(block: Block) {
    super()
    this.block = block
  }

  /** Where this client's statements run: its innermost builder block, else the block it was obtained in. */
  private get target(): Block {
    return this.opened.at(-1)?.block ?? this.block
  }

  query(
    textOrConfig: string | QueryConfig | Submittable,
    valuesOrCallback?: readonly unknown[] | QueryCallback,
    callback?: QueryCallback,
  ): Promise<QueryResult> | Submittable | undefined {
    if (isSubmittable(textOrConfig)) return submitInBlock(this.target, textOrConfig)
    const cb = typeof valuesOrCallback === 'function' ? valuesOrCallback : callback
    const values = typeof valuesOrCallback === 'function' ? undefined : valuesOrCallback
    const text = typeof textOrConfig === 'string' ? textOrConfig : (textOrConfig as { text?: unknown } | null)?.text
    const control = typeof text === 'string' ? parseBuilderControl(text) : undefined
    // The client's own block (or a block of the code nested in it): a builder transaction another
    // client opened in it is waited for, not joined (it has its own outcome).
    const promise =
      control === undefined
        ? this.target.contextBlock().runOwn(textOrConfig as string | QueryConfig, values)
        : this.control(control)
    if (cb === undefined) return promise
    promise.then(
      (result) => cb(null, result),
      (error: Error) => cb(error),
    )
    return undefined
  }

  /** Maps a builder's transaction control onto nested blocks; resolves like pg's result of it. */
  private async control(control: BuilderControl): Promise<QueryResult> {
    switch (control.kind) {
      case 'begin':
        refuseModes(this.target, control.modes)
        await this.open(undefined)
        return emptyResult('BEGIN')
      case 'savepoint':
        await this.open(control.name)
        return emptyResult('SAVEPOINT')
      case 'commit':
        await this.closeFrom(this.beginIndex('COMMIT'), 'commit')
        return emptyResult('COMMIT')
      case 'rollback':
        await this.closeFrom(this.beginIndex('ROLLBACK'), 'rollback')
        return emptyResult('ROLLBACK')
      case 'release':
        await this.closeFrom(this.savepointIndex(control.name, 'RELEASE'), 'commit')
        return emptyResult('RELEASE')
      case 'rollback-to':
        await this.closeFrom(this.savepointIndex(control.name, 'ROLLBACK TO'), 'rollback')
        await this.open(control.name)
        return emptyResult('ROLLBACK')
    }
  }

  private async open(name: string | undefined): Promise<void> {
    // The client's own block (or a block of the code nested in it), not another client's builder
    // transaction: a second builder transaction of the block waits for the first one's turn.
    const block = await this.target.contextBlock().openBuilderBlock(builderOptions(name))
    this.opened.push({ block, name })
  }

  /** Closes the builder blocks from index `from` on, innermost first. */
  private async closeFrom(from: number, outcome: 'commit' | 'rollback'): Promise<void> {
    const entries = this.opened.splice(from)
    // Innermost first, as COMMIT / RELEASE / ROLLBACK TO end the savepoints opened after one.
    for (let i = entries.length - 1; i >= 0; i--)
      await (entries[i] as { readonly block: Block }).block.closeBuilderBlock(outcome)
  }

  /** The builder's transaction (opened by BEGIN): the first block of this client that has no savepoint name. */
  private beginIndex(command: string): number {
    const index = this.opened.findIndex((o) => o.name === undefined)
    if (index === -1) {
      throw new TransactionManagementError(
        `${command} was sent on a client of db.pool inside an atomic() block, but no transaction was begun on ` +
          'this client: nest atomic() blocks for savepoints and let the outermost block commit or roll back.',
      )
    }
    return index
  }

  private savepointIndex(name: string, command: string): number {
    for (let i = this.opened.length - 1; i >= 0; i--) if (this.opened[i]?.name === name) return i
    throw new TransactionManagementError(
      `${command} names a savepoint that was not created on this client of db.pool (${quoteName(name)}); ` +
        'nothing was sent. Create it with SAVEPOINT on the same client first.',
    )
  }

  /**
   * Does not return the connection: it belongs to the atomic() block and is returned when the block
   * ends. A builder transaction still open on this client is rolled back.
   */
  release(): void {
    if (this.opened.length === 0) return
    // Reported to nobody: the builder released its client without ending its transaction.
    this.closeFrom(0, 'rollback').then(undefined, () => undefined)
  }

  escapeIdentifier(str: string): string {
    return pg.escapeIdentifier(str)
  }

  escapeLiteral(str: string): string {
    return pg.escapeLiteral(str)
  }
}

function isSubmittable(value: unknown): value is Submittable {
  return typeof value === 'object' && value !== null && typeof (value as { submit?: unknown }).submit === 'function'
}

/** A savepoint name as the builder wrote it, for messages (library-made text, no bind values). */
function quoteName(name: string): string {
  return `"${name.replace(/"/g, '""')}"`
}

const NO_NAME_OPTIONS = new Map<string | undefined, ResolvedOptions>()

/** The options of a builder block: a savepoint, named after the builder's savepoint for diagnostics. */
function builderOptions(name: string | undefined): ResolvedOptions {
  let options = NO_NAME_OPTIONS.get(name)
  if (options === undefined) {
    options = Object.freeze({ ...DEFAULT_OPTIONS, name })
    if (NO_NAME_OPTIONS.size < 100) NO_NAME_OPTIONS.set(name, options)
  }
  return options
}

/** Refuses modes a nested block cannot honour: those of BEGIN must match the running transaction's. */
function refuseModes(block: Block, modes: TransactionModes): void {
  const have = block.tx.characteristics
  for (const key of ['isolationLevel', 'readOnly', 'deferrable'] as const) {
    const wanted = modes[key]
    if (wanted === undefined || wanted === have[key]) continue
    throw new TransactionManagementError(
      `A query builder's transaction asked for ${key} ${String(wanted)}, but it runs inside an atomic() block ` +
        `whose transaction has ${have[key] === undefined ? "the server's default" : String(have[key])}: a nested ` +
        'block cannot change it. Set it on the outermost atomic() block (or drop it from the builder), or run the ' +
        "builder's transaction outside atomic().",
    )
  }
}

/** What pg resolves for a statement that returns no rows. */
function emptyResult(command: string): QueryResult {
  return { command, rowCount: null, oid: 0, rows: [], fields: [] } as unknown as QueryResult
}
