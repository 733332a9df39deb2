import pg from 'pg'
import { createDatabase } from 'pg-atomic'
import type { Database } from 'pg-atomic'
import { THROUGH_POOLER } from './harness'
import { recordingClient } from './recording'
import type { Harness } from './harness'

/** Polls `condition` every 20 ms until it is true; throws after `timeoutMs` (no timing assertion). */
export async function waitFor(condition: () => Promise<boolean>, what: string, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    if (await condition()) return
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
}

/**
 * A second, plain session on the test database (not recorded, not pg-atomic). Its `lock_timeout`
 * is bounded so that a test can never hang on it. It connects directly, never through a pooler: its
 * session-level SET would otherwise stay on a server connection that pg-atomic's transactions get
 * next (PgBouncer in transaction mode shares them).
 */
export async function openSession(h: Harness): Promise<pg.Client> {
  const client = new pg.Client({ connectionString: h.testDb.directUrl })
  await client.connect()
  await client.query("SET lock_timeout = '10s'")
  return client
}

/** Number of lock requests of the test database that are waiting (not granted), optionally of one `locktype`. */
export async function waitingLocks(h: Harness, locktype?: string): Promise<number> {
  const [count] = await h.column<number>(
    `select count(*)::int from pg_locks l
      where not l.granted and l.pid <> pg_backend_pid()
        and ($1::text is null or l.locktype = $1)
        and l.pid in (select pid from pg_stat_activity where datname = current_database())`,
    [locktype ?? null],
  )
  return count ?? 0
}

/** Waits until at least `n` lock requests of the test database are waiting. */
export function waitForWaiters(h: Harness, n = 1, locktype?: string): Promise<void> {
  return waitFor(
    async () => (await waitingLocks(h, locktype)) >= n,
    `${n} waiting lock request(s)${locktype === undefined ? '' : ` of type ${locktype}`}`,
  )
}

/** Table locks other sessions hold on `table` (mode names from pg_locks), granted only. */
export async function heldTableModes(h: Harness, table: string): Promise<string[]> {
  return h.column<string>(
    `select l.mode from pg_locks l
      where l.locktype = 'relation' and l.granted and l.relation = $1::regclass and l.pid <> pg_backend_pid()
        and l.database = (select oid from pg_database where datname = current_database())
      order by l.mode`,
    [table],
  )
}

/** A second pg-atomic database on the test database, under its own alias, recording the statements it sends. */
export interface RecordedDatabase {
  readonly db: Database
  /** Statement texts sent through its pool, in order. */
  readonly statements: string[]
  close(): Promise<void>
}

/** Registers a pg-atomic database under `alias` on its own (recorded) pool of the test database. */
export function recordedDatabase(h: Harness, alias: string): RecordedDatabase {
  const statements: string[] = []
  const RecordingClient = recordingClient(statements)
  const pool = new pg.Pool({
    connectionString: h.testDb.url,
    max: 2,
    Client: RecordingClient,
  })
  const db = createDatabase({ alias, pool, ...(THROUGH_POOLER ? { transactionPooling: true } : {}) })
  return {
    db,
    statements,
    async close() {
      await db.close()
      await pool.end()
    },
  }
}
