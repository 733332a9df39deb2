import { randomBytes } from 'node:crypto'
import { Client, escapeIdentifier, type Pool } from 'pg'

/** A fresh database for one test file (or one test). */
export interface TestDatabase {
  /**
   * Connection URL for the new database. It carries an `application_name`
   * unique to this database, so every session opened with it can be found in
   * `pg_stat_activity`. When `PG_ATOMIC_TEST_POOLER_URL` is set (CI's PgBouncer
   * run), it points at the pooler: same database name and `application_name`,
   * the pooler's host, port and credentials.
   */
  url: string
  /**
   * The same database reached directly (never through a pooler), with the same
   * `application_name`: for setup and verification sessions that must not
   * share the pooler's server connections. Equal to `url` without a pooler.
   */
  directUrl: string
  /** The database name, `pga_<label>_<hex>`. */
  name: string
  /** The `application_name` set in {@link TestDatabase.url}. */
  applicationName: string
  /**
   * Checks that nothing leaked, then drops the database with `WITH (FORCE)`.
   * Throws, without dropping, when a session of this database is still
   * `idle in transaction` or an advisory lock is still held in it; it may be
   * called again after the cause is fixed. A no-op once it has succeeded.
   */
  drop(): Promise<void>
}

/** How long drop() lets sessions that are just disconnecting go away. */
const SETTLE_MS = 1_000

/**
 * The superuser URL published by globalSetup.
 *
 * @returns the value of `PG_ATOMIC_TEST_ADMIN_URL`.
 */
export function adminUrl(): string {
  const url = process.env['PG_ATOMIC_TEST_ADMIN_URL']
  if (!url) {
    throw new Error(
      'PG_ATOMIC_TEST_ADMIN_URL is not set: run the tests through jest (its globalSetup provides a PostgreSQL server)',
    )
  }
  return url
}

/** Environment variable naming a transaction-mode pooler (PgBouncer) in front of the test server. */
export const POOLER_URL_ENV = 'PG_ATOMIC_TEST_POOLER_URL'

/**
 * The pooler URL when the tests run through a transaction-mode pooler
 * (`PG_ATOMIC_TEST_POOLER_URL`, e.g. `postgres://postgres@127.0.0.1:6432`;
 * its path is ignored: every test database is reached through it by name).
 *
 * @returns the URL, or `undefined` when tests connect directly.
 */
export function poolerUrl(): string | undefined {
  return process.env[POOLER_URL_ENV] || undefined
}

/** Builds the URL of database `name` on the server (or pooler) of `base`. */
function databaseUrl(base: string, name: string, applicationName: string): string {
  const url = new URL(base)
  url.pathname = `/${encodeURIComponent(name)}`
  url.searchParams.set('application_name', applicationName)
  return url.toString()
}

/**
 * Creates a fresh, empty database `pga_<label>_<random hex>`.
 *
 * @param label - any text; lower-cased and reduced to `[a-z0-9_]`.
 * @returns the database's URL (with a unique `application_name`) and `drop()`.
 */
export async function createTestDatabase(label: string): Promise<TestDatabase> {
  const admin = adminUrl()
  const suffix = randomBytes(6).toString('hex')
  const sanitized =
    label
      .toLowerCase()
      .replace(/[^a-z0-9]+/g, '_')
      .replace(/^_+|_+$/g, '')
      .slice(0, 32) || 'db'
  const name = `pga_${sanitized}_${suffix}`
  const applicationName = `pga_test_${suffix}`

  await withAdmin(admin, (client) => client.query(`CREATE DATABASE ${escapeIdentifier(name)}`))

  // CREATE/DROP DATABASE always go to the server directly; only `url` goes through the pooler.
  const directUrl = databaseUrl(admin, name, applicationName)
  const pooler = poolerUrl()
  const url = pooler === undefined ? directUrl : databaseUrl(pooler, name, applicationName)

  let dropped = false
  const drop = async (): Promise<void> => {
    if (dropped) return
    await withAdmin(admin, async (client) => {
      const deadline = Date.now() + SETTLE_MS
      let problems = await findLeaks(client, name, applicationName)
      while (problems.length > 0 && Date.now() < deadline) {
        await new Promise((resolve) => setTimeout(resolve, 50))
        problems = await findLeaks(client, name, applicationName)
      }
      if (problems.length > 0) {
        throw new Error(
          `Test database ${name} (application_name ${applicationName}) was left dirty:\n  - ${problems.join('\n  - ')}`,
        )
      }
      await client.query(`DROP DATABASE IF EXISTS ${escapeIdentifier(name)} WITH (FORCE)`)
    })
    dropped = true
  }

  return { url, directUrl, name, applicationName, drop }
}

/**
 * Throws unless every client of `pool` is idle (none checked out) and nobody
 * is waiting for one.
 *
 * @param pool - a node-postgres pool.
 */
export function assertPoolIdle(pool: Pool): void {
  const { totalCount, idleCount, waitingCount } = pool
  if (totalCount !== idleCount || waitingCount !== 0) {
    throw new Error(
      `pg.Pool is not idle: ${totalCount - idleCount} client(s) checked out ` +
        `(total ${totalCount}, idle ${idleCount}), ${waitingCount} waiting`,
    )
  }
}

async function withAdmin<T>(url: string, fn: (client: Client) => Promise<T>): Promise<T> {
  const client = new Client({ connectionString: url, application_name: 'pga_test_admin' })
  await client.connect()
  try {
    return await fn(client)
  } finally {
    await client.end()
  }
}

interface StuckSession {
  pid: number
  state: string
  xact_age: string | null
  query: string
}

interface AdvisoryLock {
  pid: number | null
  application_name: string | null
  mode: string
  granted: boolean
  key: string
}

async function findLeaks(client: Client, database: string, applicationName: string): Promise<string[]> {
  const sessions = await client.query<StuckSession>(
    `SELECT pid, state, (now() - xact_start)::text AS xact_age, left(query, 200) AS query
       FROM pg_stat_activity
      WHERE application_name = $1 AND state LIKE 'idle in transaction%'
      ORDER BY pid`,
    [applicationName],
  )
  const locks = await client.query<AdvisoryLock>(
    `SELECT l.pid, a.application_name, l.mode, l.granted,
            concat_ws(':', l.classid, l.objid, l.objsubid) AS key
       FROM pg_locks l
       LEFT JOIN pg_stat_activity a ON a.pid = l.pid
      WHERE l.locktype = 'advisory'
        AND l.database = (SELECT oid FROM pg_database WHERE datname = $1)
      ORDER BY l.pid`,
    [database],
  )
  return [
    ...sessions.rows.map(
      (s) =>
        `session pid ${s.pid} (application_name ${applicationName}) is '${s.state}'` +
        ` (transaction open for ${s.xact_age ?? '?'}), last query: ${s.query}`,
    ),
    ...locks.rows.map(
      (l) =>
        `advisory lock ${l.key} (${l.mode}, ${l.granted ? 'granted' : 'waiting'}) ` +
        `held by pid ${l.pid ?? '?'} (application_name ${l.application_name ?? '?'})`,
    ),
  ]
}
