/**
 * The `pg-atomic` command line, run as a real subprocess (`node packages/pg-atomic-cli/dist/cli.js`)
 * against real sessions that hold and wait for locks: `locks` (JSON tree, aligned text without
 * colour codes off a terminal, --watch stopped by Ctrl-C), `explain-locks`, `idle` (listing,
 * --terminate refusals and terminations, permission denied), connection precedence, the URL
 * forms libpq accepts, the default user, failures, argument errors, help, version and exit codes.
 *
 * Uses the library's test harness (packages/pg-atomic/test/support). Needs the build
 * (`npm run build`; CI builds before testing).
 */
import { spawn } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { createServer } from 'node:net'
import type { Socket } from 'node:net'
import { tmpdir, userInfo } from 'node:os'
import { join, resolve } from 'node:path'
import pg from 'pg'
import { setupHarness } from '../../pg-atomic/test/support/harness'
import type { Harness } from '../../pg-atomic/test/support/harness'

const ROOT = resolve(__dirname, '..', '..', '..')
const CLI = join(ROOT, 'packages', 'pg-atomic-cli', 'dist', 'cli.js')
const LIBRARY = join(ROOT, 'packages', 'pg-atomic', 'dist', 'index.js')

let h: Harness

beforeAll(async () => {
  for (const file of [CLI, LIBRARY]) {
    if (!existsSync(file))
      throw new Error(`${file} is missing: the CLI tests run the built command line; run 'npm run build' first.`)
  }
  h = await setupHarness('cli')
  await h.admin.query('create table accounts (id int primary key, balance int not null)')
})
afterAll(() => h.close())
beforeEach(async () => {
  await h.admin.query('truncate accounts')
  await h.admin.query('insert into accounts select g, 100 from generate_series(1, 5) g')
})

interface Result {
  readonly code: number | null
  readonly stdout: string
  readonly stderr: string
}

/** The environment without any connection setting or colour switch of the test runner. */
function cleanEnv(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {}
  for (const [key, value] of Object.entries(process.env)) {
    if (key === 'DATABASE_URL' || key.startsWith('PG') || key === 'NO_COLOR' || key === 'FORCE_COLOR') continue
    env[key] = value
  }
  return { ...env, ...extra }
}

/** Runs the CLI with stdin closed (not a terminal); killed after 20 s. */
function cli(args: readonly string[], env: NodeJS.ProcessEnv = cleanEnv()): Promise<Result> {
  return new Promise((resolvePromise, reject) => {
    const child = spawn(process.execPath, [CLI, ...args], { env, stdio: ['pipe', 'pipe', 'pipe'] })
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()))
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()))
    child.stdin.end()
    const timer = setTimeout(() => child.kill('SIGKILL'), 20_000)
    child.on('error', reject)
    child.on('close', (code) => {
      clearTimeout(timer)
      resolvePromise({ code, stdout, stderr })
    })
  })
}

const url = () => h.testDb.url

interface Session {
  readonly client: pg.Client
  readonly pid: number
}
const opened: pg.Client[] = []

async function session(name: string, connectionString = url()): Promise<Session> {
  const client = new pg.Client({ connectionString })
  client.on('error', () => {
    // Terminated by the CLI on purpose.
  })
  await client.connect()
  opened.push(client)
  await client.query("select set_config('application_name', $1, false), set_config('lock_timeout', '15s', false)", [
    name,
  ])
  const { rows } = await client.query<{ pid: number }>('select pg_backend_pid() as pid')
  return { client, pid: (rows[0] as { pid: number }).pid }
}

afterEach(async () => {
  for (const client of opened.splice(0)) await client.end().catch(() => undefined)
})

async function waitUntil(what: string, check: () => Promise<boolean>): Promise<void> {
  const deadline = Date.now() + 10_000
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out after 10 s waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 20))
  }
}

const waitingForLock = (pid: number) =>
  waitUntil(
    `pid ${pid} to wait for a lock`,
    async () => (await h.column('select wait_event_type from pg_stat_activity where pid = $1', [pid]))[0] === 'Lock',
  )

/** A session idle in transaction holding a row lock, a SHARE table lock and an advisory lock. */
async function holder(connectionString?: string): Promise<Session> {
  const s = await session('holder', connectionString)
  await s.client.query('begin')
  await s.client.query('select * from accounts where id = 1 for update')
  await s.client.query('select pg_advisory_xact_lock(4294967303)')
  await s.client.query('lock table accounts in share mode')
  return s
}

