/**
 * The replicas of a database: their pools, their health (down, lag, replayed WAL position), and
 * the checkout of a connection for a read that should go to a replica.
 *
 * 1. Replicas are tried round robin. One that failed (connecting or checking it) is skipped for
 *    `checkIntervalMs`, then tried again by one read at a time (the others skip it meanwhile); one
 *    whose replay lags more than `maxLagMs`, or that is not a standby, or whose WAL receiver is not
 *    streaming from the primary (its lag would read 0), is skipped. Each skip is an event on the replica channel.
 * 2. Health is checked on the connection the read then uses (no background timer, nothing keeps
 *    the process alive): when the last check is older than `checkIntervalMs`, or when the read's
 *    context needs a WAL position past the replay position last seen (read your writes).
 * 3. A replica that is healthy but has not replayed the context's last commit is not used; the
 *    read waits up to `waitForReplayMs` for one to catch up, else goes to the primary.
 * 4. No replica usable: the primary (event `'fallback'`), or `ReplicaUnavailableError` with
 *    `whenUnavailable: 'fail'`.
 *
 * @module
 * @internal
 */
import pg from 'pg'
import type { Pool, PoolClient } from 'pg'
import { ReplicaUnavailableError } from '../errors'
import { replicaChannel } from '../events'
import type { ReplicaEventReason } from '../events'
import type { AtomicLogger, ResolvedReplica, ResolvedReplicaOptions } from '../options'
import { REPLICA_CHECK_QUERY } from '../sql/replicas'
import { parseLsn } from './lsn'

/** How often a read that waits for a replica to replay its context's last commit looks again, in ms. */
const REPLAY_POLL_MS = 20

type SkipReason = Exclude<ReplicaEventReason, 'no-replica'>

/** One replica and what is known of it. */
class Replica {
  /** When it was last checked successfully (ms, `Date.now()`), or `-Infinity`. */
  checkedAt = Number.NEGATIVE_INFINITY
  replayLsn: bigint | undefined = undefined
  lagMs: number | undefined = undefined
  standby = true
  /** Whether its WAL receiver was streaming from the primary. */
  streaming = true
  /** When connecting or checking it last failed, if it has not worked since. */
  failedAt: number | undefined = undefined
  /** A read is trying it again after it failed: the others skip it meanwhile, as down. */
  probing = false

  constructor(
    readonly pool: Pool,
    readonly label: string,
    readonly owned: boolean,
  ) {}
}

/** What a checkout found: a replica's connection, or why the primary must serve the read. @internal */
export type ReplicaCheckout =
  | { readonly kind: 'replica'; readonly client: PoolClient; readonly replica: string; readonly pool: Pool }
  | { readonly kind: 'primary'; readonly why: 'behind' | 'no-replica' }

/** The replicas of one database. @internal */
export class ReplicaSet {
  private readonly replicas: readonly Replica[]
  private next = 0

  constructor(
    private readonly alias: string,
    sources: readonly ResolvedReplica[],
    private readonly options: ResolvedReplicaOptions,
    logger: AtomicLogger,
  ) {
    this.replicas = sources.map((source) => {
      if ('pool' in source) return new Replica(source.pool, describePool(source.pool), false)
      const pool = new pg.Pool(source.poolConfig)
      const replica = new Replica(pool, describePool(pool), true)
      // An idle client whose backend dies (a replica restarting) is removed by pg-pool, which then
      // emits 'error' on the pool; without a listener that would crash the process.
      pool.on('error', (error) => {
        if (pool.listenerCount('error') === 1)
          logger.error(
            `An idle connection to replica ${replica.label} of database '${alias}' failed and was removed ` +
              'from its pool; the error is attached.',
            error,
          )
      })
      return replica
    })
  }

  /**
   * A connection of a usable replica that has replayed `required` (the context's last commit), or
   * why the primary serves the read instead. Throws `ReplicaUnavailableError` when no replica is
   * usable and `whenUnavailable` is `'fail'`.
   */
  async checkout(required: bigint | undefined): Promise<ReplicaCheckout> {
    const deadline = Date.now() + this.options.waitForReplayMs
    // While the read waits for replay (polling every REPLAY_POLL_MS), a replica skipped for the same
    // reason again, without a new error, is not published again: one event per change.
    let published: Map<Replica, SkipReason> | undefined
    for (;;) {
      const skipped: Record<string, SkipReason> = {}
      let lastError: unknown
      let behind = false
      const start = this.next++ % this.replicas.length
      for (let i = 0; i < this.replicas.length; i++) {
        const replica = this.replicas[(start + i) % this.replicas.length] as Replica
        const found = await this.tryReplica(replica, required)
        if (found.kind === 'use')
          return { kind: 'replica', client: found.client, replica: replica.label, pool: replica.pool }
        if (found.kind === 'behind') {
          behind = true
          continue
        }
        skipped[replica.label] = found.reason
        if (found.error !== undefined) lastError = found.error
        if (found.error !== undefined || published?.get(replica) !== found.reason) {
          this.publish('skipped', found.reason, replica, found.error)
          published ??= new Map()
          published.set(replica, found.reason)
        }
      }
      if (behind) {
        // Healthy, but not yet at the context's last commit: wait for replay, within the bound.
        const left = deadline - Date.now()
        if (left > 0) {
          await sleep(Math.min(REPLAY_POLL_MS, left))
          continue
        }
        return { kind: 'primary', why: 'behind' }
      }
      if (this.options.whenUnavailable === 'fail') {
        const reasons = Object.entries(skipped)
          .map(([label, reason]) => `${label}: ${reason}`)
          .join(', ')
        throw new ReplicaUnavailableError(
          `No replica of database '${this.alias}' can serve this read (${reasons}), and replicaOptions.` +
            "whenUnavailable is 'fail'. Nothing was sent. Bring a replica back, raise maxLagMs, or let the " +
            "primary serve such reads with whenUnavailable: 'primary'.",
          { database: this.alias, skipped: Object.freeze(skipped) },
          lastError === undefined ? undefined : { cause: lastError },
        )
      }
      this.publish('fallback', 'no-replica', undefined, undefined)
      return { kind: 'primary', why: 'no-replica' }
    }
  }

