/**
 * A database per worker cloned from a template (pg-atomic/testing): the template migrated once,
 * a clone per worker id with its schema and data, separate from the others, reused on the next
 * call, and everything dropped afterwards. Also the commit-for-real mode's option checks.
 */
import { randomBytes } from 'node:crypto'
import pg from 'pg'
import { InvalidOptionError, createDatabase } from 'pg-atomic'
import {
  dropTemplateDatabases,
  prepareTemplateDatabase,
  startTestTransaction,
  useCommittingTests,
  workerDatabaseUrl,
} from 'pg-atomic/testing'
import { adminUrl } from '../support/database'

const template = `pga_tpl_${randomBytes(4).toString('hex')}`
const serverUrl = () => adminUrl()

async function withClient<T>(url: string, fn: (client: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client({ connectionString: url })
  await client.connect()
  try {
    return await fn(client)
  } finally {
    await client.end()
  }
}

const databases = () =>
  withClient(serverUrl(), async (c) =>
    (
      await c.query<{ datname: string }>('select datname from pg_database where starts_with(datname, $1) order by 1', [
        template,
      ])
    ).rows.map((r) => r.datname),
  )

afterAll(async () => {
  await dropTemplateDatabases({ serverUrl: serverUrl(), template })
})

test('the template is migrated once; each worker gets a clone of its own, reused; all dropped after', async () => {
  let migrations = 0
  await prepareTemplateDatabase({
    serverUrl: serverUrl(),
    template,
    migrate: (url) =>
      withClient(url, async (c) => {
        migrations++
        await c.query("create table plans (name text primary key); insert into plans values ('free')")
      }),
  })
  const one = await workerDatabaseUrl({ serverUrl: serverUrl(), template, workerId: '1' })
  const two = await workerDatabaseUrl({ serverUrl: serverUrl(), template, workerId: '2' })
  expect(await workerDatabaseUrl({ serverUrl: serverUrl(), template, workerId: '1' })).toBe(one)
  expect(migrations).toBe(1)
  expect(await databases()).toEqual([template, `${template}_worker_1`, `${template}_worker_2`])

  await withClient(one, (c) => c.query("insert into plans values ('pro')"))
  const plans = (url: string) =>
    withClient(url, async (c) => (await c.query<{ name: string }>('select name from plans order by 1')).rows)
  expect(await plans(one)).toEqual([{ name: 'free' }, { name: 'pro' }])
  expect(await plans(two)).toEqual([{ name: 'free' }])

  // Preparing again starts afresh: the earlier template and its clones are dropped first.
  await prepareTemplateDatabase({ serverUrl: serverUrl(), template, migrate: async () => {} })
  expect(await databases()).toEqual([template])
  await workerDatabaseUrl({ serverUrl: serverUrl(), template, workerId: '3' })
  await dropTemplateDatabases({ serverUrl: serverUrl(), template })
  expect(await databases()).toEqual([])
})

test('a name that cannot be a database is refused before any SQL', async () => {
  await expect(
    workerDatabaseUrl({ serverUrl: serverUrl(), template: 'x'.repeat(60), workerId: '1' }),
  ).rejects.toMatchObject({ name: 'InvalidOptionError', field: 'workerId' })
})

describe('useCommittingTests', () => {
  const noop = { beforeEach: () => {}, afterEach: () => {} }

  test('needs at least one table, and names that can be tables', () => {
    expect(() => useCommittingTests(noop, { truncate: [] })).toThrow(InvalidOptionError)
    expect(() => useCommittingTests(noop, { truncate: ['a.b.c'] })).toThrow(
      'The option "truncate" of useCommittingTests() names the table "a.b.c", which is not a table name: ' +
        "give 'table' or 'schema.table', each part 1 to 63 bytes without NUL.",
    )
  })

  test('is refused while a test transaction is open on the database', async () => {
    let before: (() => Promise<void>) | undefined
    useCommittingTests({ beforeEach: (fn) => (before = fn), afterEach: () => {} }, { truncate: ['t'], using: 'kit' })
    const db = createDatabase({ alias: 'kit', connectionString: serverUrl() })
    const kit = await startTestTransaction({ using: 'kit' })
    try {
      await expect(before?.()).rejects.toMatchObject({
        name: 'TransactionManagementError',
        message: expect.stringMatching(/^useCommittingTests\(\) found a test transaction of pg-atomic\/testing open/),
      })
    } finally {
      await kit.end()
      await db.close()
    }
  })
})