async function closedPort(): Promise<number> {
  const server = createServer()
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()))
  const port = (server.address() as { port: number }).port
  await new Promise<void>((r) => server.close(() => r()))
  return port
}

/** The column where each header starts in a header line. */
function columns(header: string, names: readonly string[]): number[] {
  return names.map((name) => {
    const i = header.indexOf(name)
    if (i === -1) throw new Error(`header ${name} not found in: ${header}`)
    return i
  })
}

describe('locks', () => {
  test('--json: the waiter under the holder, the holder also idle in transaction, advisory keys as text', async () => {
    const hold = await holder()
    const waiter = await session('waiter')
    const updating = waiter.client.query('update accounts set balance = 0 where id = 2')
    await waitingForLock(waiter.pid)

    const result = await cli(['locks', '--json', '--url', url()])
    expect(result.stderr).toBe('')
    expect(result.code).toBe(0)
    const out = JSON.parse(result.stdout) as {
      database: string
      waits: Array<{
        pid: number
        applicationName: string
        state: string
        blocking: Array<{ pid: number; blockedBy: number[]; waitingFor: { mode: string; target: string } }>
      }>
      idleInTransaction: Array<{ pid: number; locks: Array<{ type: string; advisoryKey: unknown }> }>
    }
    expect(out.database).toBe(h.testDb.name)
    expect(out.waits.map((w) => w.pid)).toEqual([hold.pid])
    expect(out.waits[0]).toMatchObject({ applicationName: 'holder', state: 'idle in transaction' })
    expect(out.waits[0]?.blocking).toEqual([
      expect.objectContaining({
        pid: waiter.pid,
        blockedBy: [hold.pid],
        waitingFor: expect.objectContaining({ mode: 'RowExclusiveLock', target: 'table public.accounts' }),
      }),
    ])
    expect(out.idleInTransaction.map((s) => s.pid)).toEqual([hold.pid])
    expect(out.idleInTransaction[0]?.locks.filter((l) => l.type === 'advisory').map((l) => l.advisoryKey)).toEqual([
      '4294967303',
    ])

    await hold.client.query('rollback')
    await updating
  })

  test('text: aligned columns, no colour codes when stdout is not a terminal', async () => {
    const hold = await holder()
    const waiter = await session('waiter')
    const updating = waiter.client.query('update accounts set balance = 0 where id = 2')
    await waitingForLock(waiter.pid)

    const result = await cli(['locks', '--url', url()])
    expect(result.code).toBe(0)
    expect(result.stdout).not.toContain('\u001b')
    const lines = result.stdout.split('\n')
    expect(lines[0]).toBe(`Lock waits in database ${h.testDb.name}: 1 session waiting`)
    const header = lines.find((l) => l.startsWith('PID ')) as string
    const [app, state, age, waiting, waited, query] = columns(header, [
      'APPLICATION',
      'STATE',
      'XACT AGE',
      'WAITING FOR',
      'WAITED',
      'QUERY',
    ]) as number[]
    const rows = lines.slice(lines.indexOf(header) + 1, lines.indexOf(header) + 3)
    expect(rows[0]?.startsWith(String(hold.pid))).toBe(true)
    expect(rows[1]?.startsWith(`└─ ${waiter.pid}`)).toBe(true)
    expect(rows.map((r) => r.slice(app as number).split('  ')[0])).toEqual(['holder', 'waiter'])
    expect(rows.map((r) => r.slice(state as number).split('  ')[0])).toEqual(['idle in transaction', 'active'])
    expect(rows.map((r) => r.charAt((age as number) - 1))).toEqual([' ', ' '])
    expect(rows[1]?.slice(waiting as number).startsWith('RowExclusiveLock on table public.accounts')).toBe(true)
    expect(rows[1]?.charAt((waited as number) - 1)).toBe(' ')
    expect(rows.map((r) => r.slice(query as number))).toEqual([
      'lock table accounts in share mode',
      'update accounts set balance = 0 where id = 2',
    ])

    expect(lines).toContain('Idle in transaction: 1 session')
    const idleHeader = lines.find((l) => l.startsWith('PID ') && l.includes('IDLE')) as string
    const [idleState, held] = columns(idleHeader, ['STATE', 'LOCKS HELD']) as number[]
    const idleRow = lines[lines.indexOf(idleHeader) + 1] as string
    expect(idleRow.slice(idleState as number).startsWith('idle in transaction')).toBe(true)
    expect(
      idleRow
        .slice(held as number)
        .startsWith('ShareLock table public.accounts, RowShareLock table public.accounts (+'),
    ).toBe(true)

    await hold.client.query('rollback')
    await updating
    const quiet = await cli(['locks', '--url', url()])
    expect(quiet.stdout).toBe(`Lock waits in database ${h.testDb.name}: none\n\nIdle in transaction: none\n`)
  })

  test('--watch refreshes until Ctrl-C (SIGINT), then exits 0', async () => {
    const child = spawn(process.execPath, [CLI, 'locks', '--watch', '--interval', '200ms', '--json', '--url', url()], {
      env: cleanEnv(),
      stdio: ['pipe', 'pipe', 'pipe'],
    })
    let stdout = ''
    let stderr = ''
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()))
    const exited = new Promise<number | null>((r) => child.on('close', (code) => r(code)))
    const kill = setTimeout(() => child.kill('SIGKILL'), 20_000)
    await new Promise<void>((r) => {
      child.stdout.on('data', (chunk: Buffer) => {
        stdout += chunk.toString()
        if (stdout.split('\n').length > 2) r()
      })
      child.on('close', () => r())
    })
    child.kill('SIGINT')
    const code = await exited
    clearTimeout(kill)
    expect(stderr).toBe('')
    expect(code).toBe(0)
    const docs = stdout
      .trim()
      .split('\n')
      .map((line) => JSON.parse(line) as { waits: unknown[]; idleInTransaction: unknown[] })
    expect(docs.length).toBeGreaterThanOrEqual(2)
    expect(docs[0]).toMatchObject({ waits: [], idleInTransaction: [] })
  })
})

