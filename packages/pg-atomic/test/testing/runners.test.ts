/**
 * pg-atomic/testing under the real runners (issue 10 §2): jest, vitest and node:test run the
 * fixture project in fixtures/ as subprocesses, on a database of this file's own (DATABASE_URL),
 * each with the same cases (fixtures/suite.ts): rows of a test gone for the next, a fixture made
 * once stays, durable and retried services, captured hooks with and without execute, Kysely through
 * db.pool, and the commit-for-real mode truncating after each test. Each run must report exactly
 * the suite's tests as passed, and leave nothing committed and no session idle in transaction.
 */
import { spawn } from 'node:child_process'
import { mkdir, mkdtemp, readFile, readdir, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import pg from 'pg'
import { TEST_SERVER_URL_ENV } from 'pg-atomic/testing'
import { createTestDatabase } from '../support/database'
import type { TestDatabase } from '../support/database'
import { SUITE_TESTS } from './fixtures/suite'

const FIXTURES = join(__dirname, 'fixtures')
const ROOT = join(__dirname, '../../../..')
const bin = (path: string) => join(ROOT, 'node_modules', path)

interface Outcome {
  code: number | null
  stdout: string
  stderr: string
}

/**
 * Runs `node <args>` in a fixture folder with DATABASE_URL set (or, when `undefined`, with no
 * server named at all: not even an inherited test server), and collects its output.
 */
function runNode(
  args: string[],
  databaseUrl: string | undefined,
  options: { cwd?: string; env?: NodeJS.ProcessEnv } = {},
): Promise<Outcome> {
  const env: NodeJS.ProcessEnv = { ...process.env, ...options.env, FORCE_COLOR: '0', NO_COLOR: '1' }
  // The child is a runner of its own, not one of this run's workers.
  for (const name of ['JEST_WORKER_ID', 'NODE_OPTIONS', 'VITEST', 'VITEST_POOL_ID', 'VITEST_WORKER_ID']) {
    delete env[name]
  }
  for (const name of ['DATABASE_URL', 'PGHOST', 'PGPORT', 'PGDATABASE', 'PGUSER', 'PGPASSWORD', TEST_SERVER_URL_ENV]) {
    delete env[name]
  }
  if (databaseUrl !== undefined) env['DATABASE_URL'] = databaseUrl
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, args, {
      cwd: options.cwd ?? FIXTURES,
      env,
      stdio: ['ignore', 'pipe', 'pipe'],
    })
    let stdout = ''
    let stderr = ''
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()))
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()))
    child.on('error', reject)
    child.on('close', (code) => resolve({ code, stdout, stderr }))
  })
}

interface Counts {
  passed: number
  failed: number
}

/** The counts of a jest-style JSON report (jest's --json, vitest's json reporter). */
async function jsonCounts(file: string): Promise<Counts> {
  const report = JSON.parse(await readFile(file, 'utf8')) as { numPassedTests: number; numFailedTests: number }
  return { passed: report.numPassedTests, failed: report.numFailedTests }
}

/** The counts of node:test's TAP summary (`# pass 9`, `# fail 0`). */
function tapCounts(stdout: string): Counts {
  const count = (label: string) => Number(new RegExp(`^# ${label} (\\d+)$`, 'm').exec(stdout)?.[1] ?? NaN)
  return { passed: count('pass'), failed: count('fail') }
}

let testDb: TestDatabase
let admin: pg.Pool
let reports: string

beforeAll(async () => {
  testDb = await createTestDatabase('testing runners')
  admin = new pg.Pool({ connectionString: testDb.directUrl, max: 2 })
  await admin.query(
    'create table users (id serial primary key, name text not null); ' +
      'create table ledger (id serial primary key, note text not null)',
  )
  reports = await mkdtemp(join(tmpdir(), 'pg-atomic-runners-'))
})

afterAll(async () => {
  await admin?.end()
  await rm(reports, { recursive: true, force: true })
  // Throws when a session of the children is still idle in transaction or holds an advisory lock.
  await testDb?.drop()
})

afterEach(async () => {
  // Nothing committed: the test transactions rolled back, the commit-for-real tests truncated.
  const { rows } = await admin.query<{ users: number; ledger: number }>(
    'select (select count(*) from users)::int as users, (select count(*) from ledger)::int as ledger',
  )
  expect(rows[0]).toEqual({ users: 0, ledger: 0 })
})

const explain = (outcome: Outcome) => `exit code ${outcome.code}\n${outcome.stdout}\n${outcome.stderr}`

test('jest (its globals) runs the suite: every test passes, nothing is left committed', async () => {
  const report = join(reports, 'jest.json')
  const outcome = await runNode(
    [bin('jest/bin/jest.js'), '--config', 'jest.config.json', '--json', '--outputFile', report],
    testDb.url,
  )
  if (outcome.code !== 0) throw new Error(explain(outcome))
  expect(await jsonCounts(report)).toEqual({ passed: SUITE_TESTS, failed: 0 })
}, 120_000)

test('vitest 4 (its imported functions) runs the suite: every test passes, nothing is left committed', async () => {
  const report = join(reports, 'vitest.json')
  const outcome = await runNode(
    [bin('vitest/vitest.mjs'), 'run', '--root', FIXTURES, '--reporter=json', `--outputFile=${report}`],
    testDb.url,
  )
  if (outcome.code !== 0) throw new Error(explain(outcome))
  expect(await jsonCounts(report)).toEqual({ passed: SUITE_TESTS, failed: 0 })
}, 120_000)

