/**
 * Soak run (issue 3 §5): several Node processes × many concurrent atomic() blocks doing bank
 * transfers through PgBouncer in transaction pooling mode with a small server pool, with failures
 * injected, for a bounded time. Reports blocks/s, retries and errors by class, then checks that
 * nothing leaked and the bank invariant held. Exit code 0 when every check passed, 1 otherwise.
 *
 * Run: `npm run soak` (not part of `npm test`).
 *
 * Where it connects:
 * - The server: `DATABASE_URL` / `PG*` variables, else an embedded PostgreSQL (packages/devdb).
 *   A fresh database `pga_soak_<hex>` is created there and dropped afterwards.
 * - The workers: through a PgBouncer this script starts in front of that server when `pgbouncer`
 *   is on PATH (`pool_mode = transaction`, `default_pool_size` = PG_ATOMIC_SOAK_SERVER_POOL,
 *   default 4); or through `PG_ATOMIC_SOAK_URL` (a pooler you run, e.g. docker-compose's
 *   `pgbouncer` service; its database is used as is, the soak tables are dropped and created in it:
 *   use a database of its own); or,
 *   when neither is available, directly (said loudly: that is not a pooler soak).
 *
 * Environment: PG_ATOMIC_SOAK_SECONDS (default 60), PG_ATOMIC_SOAK_WORKERS (processes, default 4),
 * PG_ATOMIC_SOAK_CONCURRENCY (blocks in flight per process, default 25), PG_ATOMIC_SOAK_SEED, and
 * PG_ATOMIC_SOAK_ISOLATION=read-committed for a negative control (the naive read-compute-write
 * transfers then lose updates, and the checks must fail).
 *
 * Faults injected (each transfer draws one at random; the seed makes the plan repeatable):
 * an error thrown inside the block, a failing statement (uncaught, or caught and swallowed), a
 * statement timeout, a nested block that fails and is caught (the transfer still commits), and,
 * from a control connection, pg_terminate_backend of a random server backend every 300–700 ms.
 */
import { execFileSync, fork, spawn } from 'node:child_process'
import type { ChildProcess } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import diagnostics_channel from 'node:diagnostics_channel'
import { chownSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs'
import net from 'node:net'
import { tmpdir } from 'node:os'
import path from 'node:path'
import pg from 'pg'
import { startDatabase } from '@pg-atomic/devdb'
import { RETRY_CHANNEL, atomic, createDatabase } from 'pg-atomic'

const SECONDS = Number(process.env.PG_ATOMIC_SOAK_SECONDS ?? 60)
const WORKERS = Number(process.env.PG_ATOMIC_SOAK_WORKERS ?? 4)
const CONCURRENCY = Number(process.env.PG_ATOMIC_SOAK_CONCURRENCY ?? 25)
const SERVER_POOL = Number(process.env.PG_ATOMIC_SOAK_SERVER_POOL ?? 4)
const ISOLATION = process.env.PG_ATOMIC_SOAK_ISOLATION === 'read-committed' ? 'read committed' : 'serializable'
const SEED =
  process.env.PG_ATOMIC_SOAK_SEED === undefined
    ? Math.floor(Math.random() * 2 ** 31)
    : Number(process.env.PG_ATOMIC_SOAK_SEED)
const ACCOUNTS = 20
const INITIAL = 1000
/** The application_name of the workers' sessions: the only ones the control connection terminates. */
const WORKER_APPLICATION_NAME = 'pga_soak_worker'
/** Whatever happens, the workers are killed (and the run fails) this long after the deadline. */
const GRACE_MS = 60_000

// ---- shared -----------------------------------------------------------------------------------

/** What a transfer ended as, as its worker saw it. */
type Outcome = 'applied' | 'declined' | 'failed' | 'unknown'

interface WorkerReport {
  readonly worker: number
  readonly blocks: number
  readonly retries: number
  readonly audits: number
  readonly badAudits: string[]
  readonly errors: Record<string, number>
  readonly unexpected: string[]
  readonly outcomes: Array<[string, Outcome]>
  readonly poolIdle: boolean
  readonly poolState: string
}

/** mulberry32: a small seeded PRNG. */
function prng(seed: number): () => number {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms))

