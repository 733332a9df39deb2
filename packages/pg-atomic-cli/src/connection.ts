/**
 * Where to connect (`--url`, then `DATABASE_URL`, then the `PG*` variables, read as libpq reads
 * them) and what a failure means, in one line without the password.
 *
 * @module
 */
import pg from 'pg'
import { InvalidOptionError, TransactionManagementError, createDatabase, isConnectionError } from 'pg-atomic'
import type { Database } from 'pg-atomic'
import { serverInfo } from 'pg-atomic/insight'
import { defaultUser, describeEndpoint, parseConnectionUrl } from './connection-url'
import type { Endpoint } from './connection-url'
import { formatDuration } from './duration'
import { CliError, EXIT } from './errors'

/** Where the connection settings came from. */
export type ConnectionSource = '--url' | 'DATABASE_URL' | 'PG* environment variables'

/** One host to try, with the settings node-postgres gets for it. */
export interface Candidate {
  /** `host:port` (or the socket directory) for messages: no user, no password. */
  readonly display: string
  /** The pool settings for this host (the URL, when one was given, is never printed). */
  readonly config: pg.PoolConfig
}

/** The connection settings of one run. */
export interface ConnectionTarget {
  readonly source: ConnectionSource
  /** The hosts to try, in order (at least one). */
  readonly candidates: readonly Candidate[]
  /** All hosts, for messages: `db1:5432` or `any of db1:5432, db2:5432`. */
  readonly display: string
  readonly connectTimeoutMs: number
}

/** A connected run: the pool, the pg-atomic database on it, the database's name. */
export interface Session {
  readonly pool: pg.Pool
  readonly db: Database
  readonly target: ConnectionTarget
  /** Where it connected, for messages. */
  readonly where: string
  readonly database: string
  close(): Promise<void>
}

/** `PGHOST` and `PGPORT`, comma-separated lists as in libpq. */
function endpointsFromEnv(env: NodeJS.ProcessEnv): Endpoint[] {
  const hosts = (env['PGHOST'] ?? '').split(',')
  const ports = (env['PGPORT'] ?? '').split(',')
  return hosts.map((host, i) => {
    const port = ports.length === 1 ? ports[0] : ports[i]
    return {
      host: host === '' ? undefined : host,
      port: port === undefined || port === '' || !/^\d+$/.test(port) ? undefined : Number(port),
    }
  })
}

function displayAll(candidates: readonly Candidate[]): string {
  return candidates.length === 1
    ? (candidates[0] as Candidate).display
    : `any of ${candidates.map((c) => c.display).join(', ')}`
}

/**
 * Picks the connection settings: `--url`, else `DATABASE_URL`, else the `PG*` variables
 * (`PGHOST`, `PGPORT`, `PGUSER`, `PGPASSWORD`, `PGDATABASE`, ...). URLs are read as libpq reads
 * them (see `./connection-url`); the user defaults to `PGUSER`, else the operating-system user.
 * A URL libpq would refuse is a usage error that never repeats the URL.
 */
export function resolveTarget(
  url: string | undefined,
  env: NodeJS.ProcessEnv,
  connectTimeoutMs: number,
): ConnectionTarget {
  let source: ConnectionSource = 'PG* environment variables'
  let connectionString: string | undefined
  if (url !== undefined) {
    source = '--url'
    connectionString = url
  } else if (env['DATABASE_URL'] !== undefined && env['DATABASE_URL'] !== '') {
    source = 'DATABASE_URL'
    connectionString = env['DATABASE_URL']
  }
  let candidates: Candidate[]
  if (connectionString === undefined) {
    const user = defaultUser(env)
    candidates = endpointsFromEnv(env).map((endpoint) => ({
      display: describeEndpoint(endpoint, env),
      config: {
        ...(endpoint.host === undefined ? {} : { host: endpoint.host }),
        ...(endpoint.port === undefined ? {} : { port: endpoint.port }),
        ...(user === undefined ? {} : { user }),
      },
    }))
  } else {
    const parsed = parseConnectionUrl(connectionString, source, env)
    candidates = parsed.endpoints.map((endpoint) => ({
      display: describeEndpoint(endpoint, env),
      config: { connectionString: parsed.connectionStringFor(endpoint) },
    }))
  }
  return { source, candidates, display: displayAll(candidates), connectTimeoutMs }
}

let sessions = 0

/**
 * Opens a pool (at most 2 connections) and a pg-atomic database on it for the first host that
 * answers, and reads the database's name (`serverInfo()`). When a host cannot be reached, the
 * next one is tried; other failures end the run.
 */
