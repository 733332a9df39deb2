/**
 * The primary + streaming standby pair of the read-replica tests (.ci/replica.sh starts it and
 * exports PG_ATOMIC_PRIMARY_URL, PG_ATOMIC_REPLICA_URL and PG_ATOMIC_REPLICA_DIR). Without those
 * variables (the embedded-PostgreSQL and PgBouncer runs of CI) the replica tests are skipped, and
 * say why.
 *
 * The pair is shared by every replica test file, and some of them change it (replay delay,
 * standby stopped): {@link setupReplicaPair} takes a session advisory lock on the pair's primary,
 * held until `close()`, so those files run one after another whatever jest's workers.
 */
import { execFile } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { promisify } from 'node:util'
import pg from 'pg'
import { recordingClient } from './recording'
import { waitUntil } from './wait'

const run = promisify(execFile)

/** The pair's URLs (of its `postgres` database) and data folder, from the environment. */
export interface ReplicaEnvironment {
  readonly primaryUrl: string
  readonly replicaUrl: string
  readonly dir: string
}

/** The pair from the environment, or `undefined` when .ci/replica.sh did not start one. */
export function replicaEnvironment(): ReplicaEnvironment | undefined {
  const primaryUrl = process.env['PG_ATOMIC_PRIMARY_URL']
  const replicaUrl = process.env['PG_ATOMIC_REPLICA_URL']
  const dir = process.env['PG_ATOMIC_REPLICA_DIR']
  if (!primaryUrl || !replicaUrl || !dir) return undefined
  return { primaryUrl, replicaUrl, dir }
}

/**
 * `describe` when the pair is there, else `describe.skip`, printing why (once per file).
 */
export function describeWithReplica(name: string, fn: () => void): void {
  if (replicaEnvironment() !== undefined) {
    describe(name, fn)
    return
  }
  process.stderr.write(
    `[pg-atomic tests] skipped "${name}": no streaming replica (PG_ATOMIC_PRIMARY_URL, PG_ATOMIC_REPLICA_URL and ` +
      'PG_ATOMIC_REPLICA_DIR are set by .ci/replica.sh, which .ci/run starts for the direct PostgreSQL run only)\n',
  )
  describe.skip(name, fn)
}

/** What a replica test file works with. */
export interface ReplicaPair {
  /** URL of the file's database on the primary. */
  readonly primaryUrl: string
  /** URL of the same database on the standby. */
  readonly replicaUrl: string
  readonly primaryPort: number
  readonly replicaPort: number
  /** A recording pool on the primary (every statement text, in order; see recording.ts). */
  readonly primaryPool: pg.Pool
  /** What `primaryPool` sent, and grouped by round trip. */
  readonly statements: string[]
  readonly batches: string[][]
  /** Direct sessions on the primary, for setup and checks. */
  readonly admin: pg.Pool
  /** Direct sessions on the standby, for checks. */
  readonly standbyAdmin: pg.Pool
  /** Clears `statements` and `batches`. */
  reset(): void
  /** `recovery_min_apply_delay` on the standby (ALTER SYSTEM, reloaded); 0 removes it. */
  setApplyDelay(ms: number): Promise<void>
  /** Waits until the standby has replayed everything the primary has written so far. */
  waitForReplay(timeoutMs?: number): Promise<void>
  /** Stops the standby (fast shutdown): a replica that is down. */
  stopStandby(): Promise<void>
  /** Starts it again (unless it runs) and waits until it streams. */
  startStandby(): Promise<void>
  /** Restores the standby (running, no delay), drops the database, releases the pair. */
  close(): Promise<void>
}

/** Same key in every file: one replica file at a time on the pair. */
const PAIR_LOCK = 'select pg_advisory_lock(hashtext($1))'
const PAIR_LOCK_KEY = 'pg-atomic replica pair'

function asPostgres(args: readonly string[]): Promise<{ stdout: string; stderr: string }> {
  const [command, ...rest] = args as [string, ...string[]]
  if (process.getuid?.() === 0) return run('runuser', ['-u', 'postgres', '--', command, ...rest])
  return run(command, rest)
}

const PG_BIN = process.env['PG_BIN'] ?? '/usr/lib/postgresql/15/bin'

/**
 * Creates the file's database on the pair's primary (after taking the pair's lock), waits until
 * the standby has it, and returns the pair.
 */
