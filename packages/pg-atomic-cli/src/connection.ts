/**
 * Where to connect (`--url`, then `DATABASE_URL`, then the `PG*` variables) and what a
 * connection failure means, in one line without the password.
 *
 * @module
 */
import pg from 'pg'
import { createDatabase } from 'pg-atomic'
import type { Database } from 'pg-atomic'
import { CliError, EXIT, usageError } from './errors'
import { formatDuration } from './duration'

/** Where the connection settings came from. */
export type ConnectionSource = '--url' | 'DATABASE_URL' | 'PG* environment variables'

/** The connection settings of one run. */
export interface ConnectionTarget {
  readonly source: ConnectionSource
  /** The URL, when one was given (never printed: it may hold a password). */
  readonly connectionString: string | undefined
  /** `host:port` for messages (no user, no password). */
  readonly display: string
  readonly connectTimeoutMs: number
}

/** A connected run: the pool, the pg-atomic database on it, facts about the server. */
export interface Session {
  readonly pool: pg.Pool
  readonly db: Database
  readonly target: ConnectionTarget
  readonly database: string
  /** `server_version_num`, e.g. 170006. */
  readonly serverVersion: number
  close(): Promise<void>
}

/**
 * Picks the connection settings: `--url`, else `DATABASE_URL`, else the `PG*` variables that
 * node-postgres reads itself (`PGHOST`, `PGPORT`, `PGUSER`, `PGPASSWORD`, `PGDATABASE`, ...).
 * A URL that is not `postgres://...` / `postgresql://...` is a usage error; the message never
 * repeats the URL (it may hold a password).
 */
export function resolveTarget(url: string | undefined, env: NodeJS.ProcessEnv, connectTimeoutMs: number): ConnectionTarget {
  let source: ConnectionSource = 'PG* environment variables'
  let connectionString: string | undefined
  if (url !== undefined) {
    source = '--url'
    connectionString = url
  } else if (env['DATABASE_URL'] !== undefined && env['DATABASE_URL'] !== '') {
    source = 'DATABASE_URL'
    connectionString = env['DATABASE_URL']
  }
  if (connectionString === undefined) {
    const host = env['PGHOST'] || 'localhost'
    const port = env['PGPORT'] || '5432'
    return { source, connectionString, display: host.startsWith('/') ? `${host} (unix socket), port ${port}` : `${host}:${port}`, connectTimeoutMs }
  }
  let parsed: URL
  try {
    parsed = new URL(connectionString)
  } catch {
    throw usageError(`the connection URL from ${source} is not a valid URL; write it like postgres://user:password@host:5432/database.`)
  }
  if (parsed.protocol !== 'postgres:' && parsed.protocol !== 'postgresql:') {
    throw usageError(`the connection URL from ${source} must start with postgres:// or postgresql:// (it starts with ${parsed.protocol}//).`)
  }
  const host = decodeURIComponent(parsed.hostname) || parsed.searchParams.get('host') || env['PGHOST'] || 'localhost'
  const port = parsed.port || env['PGPORT'] || '5432'
  return { source, connectionString, display: `${host}:${port}`, connectTimeoutMs }
}

let sessions = 0

/** Opens a pool (at most 2 connections) and a pg-atomic database on it, and checks the server answers. */
export async function connect(target: ConnectionTarget): Promise<Session> {
  const pool = new pg.Pool({
    ...(target.connectionString === undefined ? {} : { connectionString: target.connectionString }),
    // The URL's application_name, when present, wins over this one.
    application_name: 'pg-atomic',
    max: 2,
    connectionTimeoutMillis: target.connectTimeoutMs,
  })
  pool.on('error', () => {
    // An idle connection that dies is removed by pg-pool; the next query reports the problem.
  })
  const db = createDatabase({ pool, alias: `pg-atomic-cli-${++sessions}` })
  const close = async (): Promise<void> => {
    await db.close()
    await pool.end()
  }
  const started = Date.now()
  try {
    const { rows } = await db.query<{ database: string; version: number }>(
      "SELECT current_database() AS database, current_setting('server_version_num')::int AS version",
    )
    const row = rows[0] as { database: string; version: number }
    return { pool, db, target, database: row.database, serverVersion: row.version, close }
  } catch (error) {
    await close().catch(() => undefined)
    // Some pg versions report a connect timeout as a plain "Connection terminated unexpectedly".
    const where = `PostgreSQL at ${target.display} (from ${target.source})`
    if (/Connection terminated/.test(messageOf(error))) {
      if (Date.now() - started >= target.connectTimeoutMs * 0.9) {
        throw new CliError(`cannot connect to ${where}: no answer within ${formatDuration(target.connectTimeoutMs)} (--connect-timeout).`, EXIT.connection, { cause: error })
      }
      throw new CliError(`cannot connect to ${where}: the connection was closed before the server answered.`, EXIT.connection, { cause: error })
    }
    throw explainFailure(error, target)
  }
}