describe('explain-locks', () => {
  test('text report of ALTER TABLE; nothing is kept', async () => {
    const result = await cli(['explain-locks', 'alter table accounts add column note text', '--url', url()])
    expect(result.stderr).toBe('')
    expect(result.code).toBe(0)
    const lines = result.stdout.split('\n')
    expect(lines.slice(0, 2)).toEqual([
      'Statement: alter table accounts add column note text',
      'Result:    ALTER (rolled back)',
    ])
    const header = lines.find((l) => l.startsWith('RELATION')) as string
    const [kind, mode, blocks] = columns(header, ['KIND', 'MODE', 'BLOCKS']) as number[]
    const row = lines.find((l) => l.startsWith('public.accounts ')) as string
    expect(row.slice(kind as number).startsWith('table')).toBe(true)
    expect(row.slice(mode as number).startsWith('AccessExclusiveLock')).toBe(true)
    expect(row.slice(blocks as number)).toBe('everything, even SELECT')
    expect(lines).toContain('Row locks (0)')
    expect(result.stdout).toContain('- The statement was executed and rolled back')
    expect(
      await h.column(
        'select column_name from information_schema.columns where table_name = $1 order by ordinal_position',
        ['accounts'],
      ),
    ).toEqual(['id', 'balance'])
  })

  test('--param and --json', async () => {
    const result = await cli([
      'explain-locks',
      'update accounts set balance = 0 where id = $1',
      '--param',
      '2',
      '--json',
      '--url',
      url(),
    ])
    expect(result.code).toBe(0)
    const report = JSON.parse(result.stdout) as {
      command: string
      rowCount: number
      locks: Array<{ mode: string; target: string }>
      rowLocks: { source: string }
    }
    expect(report).toMatchObject({ command: 'UPDATE', rowCount: 1, rowLocks: { source: 'not installed' } })
    expect(report.locks[0]).toMatchObject({ mode: 'RowExclusiveLock', target: 'table public.accounts' })
    expect(await h.column('select balance from accounts where id = 2')).toEqual([100])
  })

  test('refused statements exit 2 before anything runs; a lock timeout exits 1 and says what to do', async () => {
    const refusal =
      'pg-atomic: explainLocks() cannot explain VACUUM: it cannot run inside a transaction block ' +
      '(PostgreSQL refuses it with SQLSTATE 25001), so it could not be rolled back afterwards. Nothing ' +
      'was sent to the server.\n'
    const vacuum = await cli(['explain-locks', 'vacuum accounts', '--url', url()])
    expect(vacuum).toEqual({ code: 2, stdout: '', stderr: refusal })
    const hold = await holder()
    const timeout = await cli([
      'explain-locks',
      'alter table accounts add column x int',
      '--lock-timeout',
      '100ms',
      '--url',
      url(),
    ])
    expect(timeout.code).toBe(1)
    expect(timeout.stderr).toBe(
      'pg-atomic: canceling statement due to lock timeout (SQLSTATE 55P03). Another session holds ' +
        "a conflicting lock; run 'pg-atomic locks' to see which, or raise --lock-timeout.\n",
    )
    await hold.client.query('rollback')
    expect(await cli(['explain-locks', '--url', url()])).toEqual({
      code: 2,
      stdout: '',
      stderr:
        `pg-atomic: the SQL statement to explain is missing: pg-atomic explain-locks "<sql>". Run 'pg-atomic ` +
        `explain-locks --help' for help.\n`,
    })
    expect(await cli(['explain-locks', 'select 1', 'select 2', '--url', url()])).toEqual({
      code: 2,
      stdout: '',
      stderr:
        'pg-atomic: pg-atomic explain-locks takes one SQL argument and got 2; quote the statement: ' +
        'pg-atomic explain-locks "update t set x = 1".\n',
    })
  })

  test(
    'regression (issue 7, defect 7): a refused statement exits 2 before connecting, as documented, ' +
      'even when no server answers',
    async () => {
      const port = await closedPort()
      const dead = `postgres://someone:s3cret@127.0.0.1:${port}/nowhere`
      expect(await cli(['explain-locks', 'vacuum accounts', '--url', dead])).toEqual({
        code: 2,
        stdout: '',
        stderr:
          'pg-atomic: explainLocks() cannot explain VACUUM: it cannot run inside a transaction block ' +
          '(PostgreSQL refuses it with SQLSTATE 25001), so it could not be rolled back afterwards. Nothing ' +
          'was sent to the server.\n',
      })
      expect(await cli(['explain-locks', 'select 1; commit', '--url', dead])).toEqual({
        code: 2,
        stdout: '',
        stderr:
          'pg-atomic: explainLocks() refuses COMMIT: it runs the statement in a transaction of its own ' +
          'and always rolls it back, so transaction control cannot be part of it. Pass only the statement ' +
          'whose locks you want to see. Nothing was sent to the server.\n',
      })
      expect(await cli(['explain-locks', ' -- nothing\n', '--url', dead])).toEqual({
        code: 2,
        stdout: '',
        stderr:
          'pg-atomic: Invalid option "sql" for explainLocks(): it must be the SQL statement to explain ' +
          '(a non-empty string with at least one statement).\n',
      })
      // An acceptable statement does try to connect.
      expect((await cli(['explain-locks', 'select 1', '--url', dead])).code).toBe(3)
    },
  )
})

