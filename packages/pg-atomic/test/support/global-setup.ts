import { Client } from 'pg'

// Imported from source (not the packages' dist) so tests need no build; jest's globalSetup does not
// apply moduleNameMapper. The server is the one applications get from pg-atomic/testing.
import { startTestcontainers } from '../../../devdb/src/testcontainers'
import { startTestServer } from '../../src/testing/server'

interface DevDatabase {
  url: string
  source: string
  stop(): Promise<void>
}

/** The URL without its password, for printing. */
function redactUrl(url: string): string {
  try {
    const parsed = new URL(url)
    if (parsed.password !== '') parsed.password = '***'
    return parsed.toString()
  } catch {
    return url
  }
}

/** The environment's server, Testcontainers when PG_ATOMIC_TESTCONTAINERS=1, else an embedded one. */
async function startDatabase(options: { log?: (line: string) => void }): Promise<DevDatabase> {
  const log = options.log ?? (() => {})
  const named = ['DATABASE_URL', 'PGHOST', 'PGDATABASE', 'PGPORT'].some((name) => (process.env[name] ?? '') !== '')
  if (!named && process.env['PG_ATOMIC_TESTCONTAINERS'] === '1') {
    const image = process.env['PG_ATOMIC_PG_IMAGE'] || 'postgres:17-alpine'
    return { ...(await startTestcontainers(image, log)), source: 'testcontainers' }
  }
  return startTestServer({ log })
}

declare global {
  /** The server started by globalSetup, stopped by globalTeardown. */
  var __pgAtomicDevDatabase: DevDatabase | undefined
}

/** Environment variable through which test workers receive the superuser URL. */
export const ADMIN_URL_ENV = 'PG_ATOMIC_TEST_ADMIN_URL'

/**
 * Jest globalSetup: finds or starts one PostgreSQL server for the run (see
 * `startTestServer` in pg-atomic/testing) and publishes its superuser URL in
 * `process.env.PG_ATOMIC_TEST_ADMIN_URL`, which the workers inherit.
 * Set `PG_ATOMIC_DEVDB_VERBOSE=1` to see the server's own log.
 */
export default async function globalSetup(): Promise<void> {
  const verbose = process.env['PG_ATOMIC_DEVDB_VERBOSE'] === '1'
  const database = await startDatabase({
    log: verbose ? (line) => process.stderr.write(`${line}\n`) : undefined,
  })
  globalThis.__pgAtomicDevDatabase = database
  process.env[ADMIN_URL_ENV] = database.url

  let version: string
  const client = new Client({ connectionString: database.url })
  try {
    await client.connect()
    const { rows } = await client.query<{ server_version: string }>('SHOW server_version')
    version = rows[0]?.server_version ?? 'unknown'
  } catch (error) {
    globalThis.__pgAtomicDevDatabase = undefined
    await database.stop()
    throw new Error(
      `Cannot connect to the test PostgreSQL (source: ${database.source}, ${redactUrl(database.url)}): ` +
        String(error),
    )
  } finally {
    await client.end().catch(() => {})
  }
  // stderr, so `jest --json` on stdout stays parseable.
  process.stderr.write(
    `\n[pg-atomic tests] PostgreSQL ${version} (source: ${database.source}) at ${redactUrl(database.url)}\n`,
  )
}