export async function connect(target: ConnectionTarget): Promise<Session> {
  let lastError: unknown
  for (const candidate of target.candidates) {
    const pool = new pg.Pool({
      ...candidate.config,
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
      const info = await serverInfo({ using: db })
      return {
        pool,
        db,
        target,
        where: `PostgreSQL at ${candidate.display} (from ${target.source})`,
        database: info.database,
        close,
      }
    } catch (error) {
      await closeQuietly(close)
      // Some pg versions report a connect timeout as a plain "Connection terminated unexpectedly".
      if (Date.now() - started >= target.connectTimeoutMs * 0.9 && isConnectionError(error))
        lastError = new ConnectTimeout(error)
      else if (nodeCode(error) === undefined && /Connection terminated/.test(messageOf(error)))
        lastError = new ClosedBeforeAnswer(error)
      else lastError = error
      if (!isConnectionError(error) && !(lastError instanceof ClosedBeforeAnswer)) break
    }
  }
  throw explainFailure(lastError, `PostgreSQL at ${target.display} (from ${target.source})`, target)
}

/** Closes a failed attempt; a failure to close it changes nothing for the user. */
async function closeQuietly(close: () => Promise<void>): Promise<void> {
  try {
    await close()
  } catch {
    // The pool of a failed connection attempt: nothing is left to release.
  }
}

/** A connection attempt that got no answer within --connect-timeout. */
class ConnectTimeout extends Error {
  override name = 'ConnectTimeout'
  constructor(cause: unknown) {
    super('no answer', { cause })
  }
}

/** A connection attempt the server (or something in between) closed before answering. */
class ClosedBeforeAnswer extends Error {
  override name = 'ClosedBeforeAnswer'
  constructor(cause: unknown) {
    super('closed before the server answered', { cause })
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

/** The node error code of `error` (of the first attempt, for Node's multi-address AggregateError). */
function nodeCode(error: unknown): string | undefined {
  if (error instanceof AggregateError) return nodeCode(error.errors[0])
  const code = typeof error === 'object' && error !== null ? (error as { code?: unknown }).code : undefined
  return typeof code === 'string' ? code : undefined
}

function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error)
}

/** SQLSTATEs of a server that refuses this role or database: reported as "cannot use", exit 3. */
const REFUSED_SQLSTATES = new Set(['28000', '28P01', '3D000', '53300'])

/**
 * Turns any error into a one-line {@link CliError} with its exit code: 2 for pg-atomic's usage
 * errors (`InvalidOptionError`, `TransactionManagementError`), 3 when PostgreSQL cannot be reached
 * or used (`isConnectionError()`, and a refused role or database), 4 for SQLSTATE 42501, 1
 * otherwise. `where` names the server for messages.
 */
export function explainFailure(error: unknown, where: string, target?: ConnectionTarget): CliError {
  if (error instanceof CliError) return error
  if (error instanceof InvalidOptionError || error instanceof TransactionManagementError)
    return new CliError(error.message, EXIT.usage, { cause: error })
  if (
    error instanceof ConnectTimeout ||
    (isConnectionError(error) &&
      /timeout expired|connection timeout|timeout exceeded when trying to connect/i.test(messageOf(error)))
  ) {
    const after = target === undefined ? '' : ` within ${formatDuration(target.connectTimeoutMs)} (--connect-timeout)`
    return new CliError(`cannot connect to ${where}: no answer${after}.`, EXIT.connection, { cause: error })
  }
  if (error instanceof ClosedBeforeAnswer)
    return new CliError(
      `cannot connect to ${where}: the connection was closed before the server answered.`,
      EXIT.connection,
      { cause: error },
    )
  const code = nodeCode(error)
  if (code !== undefined && NETWORK_CODES[code] !== undefined && isConnectionError(error)) {
    return new CliError(`cannot connect to ${where}: ${NETWORK_CODES[code]}.`, EXIT.connection, { cause: error })
  }
  const message = messageOf(error)
  if (code !== undefined && (REFUSED_SQLSTATES.has(code) || (isConnectionError(error) && /^[0-9A-Z]{5}$/.test(code)))) {
    return new CliError(`cannot use ${where}: ${message} (SQLSTATE ${code}).`, EXIT.connection, { cause: error })
  }
  if (isConnectionError(error))
    return new CliError(`lost the connection to ${where}: ${message}.`, EXIT.connection, { cause: error })
  if (code === '42501')
    return new CliError(`permission denied: ${message} (SQLSTATE 42501).`, EXIT.permission, { cause: error })
  if (code !== undefined && /^[0-9A-Z]{5}$/.test(code))
    return new CliError(`${message} (SQLSTATE ${code}).`, EXIT.error, { cause: error })
  return new CliError(message, EXIT.error, { cause: error })
}