// ---- worker process ---------------------------------------------------------------------------

class InjectedError extends Error {
  override name = 'InjectedError'
}

type Fault = 'none' | 'throw' | 'fail' | 'swallow' | 'timeout' | 'nested'

function pickFault(random: () => number): Fault {
  const r = random()
  if (r < 0.04) return 'throw'
  if (r < 0.07) return 'fail'
  if (r < 0.1) return 'swallow'
  if (r < 0.12) return 'timeout'
  if (r < 0.2) return 'nested'
  return 'none'
}

/** A short name for an error: its class, plus SQLSTATE and the cause's class when it has them. */
function classify(error: unknown): string {
  if (!(error instanceof Error)) return `non-Error ${typeof error}`
  const code = (error as { code?: unknown }).code
  const cause = error.cause instanceof Error ? error.cause : undefined
  const causeCode = (cause as { code?: unknown } | undefined)?.code
  let name = error.name
  if (typeof code === 'string') name += ` ${code}`
  if (cause !== undefined) name += ` (cause ${cause.name}${typeof causeCode === 'string' ? ` ${causeCode}` : ''})`
  return name
}

/** Errors the injected faults (and the terminations) are expected to produce. */
function expected(name: string): boolean {
  return (
    name === 'InjectedError' ||
    name === 'error 22012' || // failing statement, uncaught
    name === 'error 57014' || // statement timeout
    name.startsWith('TransactionManagementError (cause error 22012)') || // swallowed failure: no silent loss
    name.startsWith('ConnectionLostError') ||
    name.startsWith('CommitOutcomeUnknownError') ||
    name === 'error 40001' || // retries exhausted under contention
    name === 'error 40P01'
  )
}