describe('idle', () => {
  test('--older-than filters; --json lists the idle holder with its locks', async () => {
    const hold = await holder()
    const all = await cli(['idle', '--older-than', '0s', '--json', '--url', url()])
    expect(all.code).toBe(0)
    const listed = JSON.parse(all.stdout) as {
      sessions: Array<{ pid: number; state: string; applicationName: string; locks: unknown[] }>
    }
    expect(listed.sessions.map((s) => s.pid)).toEqual([hold.pid])
    expect(listed.sessions[0]).toMatchObject({ state: 'idle in transaction', applicationName: 'holder' })
    expect(listed.sessions[0]?.locks.length).toBeGreaterThan(3)

    const none = await cli(['idle', '--older-than', '1h', '--json', '--url', url()])
    expect(JSON.parse(none.stdout)).toEqual({ sessions: [] })
    const text = await cli(['idle', '--older-than', '1h', '--url', url()])
    expect(text).toEqual({
      code: 0,
      stdout: `Idle in transaction for at least 1h 0m in database ${h.testDb.name}: none\n`,
      stderr: '',
    })
    expect((await cli(['idle', '--older-than', '5 minutes', '--url', url()])).stderr).toBe(
      "pg-atomic: invalid value for --older-than: '5 minutes' is not a duration; write it like 500ms, 30s, 5m or 1h.\n",
    )
    await hold.client.query('rollback')
  })

  test(
    '--terminate without a terminal and without --yes refuses (exit 2); with --yes it ends the ' + 'session',
    async () => {
      const hold = await holder()
      const refused = await cli(['idle', '--terminate', '--url', url()])
      expect(refused.code).toBe(2)
      expect(refused.stderr).toBe(
        'pg-atomic: not terminating 1 session: confirmation needs a terminal and stdin is not one. ' +
          'Pass --yes to terminate without asking.\n',
      )
      expect(refused.stdout).toContain(String(hold.pid))
      expect(await h.column('select state from pg_stat_activity where pid = $1', [hold.pid])).toEqual([
        'idle in transaction',
      ])

      const done = await cli(['idle', '--terminate', '--yes', '--url', url()])
      expect(done.stderr).toBe('')
      expect(done.code).toBe(0)
      expect(done.stdout).toMatch(new RegExp(`^Terminated pid ${hold.pid} \\(holder, idle for [0-9.]+m?s\\)\\.$`, 'm'))
      await waitUntil(
        'the terminated session to leave pg_stat_activity',
        async () => (await h.column('select count(*)::int from pg_stat_activity where pid = $1', [hold.pid]))[0] === 0,
      )
      expect((await cli(['idle', '--yes', '--url', url()])).code).toBe(2)
    },
  )

  test("terminating another role's session: permission denied, exit 4", async () => {
    const role = `pga_cli_${randomBytes(4).toString('hex')}`
    const password = randomBytes(12).toString('hex')
    await h.admin.query(`create role ${role} login password '${password}'`)
    try {
      await h.admin.query(`grant pg_read_all_stats to ${role}`)
      const hold = await holder()
      const roleUrl = new URL(url())
      roleUrl.username = role
      roleUrl.password = password
      const result = await cli(['idle', '--terminate', '--yes', '--url', roleUrl.toString()])
      expect(result.code).toBe(4)
      expect(result.stdout).toMatch(
        new RegExp(
          `^Failed to terminate pid ${hold.pid} \\(holder, idle for .*\\): permission denied: .* \\(SQLSTATE ` +
            `42501\\)\\.$`,
          'm',
        ),
      )
      expect(result.stdout + result.stderr).not.toContain(password)
      expect(await h.column('select state from pg_stat_activity where pid = $1', [hold.pid])).toEqual([
        'idle in transaction',
      ])
      await hold.client.query('rollback')
    } finally {
      await waitUntil(
        `the sessions of ${role} to end`,
        async () => (await h.column('select count(*)::int from pg_stat_activity where usename = $1', [role]))[0] === 0,
      )
      await h.admin.query(`drop role ${role}`)
    }
  })
})

