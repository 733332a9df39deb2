import pg from 'pg'
import { createDatabase } from 'pg-atomic'
import type { Database, DatabaseConfig } from 'pg-atomic'
import { assertPoolIdle, createTestDatabase, poolerUrl } from './database'
import { recordingClient } from './recording'
import type { TestDatabase } from './database'

/**
 * Everything one test file needs: its own database, a pg-atomic database registered on a pool
 * whose clients record every statement text sent and count ReadyForQuery messages (round trips),
 * and a separate plain pool to inspect results.
 */
export interface Harness {
  readonly testDb: TestDatabase
  /** The pg-atomic database (registered under `alias`). */
  readonly db: Database
  /** The underlying recorded pool. */
  readonly pool: pg.Pool
  /** A plain pool for setup and verification (not recorded; always a direct connection, never through a pooler). */
  readonly admin: pg.Pool
  /** Statement texts sent through the recorded pool since the last `reset()`, in order (see recording.ts). */
  readonly statements: string[]
  /** ReadyForQuery messages received by the recorded pool since the last `reset()`. */
  roundTrips(): number
  /**
   * The statements of {@link Harness.statements} grouped by the round trip that carried them (one
   * group per ReadyForQuery that answered at least one statement), since the last `reset()`:
   * `[['BEGIN', 'select 1'], ['COMMIT']]`. Meaningful when one connection is used at a time.
   */
  readonly batches: string[][]
  /** Clears the statement log and round-trip count. */
  reset(): void
  /** Runs SQL on the admin pool and returns the rows. */
  rows<R extends pg.QueryResultRow = pg.QueryResultRow>(sql: string, values?: unknown[]): Promise<R[]>
  /** Values of the first column of `sql`, in order. */
  column<V = unknown>(sql: string, values?: unknown[]): Promise<V[]>
  /** Asserts the pool is idle, closes everything and drops the database (leak checks included). */
  close(): Promise<void>
}

export interface HarnessOptions extends Omit<DatabaseConfig, 'pool'> {
  /** Size of the recorded pool. Default 5. */
  max?: number
}

export async function setupHarness(label: string, options: HarnessOptions = {}): Promise<Harness> {
  const testDb = await createTestDatabase(label)
  const statements: string[] = []
  let rfq = 0
  const batches: string[][] = []
  const RecordingClient = recordingClient(statements, (batch) => {
    rfq++
    if (batch.length > 0) batches.push(batch)
  })
  const { max, ...config } = options
  const pool = new pg.Pool({
    connectionString: testDb.url,
    max: max ?? 5,
    Client: RecordingClient,
  })
  // Through a transaction-mode pooler (PG_ATOMIC_TEST_POOLER_URL), databases declare it by default,
  // so session-level features are refused as they would be in production.
  const db = createDatabase({ ...(poolerUrl() === undefined ? {} : { transactionPooling: true }), ...config, pool })
  const admin = new pg.Pool({ connectionString: testDb.directUrl, max: 3 })
  // pool.end() resolves before its sockets are closed; DROP DATABASE ... WITH (FORCE) may then
  // terminate one (57P01), which pg-pool re-emits as 'error' on the pool. Tests that expect
  // connection errors observe them through the library, not through these listeners.
  const poolErrors: Error[] = []
  for (const p of [pool, admin]) p.on('error', (error) => poolErrors.push(error))
  return {
    testDb,
    db,
    pool,
    admin,
    statements,
    batches,
    roundTrips: () => rfq,
    reset() {
      statements.length = 0
      batches.length = 0
      rfq = 0
    },
    async rows<R extends pg.QueryResultRow>(sql: string, values?: unknown[]) {
      return (await admin.query<R>(sql, values)).rows
    },
    async column<V>(sql: string, values?: unknown[]) {
      const result = await admin.query({ text: sql, values, rowMode: 'array' })
      return result.rows.map((r: unknown[]) => r[0] as V)
    },
    async close() {
      try {
        assertPoolIdle(pool)
      } finally {
        await db.close()
        await pool.end()
        await admin.end()
      }
      await testDb.drop()
    },
  }
}

/**
 * `true` in CI's PgBouncer run (`PG_ATOMIC_TEST_POOLER_URL` set): the recorded pool and `db` reach
 * PostgreSQL through a transaction-mode pooler, while `admin` stays direct.
 */
export const THROUGH_POOLER = poolerUrl() !== undefined

/**
 * `test` for a test that cannot work through a transaction-mode pooler by design (it identifies a
 * server backend by pg's `processID`, which through PgBouncer is the bouncer's cancel key, or it
 * needs the client to notice an idle server connection dying, which PgBouncer hides). Skipped in
 * the pooler run only; every use says why in a comment.
 */
export const testDirect: typeof test = THROUGH_POOLER ? test.skip : test

/** Re-exported for the test files that import it from here; defined in ./errors. */
export { rejection } from './errors'