export async function setupReplicaPair(label: string): Promise<ReplicaPair> {
  const env = replicaEnvironment()
  if (env === undefined) throw new Error('no replica pair: run .ci/replica.sh start DIR and export its variables')
  const lock = new pg.Client({ connectionString: env.primaryUrl, application_name: `pga-replica-lock-${label}` })
  await lock.connect()
  await lock.query(PAIR_LOCK, [PAIR_LOCK_KEY])
  const name = `pga_replica_${label.toLowerCase().replace(/[^a-z0-9_]/g, '_')}_${randomBytes(4).toString('hex')}`
  await lock.query(`create database ${pg.escapeIdentifier(name)}`)
  const on = (base: string): string => {
    const url = new URL(base)
    url.pathname = `/${name}`
    return url.toString()
  }
  const primaryUrl = on(env.primaryUrl)
  const replicaUrl = on(env.replicaUrl)
  const standbyServer = new pg.Pool({ connectionString: env.replicaUrl, max: 2 })
  const admin = new pg.Pool({ connectionString: primaryUrl, max: 3 })
  const statements: string[] = []
  const batches: string[][] = []
  const primaryPool = new pg.Pool({
    connectionString: primaryUrl,
    max: 5,
    Client: recordingClient(statements, (batch) => {
      if (batch.length > 0) batches.push(batch)
    }),
  })
  // Stopping the standby terminates the idle sessions of the pools on it (57P01), which pg-pool
  // re-emits as 'error' on the pool; the tests observe such failures through the library.
  const ignoreIdleErrors = (pool: pg.Pool): pg.Pool => pool.on('error', () => undefined)
  for (const pool of [standbyServer, admin, primaryPool]) ignoreIdleErrors(pool)
  let standbyAdmin: pg.Pool | undefined
  const pair: ReplicaPair = {
    primaryUrl,
    replicaUrl,
    primaryPort: Number(new URL(env.primaryUrl).port),
    replicaPort: Number(new URL(env.replicaUrl).port),
    primaryPool,
    statements,
    batches,
    admin,
    get standbyAdmin(): pg.Pool {
      standbyAdmin ??= ignoreIdleErrors(new pg.Pool({ connectionString: replicaUrl, max: 2 }))
      return standbyAdmin
    },
    reset() {
      statements.length = 0
      batches.length = 0
    },
    async setApplyDelay(ms: number) {
      await standbyServer.query(
        ms === 0
          ? 'alter system reset recovery_min_apply_delay'
          : `alter system set recovery_min_apply_delay = '${Math.floor(ms)}ms'`,
      )
      await standbyServer.query('select pg_reload_conf()')
      const expected = `${Math.floor(ms)}ms`
      await waitUntil(async () => {
        const { rows } = await standbyServer.query<{ v: string }>(
          "select setting || coalesce(nullif(unit, ''), '') as v from pg_settings " +
            "where name = 'recovery_min_apply_delay'",
        )
        return rows[0]?.v === expected
      }, `recovery_min_apply_delay = ${expected} on the standby`)
    },
    async waitForReplay(timeoutMs = 20_000) {
      const { rows } = await admin.query<{ lsn: string }>('select pg_current_wal_insert_lsn()::text as lsn')
      const target = rows[0]?.lsn as string
      await waitUntil(
        async () => {
          const r = await standbyServer.query<{ ok: boolean }>('select pg_last_wal_replay_lsn() >= $1::pg_lsn as ok', [
            target,
          ])
          return r.rows[0]?.ok === true
        },
        `the standby to replay up to ${target}`,
        timeoutMs,
      )
    },
    async stopStandby() {
      await asPostgres([`${PG_BIN}/pg_ctl`, '-D', `${env.dir}/standby`, '-m', 'fast', '-w', '-t', '60', 'stop'])
    },
    async startStandby() {
      if (await standbyRunning(env.dir)) return
      await asPostgres([
        `${PG_BIN}/pg_ctl`,
        '-D',
        `${env.dir}/standby`,
        '-l',
        `${env.dir}/standby.log`,
        '-w',
        '-t',
        '60',
        'start',
      ])
      await waitUntil(
        async () => {
          try {
            const r = await lock.query<{ state: string }>('select state from pg_stat_replication')
            return r.rows[0]?.state === 'streaming'
          } catch {
            return false
          }
        },
        'the restarted standby to stream',
        30_000,
      )
    },
    async close() {
      try {
        await pair.startStandby()
        await pair.setApplyDelay(0)
        await standbyAdmin?.end()
        await primaryPool.end()
        await admin.end()
        await standbyServer.end()
        await lock.query(`drop database if exists ${pg.escapeIdentifier(name)} with (force)`)
      } finally {
        await lock.end()
      }
    },
  }
  try {
    // The standby has the database once it has replayed its creation.
    await pair.waitForReplay()
  } catch (error) {
    // Never leave the pair locked (jest workers outlive their files): the next file would wait forever.
    await pair.close().catch((closeError: unknown) => process.stderr.write(`closing the pair: ${String(closeError)}\n`))
    throw error
  }
  return pair
}

async function standbyRunning(dir: string): Promise<boolean> {
  try {
    await asPostgres([`${PG_BIN}/pg_ctl`, '-D', `${dir}/standby`, 'status'])
    return true
  } catch {
    return false
  }
}

/** Which server answered: its port and whether it is a standby. */
export interface ServerIdentity {
  readonly port: number
  readonly standby: boolean
}

/** The statement that says which server runs it. */
export const WHO = 'select inet_server_port() as port, pg_is_in_recovery() as standby'

/** The read the read-your-writes tests make: the ids of `items`, and whether a standby answered. */
export const ITEMS_READ = 'select array(select id from items order by id) as ids, pg_is_in_recovery() as standby'

/** A row of {@link ITEMS_READ}. */
export interface ItemsRead {
  ids: number[]
  standby: boolean
}

/** {@link setupReplicaPair} with the table `items (id int primary key)`, replayed on the standby. */
export async function setupItemsPair(label: string): Promise<ReplicaPair> {
  const pair = await setupReplicaPair(label)
  await pair.admin.query('create table items (id int primary key)')
  await pair.waitForReplay()
  return pair
}