  private async tryReplica(
    replica: Replica,
    required: bigint | undefined,
  ): Promise<
    { kind: 'use'; client: PoolClient } | { kind: 'behind' } | { kind: 'skip'; reason: SkipReason; error: unknown }
  > {
    const now = Date.now()
    if (replica.failedAt !== undefined) {
      // Down: skipped for checkIntervalMs, then tried again by one read at a time (a connect to a
      // host that drops packets can take connectionTimeoutMillis; the other reads must not all wait).
      if (replica.probing || now - replica.failedAt < this.options.checkIntervalMs)
        return { kind: 'skip', reason: 'down', error: undefined }
      replica.probing = true
      try {
        return await this.connectAndCheck(replica, required, now)
      } finally {
        replica.probing = false
      }
    }
    return this.connectAndCheck(replica, required, now)
  }

  private async connectAndCheck(
    replica: Replica,
    required: bigint | undefined,
    now: number,
  ): Promise<
    { kind: 'use'; client: PoolClient } | { kind: 'behind' } | { kind: 'skip'; reason: SkipReason; error: unknown }
  > {
    const fresh = now - replica.checkedAt < this.options.checkIntervalMs
    const replayed = required === undefined || (replica.replayLsn !== undefined && replica.replayLsn >= required)
    // What is known, and fresh, already rules it out: no connection needed.
    if (fresh && !replica.standby) return { kind: 'skip', reason: 'not-standby', error: undefined }
    if (fresh && !replica.streaming) return { kind: 'skip', reason: 'not-streaming', error: undefined }
    if (fresh && (replica.lagMs ?? 0) > this.options.maxLagMs)
      return { kind: 'skip', reason: 'lagging', error: undefined }
    let client: PoolClient
    try {
      client = await replica.pool.connect()
    } catch (error) {
      replica.failedAt = Date.now()
      return { kind: 'skip', reason: 'down', error }
    }
    if (!fresh || !replayed) {
      try {
        const { rows } = await client.query<{
          standby: boolean
          streaming: boolean
          replay: string | null
          lag_ms: number
        }>(REPLICA_CHECK_QUERY)
        const row = rows[0]
        replica.standby = row?.standby === true
        replica.streaming = row?.streaming === true
        replica.replayLsn = parseLsn(row?.replay)
        replica.lagMs = row?.lag_ms ?? undefined
        replica.checkedAt = Date.now()
        replica.failedAt = undefined
      } catch (error) {
        client.release(error instanceof Error ? error : true)
        replica.failedAt = Date.now()
        return { kind: 'skip', reason: 'down', error }
      }
    }
    if (!replica.standby) {
      client.release()
      return { kind: 'skip', reason: 'not-standby', error: undefined }
    }
    if (!replica.streaming) {
      client.release()
      return { kind: 'skip', reason: 'not-streaming', error: undefined }
    }
    if ((replica.lagMs ?? 0) > this.options.maxLagMs) {
      client.release()
      return { kind: 'skip', reason: 'lagging', error: undefined }
    }
    // Replay only moves forward: a replica that has replayed the commit before the read's snapshot
    // is taken shows it to the read.
    if (required !== undefined && (replica.replayLsn === undefined || replica.replayLsn < required)) {
      client.release()
      return { kind: 'behind' }
    }
    return { kind: 'use', client }
  }

  private publish(
    kind: 'skipped' | 'fallback',
    reason: ReplicaEventReason,
    replica: Replica | undefined,
    error: unknown,
  ): void {
    if (!replicaChannel.hasSubscribers) return
    replicaChannel.publish({
      kind,
      reason,
      database: this.alias,
      replica: replica?.label,
      lagMs: replica?.lagMs,
      error,
    })
  }

  /** Ends the pools pg-atomic created. */
  async end(): Promise<void> {
    await Promise.all(this.replicas.filter((r) => r.owned).map((r) => r.pool.end()))
  }
}

/** `host:port/database` of a pool, without user or password. */
function describePool(pool: Pool): string {
  const o = pool.options as Pool['options'] & { connectionString?: string }
  let host = o.host
  let port: string | number | undefined = o.port
  let database = o.database
  if (o.connectionString !== undefined) {
    try {
      const url = new URL(o.connectionString)
      host ??= decodeURIComponent(url.hostname) || undefined
      port ??= url.port || undefined
      database ??= decodeURIComponent(url.pathname.slice(1)) || undefined
    } catch {
      // Not a URL (a key=value string): the label stays partial.
    }
  }
  return `${host ?? 'localhost'}:${port ?? 5432}/${database ?? ''}`
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms))
}
