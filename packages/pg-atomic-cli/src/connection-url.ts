/**
 * Connection URLs the way libpq reads them (PostgreSQL manual, "Connection URIs"), turned into
 * the settings node-postgres takes. node-postgres' own parser refuses forms libpq accepts (an
 * empty host with a user, `postgres://user@/db?host=/var/run/postgresql`; several hosts), so the
 * URL is read here and node-postgres gets one single-host URL per host to try.
 *
 * `postgresql://[user[:password]@][host][:port][,host[:port]...][/dbname][?param=value&...]`
 *
 * 1. Any part may be percent-encoded; a host that starts with `/` (`%2Fvar%2Frun%2Fpostgresql`)
 *    is a Unix-socket directory; `[::1]` is an IPv6 address.
 * 2. The `host`, `port`, `user`, `password` and `dbname` parameters override the parts above;
 *    `host` and `port` take comma-separated lists too. One port applies to every host, otherwise
 *    there must be as many ports as hosts.
 * 3. Hosts are tried in order (`load_balance_hosts=random`: in random order).
 *    `target_session_attrs` other than `any` is refused: node-postgres cannot check it.
 * 4. Whatever is not given comes from the `PG*` variables, as in libpq; the user, lastly, is the
 *    operating-system user (libpq's default), and the database defaults to the user.
 *
 * Errors never repeat the URL: it may hold a password.
 *
 * @module
 */
import { userInfo } from 'node:os'
import { usageError } from './errors'

/** One host to try. */
export interface Endpoint {
  /**
   * A host name, an IP address, a Unix-socket directory (starts with `/`), or `undefined`: the driver's default
   * (`PGHOST`, else `localhost`).
   */
  readonly host: string | undefined
  /** The port, or `undefined`: the driver's default (`PGPORT`, else 5432). */
  readonly port: number | undefined
}

/** What a connection URL says, ready for node-postgres. */
export interface ParsedUrl {
  /** The hosts, in the order to try them (at least one). */
  readonly endpoints: readonly Endpoint[]
  /** For each endpoint, a single-host URL node-postgres can parse (same user, password, database, other parameters). */
  connectionStringFor(endpoint: Endpoint): string
}

/**
 * The user libpq connects as when none is given: `PGUSER`, else the operating-system user name
 * (not `$USER`, which libpq does not read). `undefined` when the system has no name for the
 * current user id (a container running as an unnamed uid): node-postgres then reports it.
 */
export function defaultUser(env: NodeJS.ProcessEnv): string | undefined {
  if (env['PGUSER'] !== undefined && env['PGUSER'] !== '') return env['PGUSER']
  try {
    return userInfo().username
  } catch {
    return undefined
  }
}

function decode(text: string, what: string, source: string): string {
  try {
    return decodeURIComponent(text)
  } catch {
    throw usageError(
      `the connection URL from ${source} has a badly percent-encoded ${what}; encode special characters ` +
        `as %XX (e.g. %40 for @, %2F for /).`,
    )
  }
}

function parsePort(text: string, source: string): number | undefined {
  if (text === '') return undefined
  const port = /^\d{1,5}$/.test(text) ? Number(text) : NaN
  if (!(port >= 1 && port <= 65535)) {
    throw usageError(
      `the connection URL from ${source} has an invalid port: a port is a number from 1 to 65535; ` +
        `write it like postgres://user:password@host:5432/database.`,
    )
  }
  return port
}

/** `host[:port]` or `[v6]:port`, percent-decoded. */
function parseHostSpec(spec: string, source: string): { host: string; port: string } {
  if (spec.startsWith('[')) {
    const close = spec.indexOf(']')
    if (close === -1)
      throw usageError(
        `the connection URL from ${source} has an IPv6 address without its closing ']'; write it like ` +
          `postgres://[::1]:5432/database.`,
      )
    const after = spec.slice(close + 1)
    if (after !== '' && !after.startsWith(':'))
      throw usageError(`the connection URL from ${source} has text after an IPv6 address that is not ':port'.`)
    return { host: spec.slice(1, close), port: after.slice(1) }
  }
  const colon = spec.lastIndexOf(':')
  if (colon === -1) return { host: decode(spec, 'host', source), port: '' }
  return { host: decode(spec.slice(0, colon), 'host', source), port: spec.slice(colon + 1) }
}

/** Query parameters, decoded, in order (`+` is a literal plus sign in libpq). */
function parseQuery(query: string, source: string): Map<string, string> {
  const params = new Map<string, string>()
  for (const pair of query.split('&')) {
    if (pair === '') continue
    const eq = pair.indexOf('=')
    if (eq === -1)
      throw usageError(
        `the connection URL from ${source} has a query parameter without '=': write parameters like ` +
          `?sslmode=require&application_name=x.`,
      )
    params.set(
      decode(pair.slice(0, eq), 'parameter name', source),
      decode(pair.slice(eq + 1), 'parameter value', source),
    )
  }
  return params
}

/** Parameters read here; the others go on to node-postgres unchanged. */
const OWN_PARAMETERS = new Set([
  'host',
  'hostaddr',
  'port',
  'user',
  'password',
  'dbname',
  'target_session_attrs',
  'load_balance_hosts',
])

/**
 * Reads a `postgres://` or `postgresql://` URL as libpq does (see the module comment). A URL with
 * another scheme, or one libpq would refuse, is a usage error (exit 2) that does not repeat it.
 */