describe('connection, help and exit codes', () => {
  test(
    '--url wins over DATABASE_URL, which wins over PG* variables; failures name the source and ' +
      'exit 3 without the password',
    async () => {
      const port = await closedPort()
      const dead = `postgres://someone:s3cret@127.0.0.1:${port}/nowhere`
      const viaUrl = await cli(['idle', '--url', dead])
      expect(viaUrl).toEqual({
        code: 3,
        stdout: '',
        stderr:
          `pg-atomic: cannot connect to PostgreSQL at 127.0.0.1:${port} (from --url): connection refused ` +
          `(is the server running and listening there?).\n`,
      })

      expect((await cli(['idle', '--url', url()], cleanEnv({ DATABASE_URL: dead }))).code).toBe(0)
      const viaEnv = await cli(['idle'], cleanEnv({ DATABASE_URL: dead, PGHOST: 'example.invalid' }))
      expect(viaEnv.code).toBe(3)
      expect(viaEnv.stderr).toBe(
        `pg-atomic: cannot connect to PostgreSQL at 127.0.0.1:${port} (from DATABASE_URL): connection ` +
          `refused (is the server running and listening there?).\n`,
      )

      const viaPg = await cli(['idle'], cleanEnv({ PGHOST: '127.0.0.1', PGPORT: String(port), PGPASSWORD: 's3cret' }))
      expect(viaPg.stderr).toBe(
        `pg-atomic: cannot connect to PostgreSQL at 127.0.0.1:${port} (from PG* environment variables): ` +
          `connection refused (is the server running and listening there?).\n`,
      )
      expect(viaPg.code).toBe(3)

      const parsed = new URL(url())
      const pgEnv = cleanEnv({
        PGHOST: parsed.hostname,
        PGPORT: parsed.port || '5432',
        PGUSER: decodeURIComponent(parsed.username),
        PGPASSWORD: decodeURIComponent(parsed.password),
        PGDATABASE: h.testDb.name,
      })
      const ok = await cli(['idle', '--json'], pgEnv)
      expect(ok).toEqual({ code: 0, stdout: '{\n  "sessions": []\n}\n', stderr: '' })
    },
  )

  /** The parts of the test database's URL. */
  function parts(): { host: string; port: string; user: string; password: string; database: string } {
    const parsed = new URL(url())
    return {
      host: parsed.hostname,
      port: parsed.port || '5432',
      user: decodeURIComponent(parsed.username),
      password: decodeURIComponent(parsed.password),
      database: h.testDb.name,
    }
  }

  const noSessions = { code: 0, stdout: '{\n  "sessions": []\n}\n', stderr: '' }

  test(
    'regression (issue 7, defect 7): every URL form libpq accepts: postgresql://, host and port ' +
      'as parameters, several hosts tried in order',
    async () => {
      const p = parts()
      const secret = p.password === '' ? '' : `:${encodeURIComponent(p.password)}`
      const credentials = `${encodeURIComponent(p.user)}${secret}`
      const params = new URLSearchParams({
        host: p.host,
        port: p.port,
        user: p.user,
        ...(p.password === '' ? {} : { password: p.password }),
      })
      // An empty host with the host and port as parameters (node-postgres' parser alone refuses none of
      // these, but the CLI's own URL check did).
      expect(await cli(['idle', '--json', '--url', `postgresql:///${p.database}?${params.toString()}`])).toEqual(
        noSessions,
      )
      expect(
        await cli([
          'idle',
          '--json',
          '--url',
          `postgres://${credentials}@/${p.database}?host=${encodeURIComponent(p.host)}&port=${p.port}`,
        ]),
      ).toEqual(noSessions)
      // Several hosts: the first one does not answer, the second does.
      const port = await closedPort()
      expect(
        await cli([
          'idle',
          '--json',
          '--url',
          `postgres://${credentials}@127.0.0.1:${port},${p.host}:${p.port}/${p.database}`,
        ]),
      ).toEqual(noSessions)
      const other = await closedPort()
      expect(
        await cli(['idle', '--url', `postgres://${credentials}@127.0.0.1:${port},127.0.0.1:${other}/${p.database}`]),
      ).toEqual({
        code: 3,
        stdout: '',
        stderr:
          `pg-atomic: cannot connect to PostgreSQL at any of 127.0.0.1:${port}, 127.0.0.1:${other} (from ` +
          `--url): connection refused (is the server running and listening there?).\n`,
      })
    },
  )

  test(
    'regression (issue 7, defect 7): the Unix-socket forms, postgres://user@/db?host=/dir and a ' +
      'percent-encoded directory as the host',
    async () => {
      const p = parts()
      const missing = mkdtempSync(join(tmpdir(), 'pg-atomic-cli-nosocket-'))
      try {
        // No server socket in that directory: the URL is accepted and the socket is looked for there.
        expect(
          await cli(['idle', '--url', `postgres://${encodeURIComponent(p.user)}@/${p.database}?host=${missing}`]),
        ).toEqual({
          code: 3,
          stdout: '',
          stderr:
            `pg-atomic: cannot connect to PostgreSQL at ${missing} (unix socket), port 5432 (from --url): ` +
            `no server socket there.\n`,
        })
        expect(
          await cli([
            'idle',
            '--url',
            `postgresql://${encodeURIComponent(p.user)}@${encodeURIComponent(missing)}:6543/${p.database}`,
          ]),
        ).toEqual({
          code: 3,
          stdout: '',
          stderr:
            `pg-atomic: cannot connect to PostgreSQL at ${missing} (unix socket), port 6543 (from --url): ` +
            `no server socket there.\n`,
        })
      } finally {
        rmSync(missing, { recursive: true, force: true })
      }
      // When the test server listens on a Unix socket too (not the embedded server, which disables them), connect
      // through it.
      const [directories] = await h.column<string>('show unix_socket_directories')
      const [serverPort] = await h.column<string>('show port')
      const dir = (directories ?? '').split(',')[0]?.trim() ?? ''
      if (dir !== '' && existsSync(join(dir, `.s.PGSQL.${serverPort ?? ''}`))) {
        const password = p.password === '' ? '' : `&password=${encodeURIComponent(p.password)}`
        expect(
          await cli([
            'idle',
            '--json',
            '--url',
            `postgres://${encodeURIComponent(p.user)}@/${p.database}?host=${dir}&port=${serverPort ?? ''}${password}`,
          ]),
        ).toEqual(noSessions)
      }
    },
  )

  test(
    'regression (issue 7, defect 7): with USER and PGUSER unset, the user is the operating-system ' +
      'user, as in libpq',
    async () => {
      const p = parts()
      const osUser = userInfo().username
      const env = cleanEnv()
      for (const name of ['USER', 'LOGNAME', 'USERNAME']) delete env[name]
      const exists =
        (await h.column<number>('select count(*)::int from pg_roles where rolname = $1', [osUser]))[0] === 1
      const password = randomBytes(12).toString('hex')
      if (!exists) await h.admin.query(`create role ${pg.escapeIdentifier(osUser)} login password '${password}'`)
      try {
        const result = await cli(['idle', '--json', '--url', `postgres://${p.host}:${p.port}/${p.database}`], {
          ...env,
          PGPASSWORD: exists ? p.password : password,
        })
        if (!exists) expect(result).toEqual(noSessions)
        // A role of that name existed already (its password is unknown here): the attempt names it either way.
        else
          expect(result.code === 0 ? result : result.stderr).toEqual(
            result.code === 0 ? noSessions : expect.stringContaining(`"${osUser}"`),
          )
      } finally {
        if (!exists) {
          await waitUntil(
            `the sessions of ${osUser} to end`,
            async () =>
              (await h.column('select count(*)::int from pg_stat_activity where usename = $1', [osUser]))[0] === 0,
          )
          await h.admin.query(`drop role ${pg.escapeIdentifier(osUser)}`)
        }
      }
    },
  )

  test('a server that never answers: exit 3 after --connect-timeout', async () => {
    const sockets = new Set<Socket>()
    const silent = createServer((socket) => {
      sockets.add(socket)
      socket.on('error', () => undefined)
    })
    await new Promise<void>((r) => silent.listen(0, '127.0.0.1', () => r()))
    const port = (silent.address() as { port: number }).port
    try {
      const result = await cli([
        'locks',
        '--connect-timeout',
        '300ms',
        '--url',
        `postgres://someone:s3cret@127.0.0.1:${port}/app`,
      ])
      expect(result).toEqual({
        code: 3,
        stdout: '',
        stderr:
          `pg-atomic: cannot connect to PostgreSQL at 127.0.0.1:${port} (from --url): no answer within ` +
          `300ms (--connect-timeout).\n`,
      })
    } finally {
      for (const socket of sockets) socket.destroy()
      await new Promise<void>((r) => silent.close(() => r()))
    }
  })

  test('a malformed URL is a usage error (2) that does not repeat the URL', async () => {
    const bad = await cli(['locks', '--url', 'postgres://user:s3cret@db.example:port/app'])
    expect(bad).toEqual({
      code: 2,
      stdout: '',
      stderr:
        'pg-atomic: the connection URL from --url has an invalid port: a port is a number from 1 to ' +
        '65535; write it like postgres://user:password@host:5432/database.\n',
    })
    const mysql = await cli(['locks', '--url', 'mysql://user:s3cret@db.example/app'])
    expect(mysql).toEqual({
      code: 2,
      stdout: '',
      stderr:
        'pg-atomic: the connection URL from --url must start with postgres:// or postgresql:// (it ' +
        'starts with mysql://).\n',
    })
    const notUrl = await cli(['locks', '--url', 'host=db user=s3cret'])
    expect(notUrl).toEqual({
      code: 2,
      stdout: '',
      stderr:
        'pg-atomic: the connection URL from --url is not a valid URL; ' +
        'write it like postgres://user:password@host:5432/database.\n',
    })
    const ports = await cli(['locks', '--url', 'postgres://u:s3cret@h1,h2,h3/app?port=1,2'])
    expect(ports).toEqual({
      code: 2,
      stdout: '',
      stderr:
        'pg-atomic: the connection URL from --url gives 2 ports for 3 hosts; give one port for all ' +
        'hosts, or one per host.\n',
    })
    const attrs = await cli(['locks', '--url', 'postgres://u:s3cret@h1,h2/app?target_session_attrs=read-write'])
    expect(attrs.code).toBe(2)
    expect(attrs.stderr).toBe(
      'pg-atomic: target_session_attrs=read-write in the connection URL from --url is not supported: ' +
        'pg-atomic tries the hosts in order and uses the first that answers. Leave it out, or name ' +
        'the host you want.\n',
    )
    for (const result of [bad, mysql, notUrl, ports, attrs]) expect(result.stderr).not.toContain('s3cret')
  })

  test('--help, command help, --version, unknown command and option', async () => {
    const help = await cli(['--help'])
    expect(help.code).toBe(0)
    expect(help.stdout).toContain('Usage:\n  pg-atomic <command> [options]')
    expect(help.stdout).toContain('Exit codes: 0 ok, 1 error, 2 usage error, 3 cannot connect, 4 permission denied.')
    for (const command of ['locks', 'explain-locks', 'idle']) {
      const own = await cli([command, '--help'])
      expect(own.code).toBe(0)
      expect(own.stdout.startsWith(`Usage: pg-atomic ${command}`)).toBe(true)
      expect((await cli(['help', command])).stdout).toBe(own.stdout)
    }
    const pkg = JSON.parse(readFileSync(join(ROOT, 'packages', 'pg-atomic-cli', 'package.json'), 'utf8')) as {
      version: string
    }
    expect(await cli(['--version'])).toEqual({ code: 0, stdout: `${pkg.version}\n`, stderr: '' })
    expect(await cli(['frobnicate'])).toEqual({
      code: 2,
      stdout: '',
      stderr:
        "pg-atomic: unknown command 'frobnicate'; the commands are locks, explain-locks, idle. Run " +
        "'pg-atomic --help' for help.\n",
    })
    expect(await cli([])).toEqual({
      code: 2,
      stdout: '',
      stderr: "pg-atomic: a command is missing: locks, explain-locks, idle. Run 'pg-atomic --help' for help.\n",
    })
    expect((await cli(['locks', '--interval', '1s'])).code).toBe(2)
  })

  test(
    "regression (issue 7, defect 7): parseArgs' errors become the command line's own one-line messages, " + 'exit 2',
    async () => {
      const usage = (stderr: string): Result => ({ code: 2, stdout: '', stderr: `pg-atomic: ${stderr}\n` })
      expect(await cli(['locks', '--bogus'])).toEqual(
        usage("unknown option --bogus for pg-atomic locks. Run 'pg-atomic locks --help' for the options."),
      )
      expect(await cli(['idle', '-x'])).toEqual(
        usage("unknown option -x for pg-atomic idle. Run 'pg-atomic idle --help' for the options."),
      )
      expect(await cli(['--bogus'])).toEqual(
        usage("unknown option --bogus for pg-atomic. Run 'pg-atomic --help' for the options."),
      )
      expect(await cli(['locks', '--url'])).toEqual(
        usage("option --url needs a value: --url <value>. Run 'pg-atomic locks --help' for the options."),
      )
      // Node's own message for this one spans three lines.
      expect(await cli(['locks', '--url', '--json'])).toEqual(
        usage(
          'option --url is followed by another option instead of its value; write --url=<value> when ' +
            "the value starts with a dash. Run 'pg-atomic locks --help' for the options.",
        ),
      )
      expect(await cli(['locks', '--json=yes'])).toEqual(
        usage("option --json takes no value. Run 'pg-atomic locks --help' for the options."),
      )
      // A stray argument is not repeated: it may be a URL with a password, given without --url.
      expect(await cli(['idle', 'postgres://u:s3cret@db/app'])).toEqual(
        usage(
          "pg-atomic idle takes no arguments, and one was given (options start with --). Run 'pg-atomic " +
            "idle --help' for the options.",
        ),
      )
    },
  )
})
