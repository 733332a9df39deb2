import { userInfo } from 'node:os'

/** A connection URL found in the environment, and which variables gave it. */
export interface EnvDatabase {
  /** The connection URL. */
  url: string
  /** Human-readable origin, e.g. `DATABASE_URL` or `PG* variables`. */
  from: string
}

/**
 * `PGSSLMODE` values node-postgres understands in a URL (it cannot fall back from TLS to plain, so
 * `allow`/`prefer` are dropped).
 */
const PASSED_SSL_MODES = new Set(['disable', 'require', 'verify-ca', 'verify-full', 'no-verify'])

/**
 * Reads `DATABASE_URL`, or else builds a URL from the libpq `PG*` variables
 * when at least one of `PGHOST`, `PGDATABASE` or `PGPORT` is set.
 *
 * Defaults follow libpq: user = `PGUSER` or the OS user name, database =
 * `PGDATABASE` or the user name, host = `localhost`, port = `5432`. A `PGHOST`
 * that is a directory (starts with `/`) becomes a `?host=` query parameter,
 * which node-postgres treats as a Unix socket directory.
 *
 * @param env - usually `process.env`.
 * @returns the URL, or `undefined` when the environment names no server.
 */
export function databaseFromEnv(env: NodeJS.ProcessEnv): EnvDatabase | undefined {
  const databaseUrl = env['DATABASE_URL']
  if (databaseUrl !== undefined && databaseUrl !== '') {
    return { url: databaseUrl, from: 'DATABASE_URL' }
  }

  const { PGHOST, PGPORT, PGDATABASE, PGUSER, PGPASSWORD, PGSSLMODE } = env
  if (!PGHOST && !PGDATABASE && !PGPORT) return undefined

  const user = PGUSER || safeUserName()
  const database = PGDATABASE || user
  const port = PGPORT || '5432'
  const socketDir = PGHOST?.startsWith('/') ? PGHOST : undefined
  const host = socketDir === undefined && PGHOST ? PGHOST : 'localhost'

  const url = new URL('postgres://placeholder')
  url.hostname = host.includes(':') && !host.startsWith('[') ? `[${host}]` : host
  url.port = port
  url.username = user
  if (PGPASSWORD) url.password = PGPASSWORD
  url.pathname = `/${encodeURIComponent(database)}`
  if (socketDir !== undefined) url.searchParams.set('host', socketDir)
  if (PGSSLMODE && PASSED_SSL_MODES.has(PGSSLMODE)) url.searchParams.set('sslmode', PGSSLMODE)

  return { url: url.toString(), from: 'PG* variables' }
}

function safeUserName(): string {
  try {
    return userInfo().username
  } catch {
    return 'postgres'
  }
}