test('node:test (before / after) runs the suite: every test passes, nothing is left committed', async () => {
  const outcome = await runNode(
    ['--require', './register.js', '--test-reporter=tap', '--test', 'kit.node.ts'],
    testDb.url,
  )
  if (outcome.code !== 0) throw new Error(explain(outcome))
  expect(tapCounts(outcome.stdout)).toEqual({ passed: SUITE_TESTS, failed: 0 })
}, 120_000)

// ---- parallel workers: a database per worker, cloned from a template migrated once ----------------

const WORKERS = join(FIXTURES, 'workers')

/**
 * The parallel-workers runs start runners, servers and databases of their own: they run once per CI
 * run, in the run on the machine's PostgreSQL (DATABASE_URL set, no pooler). The embedded and
 * PgBouncer runs would only repeat them (the jest one starts its own embedded server anyway).
 */
const workersTest: typeof test =
  process.env['DATABASE_URL'] !== undefined && process.env['PG_ATOMIC_TEST_POOLER_URL'] === undefined ? test : test.skip

interface WorkerReport {
  file: string
  database: string
  port: number
}

/** What each test file of the workers fixture reported: the database and server it ran on. */
async function workerReports(dir: string): Promise<WorkerReport[]> {
  const files = (await readdir(dir)).sort()
  return Promise.all(files.map(async (f) => JSON.parse(await readFile(join(dir, f), 'utf8')) as WorkerReport))
}

/** Whether a connection to 127.0.0.1:`port` is refused (the server is gone). */
async function refused(port: number): Promise<boolean> {
  const client = new pg.Client({ host: '127.0.0.1', port, user: 'postgres', database: 'postgres' })
  try {
    await client.connect()
    await client.end()
    return false
  } catch (error) {
    return (error as { code?: unknown }).code === 'ECONNREFUSED'
  }
}

workersTest(
  'zero set-up under jest: no DATABASE_URL, an embedded server for the run, a database per worker from the ' +
    'template, all removed afterwards',
  async () => {
    const dir = join(reports, 'jest-workers')
    await mkdir(dir)
    const template = `kit_jest_${process.pid}`
    const report = join(reports, 'jest-workers.json')
    const outcome = await runNode(
      [bin('jest/bin/jest.js'), '--config', 'jest.config.json', '--json', '--outputFile', report],
      undefined,
      { cwd: WORKERS, env: { KIT_REPORTS: dir, KIT_TEMPLATE: template } },
    )
    if (outcome.code !== 0) throw new Error(explain(outcome))
    expect(await jsonCounts(report)).toEqual({ passed: 4, failed: 0 })
    const seen = await workerReports(dir)
    expect(seen.map((r) => r.file)).toEqual(['a', 'b', 'c', 'd'])
    // Two workers, two clones of the template; every file on the one embedded server of the run.
    expect([...new Set(seen.map((r) => r.database))].sort()).toEqual([`${template}_worker_1`, `${template}_worker_2`])
    const ports = [...new Set(seen.map((r) => r.port))]
    expect(ports).toHaveLength(1)
    expect(ports[0]).not.toBe(Number(new URL(testDb.directUrl).port || 5432))
    // The server was stopped by the run's teardown.
    expect(await refused(ports[0] as number)).toBe(true)
  },
  180_000,
)

workersTest(
  'vitest 4 with DATABASE_URL: a database per forked worker from the template, dropped after the run',
  async () => {
    const dir = join(reports, 'vitest-workers')
    await mkdir(dir)
    const template = `kit_vitest_${process.pid}`
    const report = join(reports, 'vitest-workers.json')
    const outcome = await runNode(
      [bin('vitest/vitest.mjs'), 'run', '--root', WORKERS, '--reporter=json', `--outputFile=${report}`],
      testDb.directUrl,
      { cwd: WORKERS, env: { KIT_REPORTS: dir, KIT_TEMPLATE: template } },
    )
    if (outcome.code !== 0) throw new Error(explain(outcome))
    expect(await jsonCounts(report)).toEqual({ passed: 4, failed: 0 })
    const seen = await workerReports(dir)
    expect(seen.map((r) => r.file)).toEqual(['a', 'b', 'c', 'd'])
    expect([...new Set(seen.map((r) => r.database))].sort()).toEqual([`${template}_worker_1`, `${template}_worker_2`])
    const { rows } = await admin.query('select datname from pg_database where starts_with(datname, $1)', [template])
    expect(rows).toEqual([])
  },
  180_000,
)

workersTest(
  'node:test from a run() script: a database per file process from the template, dropped afterwards',
  async () => {
    const dir = join(reports, 'node-workers')
    await mkdir(dir)
    const template = `kit_node_${process.pid}`
    const outcome = await runNode(['--require', '../register.js', 'run-node.ts'], testDb.directUrl, {
      cwd: WORKERS,
      env: { KIT_REPORTS: dir, KIT_TEMPLATE: template },
    })
    if (outcome.code !== 0) throw new Error(explain(outcome))
    expect(tapCounts(outcome.stdout)).toEqual({ passed: 4, failed: 0 })
    const seen = await workerReports(dir)
    expect(seen.map((r) => r.file)).toEqual(['a', 'b', 'c', 'd'])
    // Each file is a process of its own, hence a worker of its own: four clones.
    const databases = new Set(seen.map((r) => r.database))
    expect(databases.size).toBe(4)
    for (const name of databases) expect(name).toMatch(new RegExp(`^${template}_worker_\\d+$`))
    const { rows } = await admin.query('select datname from pg_database where starts_with(datname, $1)', [template])
    expect(rows).toEqual([])
  },
  180_000,
)