async function worker(index: number, url: string, deadline: number): Promise<WorkerReport> {
  const unexpected: string[] = []
  process.on('unhandledRejection', (reason) => unexpected.push(`unhandled rejection: ${classify(reason)}`))
  process.on('uncaughtException', (error) => unexpected.push(`uncaught exception: ${classify(error)}`))
  let retries = 0
  diagnostics_channel.subscribe(RETRY_CHANNEL, () => {
    retries++
  })
  // Our own pool, so that its counts can be checked at the end.
  const pool = new pg.Pool({
    connectionString: url,
    max: CONCURRENCY,
    connectionTimeoutMillis: 10_000,
    application_name: WORKER_APPLICATION_NAME,
  })
  let idleErrors = 0
  pool.on('error', () => {
    idleErrors++ // an idle connection failed (a direct run: its backend was terminated); pg-pool drops it
  })
  const db = createDatabase({
    pool,
    transactionPooling: true,
    // Every statement, lock wait and idle moment is bounded (SET LOCAL: safe behind the pooler).
    statementTimeout: 10_000,
    lockTimeout: 5_000,
    idleInTransactionSessionTimeout: 10_000,
    acquireTimeoutMs: 20_000,
    logger: { error: (message) => unexpected.push(`logged: ${message}`) },
  })
  const random = prng(SEED + index * 7919)
  const errors: Record<string, number> = {}
  const outcomes: Array<[string, Outcome]> = []
  const badAudits: string[] = []
  let blocks = 0
  let audits = 0

  const transfer = async (id: string): Promise<void> => {
    const from = 1 + Math.floor(random() * ACCOUNTS)
    const to = 1 + ((from - 1 + 1 + Math.floor(random() * (ACCOUNTS - 1))) % ACCOUNTS)
    const amount = 1 + Math.floor(random() * 200)
    const fault = pickFault(random)
    blocks++
    try {
      const applied = await atomic(
        {
          isolationLevel: ISOLATION,
          retry: { maxAttempts: 10, baseDelayMs: 2, maxDelayMs: 200 },
          name: 'transfer',
          ...(fault === 'timeout' ? { statementTimeout: 20 } : {}),
        },
        async (tx) => {
          const { rows } = await tx.query<{ id: number; balance: number }>(
            'select id, balance from soak_accounts where id = any($1::int[]) order by id',
            [[from, to]],
          )
          const balance = new Map(rows.map((r) => [r.id, r.balance]))
          const ok = (balance.get(from) as number) >= amount
          if (ok) {
            const writes: Array<[number, number]> = [
              [from, (balance.get(from) as number) - amount],
              [to, (balance.get(to) as number) + amount],
            ]
            writes.sort((a, b) => a[0] - b[0])
            for (const [account, value] of writes)
              await tx.query('update soak_accounts set balance = $2 where id = $1', [account, value])
          }
          if (fault === 'nested') {
            // A savepoint that fails and is caught: only its own work is rolled back.
            try {
              await atomic(async () => {
                await tx.query('insert into soak_notes (transfer_id) values ($1)', [id])
                throw new InjectedError('nested')
              })
            } catch (error) {
              if (!(error instanceof InjectedError)) throw error
            }
          }
          await tx.query(
            'insert into soak_transfers (id, from_id, to_id, amount, applied) values ($1, $2, $3, $4, $5)',
            [id, from, to, amount, ok],
          )
          if (fault === 'throw') throw new InjectedError('thrown inside the block')
          if (fault === 'fail') await tx.query('select 1/0')
          if (fault === 'swallow') {
            try {
              await tx.query('select 1/0')
            } catch {
              // swallowed on purpose: the block must not commit (TransactionManagementError)
            }
          }
          if (fault === 'timeout') await tx.query('select pg_sleep(0.2)')
          return ok
        },
      )
      outcomes.push([id, applied ? 'applied' : 'declined'])
    } catch (error) {
      const name = classify(error)
      errors[name] = (errors[name] ?? 0) + 1
      if (!expected(name))
        unexpected.push(`transfer ${id}: ${name}: ${error instanceof Error ? error.message : String(error)}`)
      outcomes.push([id, name.startsWith('CommitOutcomeUnknownError') ? 'unknown' : 'failed'])
    }
  }

  const audit = async (): Promise<void> => {
    try {
      const row = await atomic(
        { isolationLevel: 'serializable', readOnly: true, deferrable: true, name: 'audit' },
        async (tx) => {
          const { rows } = await tx.query<{ sum: number; count: number; min: number }>(
            'select sum(balance)::int as sum, count(*)::int as count, min(balance) as min from soak_accounts',
          )
          return rows[0] as { sum: number; count: number; min: number }
        },
      )
      audits++
      if (row.sum !== ACCOUNTS * INITIAL || row.count !== ACCOUNTS || row.min < 0) badAudits.push(JSON.stringify(row))
    } catch (error) {
      const name = classify(error)
      errors[`audit: ${name}`] = (errors[`audit: ${name}`] ?? 0) + 1
      if (!expected(name)) unexpected.push(`audit: ${name}: ${error instanceof Error ? error.message : String(error)}`)
    }
  }

  const loops = Array.from({ length: CONCURRENCY }, async (_unused, loop) => {
    for (let n = 0; Date.now() < deadline; n++) {
      if (loop === 0 && n % 20 === 0) await audit()
      else await transfer(`w${index}-l${loop}-${n}`)
    }
  })
  await Promise.all(loops)
  const poolState = `total ${pool.totalCount}, idle ${pool.idleCount}, waiting ${pool.waitingCount}`
  const poolIdle = pool.totalCount === pool.idleCount && pool.waitingCount === 0
  await db.close({ timeoutMs: 5_000 })
  await pool.end()
  if (idleErrors > 0) errors['idle connection failed (dropped by pg-pool)'] = idleErrors
  return { worker: index, blocks, retries, audits, badAudits, errors, unexpected, outcomes, poolIdle, poolState }
}

// ---- PgBouncer ----------------------------------------------------------------------------------

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer()
    server.on('error', reject)
    server.listen(0, '127.0.0.1', () => {
      const port = (server.address() as net.AddressInfo).port
      server.close(() => resolve(port))
    })
  })
}

async function waitForPort(port: number, ms: number): Promise<boolean> {
  const deadline = Date.now() + ms
  while (Date.now() < deadline) {
    const open = await new Promise<boolean>((resolve) => {
      const socket = net.connect(port, '127.0.0.1')
      socket.once('connect', () => {
        socket.destroy()
        resolve(true)
      })
      socket.once('error', () => resolve(false))
    })
    if (open) return true
    await sleep(100)
  }
  return false
}