const NETWORK_CODES: Readonly<Record<string, string>> = Object.freeze({
  ECONNREFUSED: 'connection refused (is the server running and listening there?)',
  ENOTFOUND: 'unknown host',
  EAI_AGAIN: 'the host name could not be resolved (temporary DNS failure)',
  ETIMEDOUT: 'the connection timed out',
  EHOSTUNREACH: 'host unreachable',
  ENETUNREACH: 'network unreachable',
  ECONNRESET: 'the connection was reset by the server',
  EPIPE: 'the connection was closed by the server',
  ENOENT: 'no server socket there',
  EACCES: 'permission denied on the socket',
})

function codeOf(error: unknown): string | undefined {
  if (typeof error !== 'object' || error === null) return undefined
  const code = (error as { code?: unknown }).code
  if (typeof code === 'string') return code
  // Node's happy-eyeballs connect reports an AggregateError without a code of its own.
  const errors = (error as { errors?: unknown }).errors
  if (Array.isArray(errors)) return codeOf(errors[0])
  return undefined
}

function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error)
}

/** SQLSTATEs that mean "you cannot use this server / database / role". */
const CONNECTION_SQLSTATES = new Set(['28000', '28P01', '3D000', '57P01', '57P02', '57P03', '53300', '08001', '08004', '08006'])

/**
 * Turns any error into a one-line {@link CliError} with its exit code: 3 for connection
 * failures, 4 for SQLSTATE 42501, 2 for pg-atomic's usage errors, 1 otherwise.
 */
export function explainFailure(error: unknown, target: ConnectionTarget | undefined): CliError {
  if (error instanceof CliError) return error
  const name = error instanceof Error ? error.name : ''
  if (name === 'InvalidOptionError' || name === 'TransactionManagementError') return new CliError(messageOf(error), EXIT.usage, { cause: error })
  const code = codeOf(error)
  const where = target === undefined ? 'PostgreSQL' : `PostgreSQL at ${target.display} (from ${target.source})`
  if (code !== undefined && NETWORK_CODES[code] !== undefined) {
    return new CliError(`cannot connect to ${where}: ${NETWORK_CODES[code]}.`, EXIT.connection, { cause: error })
  }
  const message = messageOf(error)
  if (/timeout expired|connection timeout|timeout exceeded when trying to connect/i.test(message)) {
    const after = target === undefined ? '' : ` within ${formatDuration(target.connectTimeoutMs)} (--connect-timeout)`
    return new CliError(`cannot connect to ${where}: no answer${after}.`, EXIT.connection, { cause: error })
  }
  if (code !== undefined && (CONNECTION_SQLSTATES.has(code) || code.startsWith('08'))) {
    return new CliError(`cannot use ${where}: ${message} (SQLSTATE ${code}).`, EXIT.connection, { cause: error })
  }
  if (/Connection terminated|not queryable/.test(message)) {
    return new CliError(`lost the connection to ${where}: ${message}.`, EXIT.connection, { cause: error })
  }
  if (code === '42501') return new CliError(`permission denied: ${message} (SQLSTATE 42501).`, EXIT.permission, { cause: error })
  if (code !== undefined && /^[0-9A-Z]{5}$/.test(code)) return new CliError(`${message} (SQLSTATE ${code}).`, EXIT.error, { cause: error })
  return new CliError(message, EXIT.error, { cause: error })
}
