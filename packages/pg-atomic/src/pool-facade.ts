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
import { TransactionManagementError } from './errors'

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
    if (block !== undefined) return new BlockClient(block) as unknown as PoolClient
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
      db.returnIfIdle(
        client,
        release,
        (status) =>
          `A connection obtained from the pool of database '${db.alias}' was released ` +
          `inside a transaction (status '${status}'); it was destroyed instead of being ` +
          `returned, which rolled the transaction back. Commit or roll back before ` +
          `release(), or use atomic().`,
      )
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
 * (queued, doom-checked, transaction control refused); `release()` does not return the connection.
 * @internal
 */
class BlockClient extends EventEmitter {
  private readonly block: Block

  constructor(block: Block) {
    super()
    this.block = block
  }

  query(
    textOrConfig: string | QueryConfig,
    valuesOrCallback?: readonly unknown[] | QueryCallback,
    callback?: QueryCallback,
  ): Promise<QueryResult> | undefined {
    const cb = typeof valuesOrCallback === 'function' ? valuesOrCallback : callback
    const values = typeof valuesOrCallback === 'function' ? undefined : valuesOrCallback
    if (
      typeof textOrConfig === 'object' &&
      textOrConfig !== null &&
      typeof (textOrConfig as { submit?: unknown }).submit === 'function'
    ) {
      const error = new TransactionManagementError(
        'Submittable queries (cursors, streams) cannot be passed to a client obtained ' +
          'from db.pool inside an atomic() block; use db.cursor() instead.',
      )
      if (cb !== undefined) {
        cb(error)
        return undefined
      }
      return Promise.reject(error)
    }
    const promise = this.block.query(textOrConfig as string, values)
    if (cb === undefined) return promise
    promise.then(
      (result) => cb(null, result),
      (error: Error) => cb(error),
    )
    return undefined
  }

  /** Does nothing: the connection belongs to the atomic() block and is returned when it ends. */
  release(): void {}

  escapeIdentifier(str: string): string {
    return pg.escapeIdentifier(str)
  }

  escapeLiteral(str: string): string {
    return pg.escapeLiteral(str)
  }
}