/** The pgbouncer executable: on PATH, or Debian's /usr/sbin (not on a normal user's PATH). */
function findPgbouncer(): string | undefined {
  try {
    return (
      execFileSync('sh', ['-c', 'command -v pgbouncer || { test -x /usr/sbin/pgbouncer && echo /usr/sbin/pgbouncer; }'])
        .toString()
        .trim() || undefined
    )
  } catch {
    return undefined
  }
}

interface Bouncer {
  readonly url: (database: string) => string
  readonly version: string
  stop(): Promise<void>
}

/** Starts PgBouncer (transaction pooling, small server pool) in front of `server`, as in CI. */
async function startBouncer(binary: string, server: URL): Promise<Bouncer> {
  const dir = mkdtempSync(path.join(tmpdir(), 'pg-atomic-soak-'))
  const port = await freePort()
  const user = decodeURIComponent(server.username || 'postgres')
  const password = decodeURIComponent(server.password)
  writeFileSync(path.join(dir, 'userlist.txt'), `"${user}" ""\n`)
  const target =
    `host=${server.hostname} port=${server.port || 5432} user=${user}` +
    (password === '' ? '' : ` password=${password}`)
  writeFileSync(
    path.join(dir, 'pgbouncer.ini'),
    [
      '[databases]',
      `* = ${target}`,
      '',
      '[pgbouncer]',
      'listen_addr = 127.0.0.1',
      `listen_port = ${port}`,
      'unix_socket_dir =',
      'auth_type = trust',
      `auth_file = ${path.join(dir, 'userlist.txt')}`,
      'pool_mode = transaction',
      `default_pool_size = ${SERVER_POOL}`,
      'max_client_conn = 500',
      'server_round_robin = 1',
      'query_wait_timeout = 30',
      `logfile = ${path.join(dir, 'pgbouncer.log')}`,
      '',
    ].join('\n'),
    { mode: 0o600 },
  )
  // PgBouncer refuses to run as root: run it as the postgres user (or nobody) then.
  let child: ChildProcess
  if (process.getuid?.() === 0) {
    let runAs = 'postgres'
    try {
      execFileSync('id', [runAs], { stdio: 'ignore' })
    } catch {
      runAs = 'nobody'
    }
    const uid = Number(execFileSync('id', ['-u', runAs]).toString().trim())
    for (const file of ['', 'pgbouncer.ini', 'userlist.txt']) chownSync(path.join(dir, file), uid, -1)
    child = spawn('runuser', ['-u', runAs, '--', binary, path.join(dir, 'pgbouncer.ini')], { stdio: 'ignore' })
  } else {
    child = spawn(binary, [path.join(dir, 'pgbouncer.ini')], { stdio: 'ignore' })
  }
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()))
  if (!(await waitForPort(port, 10_000))) {
    child.kill()
    throw new Error(`PgBouncer did not start listening on 127.0.0.1:${port} (log in ${dir})`)
  }
  const version = execFileSync(binary, ['--version']).toString().split('\n')[0] ?? 'PgBouncer'
  return {
    version,
    url: (database) => `postgres://${encodeURIComponent(user)}@127.0.0.1:${port}/${encodeURIComponent(database)}`,
    async stop() {
      child.kill('SIGTERM')
      await Promise.race([exited, sleep(5_000)])
      rmSync(dir, { recursive: true, force: true })
    },
  }
}

// ---- controller -------------------------------------------------------------------------------

function spawnWorker(
  index: number,
  url: string,
  deadline: number,
): { child: ChildProcess; report: Promise<WorkerReport> } {
  const child = fork(__filename, ['--worker', String(index), url, String(deadline)], {
    stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
  })
  const report = new Promise<WorkerReport>((resolve, reject) => {
    let got: WorkerReport | undefined
    child.on('message', (message) => {
      got = message as WorkerReport
    })
    child.once('exit', (code, signal) => {
      if (got !== undefined) resolve(got)
      else reject(new Error(`worker ${index} exited (code ${code}, signal ${signal}) without a report`))
    })
  })
  return { child, report }
}