export function parseConnectionUrl(url: string, source: string, env: NodeJS.ProcessEnv): ParsedUrl {
  const scheme = /^(postgres(?:ql)?):\/\//.exec(url)
  if (scheme === null) {
    const other = /^([A-Za-z][A-Za-z0-9+.-]*):/.exec(url)
    throw usageError(
      other === null
        ? `the connection URL from ${source} is not a valid URL; ` +
            'write it like postgres://user:password@host:5432/database.'
        : `the connection URL from ${source} must start with postgres:// or postgresql:// (it starts ` +
            `with ${other[1]?.toLowerCase() ?? ''}://).`,
    )
  }
  let rest = url.slice(scheme[0].length)
  const hash = rest.indexOf('#')
  if (hash !== -1) rest = rest.slice(0, hash)
  const q = rest.indexOf('?')
  const params = parseQuery(q === -1 ? '' : rest.slice(q + 1), source)
  const beforeQuery = q === -1 ? rest : rest.slice(0, q)
  const slash = beforeQuery.indexOf('/')
  const authority = slash === -1 ? beforeQuery : beforeQuery.slice(0, slash)
  const rawPath = slash === -1 ? '' : beforeQuery.slice(slash + 1)
  const at = authority.lastIndexOf('@')
  const userInfoPart = at === -1 ? undefined : authority.slice(0, at)
  const hostList = at === -1 ? authority : authority.slice(at + 1)

  // User and password: the parameters win over the userinfo part.
  let user: string | undefined
  let password: string | undefined
  if (userInfoPart !== undefined) {
    const colon = userInfoPart.indexOf(':')
    const rawUser = colon === -1 ? userInfoPart : userInfoPart.slice(0, colon)
    if (rawUser !== '') user = decode(rawUser, 'user name', source)
    if (colon !== -1) password = decode(userInfoPart.slice(colon + 1), 'password', source)
  }
  user = params.get('user') ?? user ?? defaultUser(env)
  password = params.get('password') ?? password

  // Hosts and ports: the parameters win over the host part.
  const specs = hostList === '' ? [] : hostList.split(',').map((spec) => parseHostSpec(spec, source))
  let hosts = specs.map((s) => s.host)
  let ports = specs.map((s) => s.port)
  const hostParam = params.get('host') ?? params.get('hostaddr')
  if (hostParam !== undefined) hosts = hostParam.split(',')
  const portParam = params.get('port')
  if (portParam !== undefined) ports = portParam.split(',')
  if (hosts.length === 0) hosts = ['']
  if (ports.length > 1 && ports.length !== hosts.length) {
    throw usageError(
      `the connection URL from ${source} gives ${ports.length} ports for ${hosts.length} hosts; give ` +
        `one port for all hosts, or one per host.`,
    )
  }
  let endpoints: Endpoint[] = hosts.map((host, i) => ({
    host: host === '' ? undefined : host,
    port: parsePort(ports.length === 1 ? (ports[0] as string) : (ports[i] ?? ''), source),
  }))

  const target = params.get('target_session_attrs')
  if (target !== undefined && target !== 'any') {
    throw usageError(
      `target_session_attrs=${target} in the connection URL from ${source} is not supported: pg-atomic ` +
        `tries the hosts in order and uses the first that answers. Leave it out, or name the host you ` +
        `want.`,
    )
  }
  const balance = params.get('load_balance_hosts')
  if (balance === 'random') endpoints = shuffle(endpoints)
  else if (balance !== undefined && balance !== 'disable') {
    throw usageError(`load_balance_hosts in the connection URL from ${source} must be disable or random.`)
  }

  const database = params.get('dbname') ?? (rawPath === '' ? undefined : decode(rawPath, 'database name', source))
  const passOn = [...params].filter(([key]) => !OWN_PARAMETERS.has(key))

  return {
    endpoints,
    connectionStringFor(endpoint: Endpoint): string {
      const query = new URLSearchParams()
      if (endpoint.host !== undefined) query.set('host', endpoint.host)
      if (endpoint.port !== undefined) query.set('port', String(endpoint.port))
      for (const [key, value] of passOn) query.set(key, value)
      const secret = password === undefined ? '' : `:${encodeURIComponent(password)}`
      const credentials = `${encodeURIComponent(user ?? '')}${secret}`
      // node-postgres decodes the path with decodeURI: encode only what would break the URL.
      const path = database === undefined ? '' : encodeURI(database).replace(/[?#]/g, (c) => encodeURIComponent(c))
      return `postgres://${credentials}@/${path}?${query.toString()}`
    },
  }
}

function shuffle<T>(items: readonly T[]): T[] {
  const copy = [...items]
  for (let i = copy.length - 1; i > 0; i--) {
    const j = Math.floor(Math.random() * (i + 1))
    ;[copy[i], copy[j]] = [copy[j] as T, copy[i] as T]
  }
  return copy
}

/** `host:port`, `[::1]:5432`, `/var/run/postgresql (unix socket), port 5432`, for messages (no user, no password). */
export function describeEndpoint(endpoint: Endpoint, env: NodeJS.ProcessEnv): string {
  const host = endpoint.host ?? (env['PGHOST'] || 'localhost')
  const port = endpoint.port ?? (env['PGPORT'] || '5432')
  if (host.startsWith('/')) return `${host} (unix socket), port ${port}`
  return host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`
}