async function main(): Promise<number> {
  const external = process.env.PG_ATOMIC_SOAK_URL || undefined
  // With PG_ATOMIC_SOAK_URL everything goes through that pooler; otherwise a server is found or
  // started (DATABASE_URL / PG* / embedded) and a fresh database is created on it.
  const server = external === undefined ? await startDatabase() : undefined
  let admin: pg.Client | undefined
  let bouncer: Bouncer | undefined
  let database: string | undefined
  let through: string
  let workersUrl: string
  let control: pg.Client | undefined
  const failures: string[] = []
  const connect = async (url: string): Promise<pg.Client> => {
    const client = new pg.Client({ connectionString: url, application_name: 'pga_soak_control' })
    client.on('error', () => undefined)
    await client.connect()
    return client
  }
  try {
    if (external !== undefined || server === undefined) {
      workersUrl = external as string
      through = `PG_ATOMIC_SOAK_URL (${new URL(workersUrl).host}); setup, terminations and checks go through it too`
      control = await connect(workersUrl)
    } else {
      admin = await connect(server.url)
      database = `pga_soak_${randomBytes(4).toString('hex')}`
      await admin.query(`create database ${pg.escapeIdentifier(database)}`)
      const direct = new URL(server.url)
      direct.pathname = `/${database}`
      const binary = findPgbouncer()
      if (binary !== undefined) {
        bouncer = await startBouncer(binary, new URL(server.url))
        workersUrl = bouncer.url(database)
        through = `${bouncer.version}, pool_mode = transaction, default_pool_size = ${SERVER_POOL}`
      } else {
        workersUrl = direct.toString()
        through = 'DIRECT CONNECTIONS: no pgbouncer on PATH and no PG_ATOMIC_SOAK_URL, so this is not a pooler soak'
      }
      control = await connect(direct.toString())
    }
    const { rows: dbRows } = await control.query<{ db: string; version: string }>(
      'select current_database() as db, current_setting($$server_version$$) as version',
    )
    const soakDb = dbRows[0]?.db as string
    await control.query(`
      drop table if exists soak_accounts, soak_transfers, soak_notes;
      create table soak_accounts (id int primary key, balance int not null check (balance >= 0));
      -- No unique key: a transfer applied twice must show up as two rows.
      create table soak_transfers (
        id text not null, from_id int not null, to_id int not null, amount int not null, applied boolean not null
      );
      create table soak_notes (transfer_id text not null);
    `)
    await control.query('insert into soak_accounts (id, balance) select i, $1 from generate_series(1, $2) i', [
      INITIAL,
      ACCOUNTS,
    ])

    console.log(
      `pg-atomic soak: ${WORKERS} processes × ${CONCURRENCY} concurrent blocks for ${SECONDS} s, ` +
        `transfers at ${ISOLATION.toUpperCase()}, seed ${SEED}`,
    )
    console.log(
      `  PostgreSQL ${dbRows[0]?.version}${server === undefined ? '' : ` (${server.source})`}, database ${soakDb}`,
    )
    console.log(`  through: ${through}`)

    const started = Date.now()
    const deadline = started + SECONDS * 1000
    const workers = Array.from({ length: WORKERS }, (_unused, i) => spawnWorker(i, workersUrl, deadline))

    // Terminate a random server backend of the soak database every 300–700 ms until the deadline.
    let terminations = 0
    const random = prng(SEED)
    const killer = (async () => {
      while (Date.now() < deadline - 1000) {
        await sleep(300 + Math.floor(random() * 400))
        try {
          const { rows } = await (control as pg.Client).query<{ pid: number }>(
            // Only the soak's own sessions (PgBouncer sets the client's application_name on the server).
            'select pid from pg_stat_activity where datname = $1 and application_name = $2 and pid <> pg_backend_pid()',
            [soakDb, WORKER_APPLICATION_NAME],
          )
          const victim = rows[Math.floor(random() * rows.length)]
          if (victim === undefined) continue
          const { rows: done } = await (control as pg.Client).query<{ ok: boolean }>(
            'select pg_terminate_backend($1) as ok',
            [victim.pid],
          )
          if (done[0]?.ok === true) terminations++
        } catch (error) {
          // Through a pooler the control session's own server connection can be the victim.
          if (external === undefined) {
            failures.push(`control connection failed: ${classify(error)}`)
            return
          }
          await control?.end().catch(() => undefined)
          control = await connect(workersUrl)
        }
      }
    })()

    const watchdog = setTimeout(
      () => {
        failures.push(`workers still running ${GRACE_MS / 1000} s after the deadline: killed`)
        for (const w of workers) w.child.kill('SIGKILL')
      },
      SECONDS * 1000 + GRACE_MS,
    )
    const settled = await Promise.allSettled(workers.map((w) => w.report))
    clearTimeout(watchdog)
    await killer
    const elapsed = (Date.now() - started) / 1000
    const reports: WorkerReport[] = []
    for (const s of settled) {
      if (s.status === 'fulfilled') reports.push(s.value)
      else failures.push(String(s.reason))
    }

    // ---- report
    const blocks = reports.reduce((n, r) => n + r.blocks, 0)
    const outcomes = new Map<string, Outcome>()
    for (const r of reports) for (const [id, outcome] of r.outcomes) outcomes.set(id, outcome)
    const count = (o: Outcome) => [...outcomes.values()].filter((v) => v === o).length
    const errors = new Map<string, number>()
    for (const r of reports)
      for (const [name, n] of Object.entries(r.errors)) errors.set(name, (errors.get(name) ?? 0) + n)
    console.log(`\n  ${blocks} transfer blocks in ${elapsed.toFixed(1)} s: ${(blocks / elapsed).toFixed(0)} blocks/s`)
    console.log(
      `  committed ${count('applied')} applied + ${count('declined')} declined (insufficient funds), ` +
        `failed ${count('failed')}, outcome unknown ${count('unknown')}`,
    )
    console.log(`  retries (retry events): ${reports.reduce((n, r) => n + r.retries, 0)}`)
    console.log(`  audits (serializable read-only deferrable): ${reports.reduce((n, r) => n + r.audits, 0)}`)
    console.log(`  backends terminated by the control connection: ${terminations}`)
    console.log('  errors by class:')
    for (const [name, n] of [...errors.entries()].sort((a, b) => b[1] - a[1]))
      console.log(`    ${String(n).padStart(7)}  ${name}`)

    // ---- checks
    for (const r of reports) {
      if (!r.poolIdle) failures.push(`worker ${r.worker}: pool not idle at the end (${r.poolState})`)
      for (const u of r.unexpected.slice(0, 10)) failures.push(`worker ${r.worker}: unexpected: ${u}`)
      if (r.unexpected.length > 10)
        failures.push(`worker ${r.worker}: ... and ${r.unexpected.length - 10} more unexpected errors`)
      for (const a of r.badAudits) failures.push(`worker ${r.worker}: an audit saw a wrong total: ${a}`)
    }
    // Leaks: the sessions settle once the workers are gone (bounded wait).
    let stuck: Array<{ pid: number; state: string; query: string }> = []
    let locks: Array<{ pid: number; mode: string }> = []
    for (let i = 0; i < 50; i++) {
      stuck = (
        await control.query<{ pid: number; state: string; query: string }>(
          'select pid, state, left(query, 100) as query from pg_stat_activity ' +
            "where datname = $1 and state like 'idle in transaction%'",
          [soakDb],
        )
      ).rows
      locks = (
        await control.query<{ pid: number; mode: string }>(
          "select pid, mode from pg_locks where locktype = 'advisory' " +
            'and database = (select oid from pg_database where datname = $1)',
          [soakDb],
        )
      ).rows
      if (stuck.length === 0 && locks.length === 0) break
      await sleep(100)
    }
    for (const s of stuck) failures.push(`session ${s.pid} left '${s.state}' (last query: ${s.query})`)
    for (const l of locks) failures.push(`advisory lock left (${l.mode}) by pid ${l.pid}`)
    // The bank: the total never changes, no balance is negative, every transfer is logged at most
    // once, exactly as its worker was told, and the log explains every balance.
    const balances = (
      await control.query<{ id: number; balance: number }>('select id, balance from soak_accounts order by id')
    ).rows
    const total = balances.reduce((n, b) => n + b.balance, 0)
    if (total !== ACCOUNTS * INITIAL) failures.push(`total is ${total}, expected ${ACCOUNTS * INITIAL}`)
    if (balances.some((b) => b.balance < 0)) failures.push('a balance is negative')
    const logged = (
      await control.query<{ id: string; n: number; applied: boolean; from_id: number; to_id: number; amount: number }>(
        'select id, count(*)::int as n, bool_and(applied) as applied, ' +
          'min(from_id) as from_id, min(to_id) as to_id, min(amount) as amount from soak_transfers group by id',
      )
    ).rows
    const inLog = new Map(logged.map((r) => [r.id, r]))
    const twice = logged.filter((r) => r.n > 1)
    if (twice.length > 0) failures.push(`${twice.length} transfers applied more than once, e.g. ${twice[0]?.id}`)
    let mismatches = 0
    for (const [id, outcome] of outcomes) {
      const row = inLog.get(id)
      const ok =
        outcome === 'applied'
          ? row?.applied === true
          : outcome === 'declined'
            ? row?.applied === false
            : outcome === 'failed'
              ? row === undefined
              : true
      if (!ok && mismatches++ < 5)
        failures.push(
          `transfer ${id}: its worker saw '${outcome}' but the log has ` +
            (row === undefined ? 'no row' : `applied = ${row.applied}`),
        )
    }
    if (mismatches > 5) failures.push(`... ${mismatches - 5} more transfers disagree with their log`)
    for (const id of inLog.keys())
      if (!outcomes.has(id)) failures.push(`transfer ${id} is in the log but no worker ran it`)
    const fromLog = new Map<number, number>()
    for (const b of balances) fromLog.set(b.id, INITIAL)
    for (const r of logged) {
      if (!r.applied) continue
      fromLog.set(r.from_id, (fromLog.get(r.from_id) as number) - r.amount * r.n)
      fromLog.set(r.to_id, (fromLog.get(r.to_id) as number) + r.amount * r.n)
    }
    const unexplained = balances.filter((b) => fromLog.get(b.id) !== b.balance)
    if (unexplained.length > 0)
      failures.push(
        `${unexplained.length} balances are not explained by the transfer log, e.g. account ${unexplained[0]?.id}`,
      )
    const notes = (await control.query<{ n: number }>('select count(*)::int as n from soak_notes')).rows[0]?.n
    if (notes !== 0) failures.push(`${notes} rows of failed nested blocks were committed`)
    if (blocks === 0) failures.push('no transfer ran at all')

    console.log(`\n  final total ${total} (expected ${ACCOUNTS * INITIAL}), ${logged.length} transfers in the log`)
    console.log(
      '  checks: no session idle in transaction, no advisory lock, every worker pool idle, ' +
        'no unexpected error or unhandled rejection,',
    )
    console.log(
      '          every audit and the final total unchanged, each transfer id logged at most once ' +
        'and as its worker was told, the log explains every balance',
    )
    if (failures.length === 0) console.log('  PASSED')
    else {
      console.log(`  FAILED (${failures.length}):`)
      for (const f of failures) console.log(`    - ${f}`)
    }
    return failures.length === 0 ? 0 : 1
  } finally {
    await control?.end().catch(() => undefined)
    await bouncer?.stop()
    if (database !== undefined)
      await admin?.query(`drop database if exists ${pg.escapeIdentifier(database)} with (force)`).catch(() => undefined)
    await admin?.end().catch(() => undefined)
    await server?.stop()
  }
}

if (process.argv[2] === '--worker') {
  const [index, url, deadline] = process.argv.slice(3)
  worker(Number(index), url as string, Number(deadline)).then(
    (report) => {
      process.send?.(report, () => process.exit(0))
    },
    (error: unknown) => {
      console.error(`worker ${index} failed:`, error)
      process.exit(1)
    },
  )
} else {
  main().then(
    (code) => {
      process.exitCode = code
    },
    (error: unknown) => {
      console.error('soak failed to run:', error)
      process.exitCode = 1
    },
  )
}
