/**
 * pg-atomic/testing in process (issue 10): a test transaction per file, a savepoint per test rolled
 * back after it, everything the code under test does joins it (blocks outermost for the code with
 * durable and retry, db.query outside blocks, db.pool and Kysely's transactions, the lock helpers),
 * onCommit hooks captured, and work after a test refused. The runners' own integration (jest,
 * vitest, node:test as subprocesses) is tested in test/testing/.
 */
import { Kysely, PostgresDialect } from 'kysely'
import { Atomic, TransactionManagementError, atomic, lockTable, onCommit } from 'pg-atomic'
import { captureOnCommit, startTestTransaction } from 'pg-atomic/testing'
import type { TestTransaction } from 'pg-atomic/testing'
import { setupHarness } from './support/harness'
import type { Harness } from './support/harness'
import { rejection } from './support/errors'

interface Tables {
  t: { x: number }
}

let h: Harness
let kit: TestTransaction

const INSERT = 'insert into t (x) values ($1)'
const inside = async () => (await h.db.query<{ x: number }>('select x from t order by x')).rows.map((r) => r.x)
const committed = () => h.column<number>('select x from t order by x')

beforeAll(async () => {
  h = await setupHarness('testing kit')
  await h.admin.query('create table t (x int not null)')
  await h.admin.query(
    'create table parent (id int primary key); ' +
      'create table child (parent_id int references parent deferrable initially deferred)',
  )
  kit = await startTestTransaction()
  // A fixture created once for the file (Django's setUpTestData): in the test transaction itself.
  await h.db.query(INSERT, [100])
})

afterAll(async () => {
  await kit.end()
  expect(await committed()).toEqual([])
  await h.close()
})

beforeEach(async () => {
  h.reset()
  await kit.beginTest()
})

afterEach(async () => {
  await kit.endTest()
})

test('rows written by a test are visible inside it, never committed, and gone for the next test', async () => {
  await h.db.query(INSERT, [1])
  await atomic(() => h.db.query(INSERT, [2]))
  expect(await inside()).toEqual([1, 2, 100])
  expect(await committed()).toEqual([])
})

test('the next test sees only the fixture', async () => {
  expect(await inside()).toEqual([100])
})

test('a durable block and a retried block work, as outermost blocks of the code', async () => {
  class Service {
    @Atomic({ durable: true })
    async create(x: number): Promise<void> {
      await h.db.query(INSERT, [x])
    }
  }
  await new Service().create(1)
  let attempts = 0
  await atomic({ retry: 3 }, async () => {
    attempts++
    await h.db.query(INSERT, [attempts * 10])
    if (attempts === 1) throw Object.assign(new Error('could not serialize access'), { code: '40001' })
  })
  expect(attempts).toBe(2)
  // The first attempt rolled back to its savepoint; the second stayed.
  expect(await inside()).toEqual([1, 20, 100])
})

test('a different isolation level cannot be honoured inside the test transaction: a clear error', async () => {
  const error = await rejection(atomic({ isolationLevel: 'serializable' }, () => h.db.query('select 1')))
  expect(error).toBeInstanceOf(TransactionManagementError)
  expect((error as Error).message).toBe(
    "isolationLevel 'serializable' cannot be honoured inside a test transaction of pg-atomic/testing, whose " +
      "isolationLevel is the server's default: PostgreSQL fixes it when the test transaction begins. Give the " +
      'test transaction the same option, or use the commit-for-real mode for this test.',
  )
})

test('onCommit hooks are captured, not run; captureOnCommit returns them and runs them with execute', async () => {
  const sent: string[] = []
  const hooks = await captureOnCommit(async () => {
    await atomic(async () => {
      await h.db.query(INSERT, [1])
      onCommit(() => void sent.push('welcome'))
      await atomic(() => {
        onCommit(() => void sent.push('nested'))
      })
    })
    onCommit(() => void sent.push('outside blocks'))
  })
  expect(hooks).toHaveLength(3)
  expect(sent).toEqual([])
  const executed = await captureOnCommit(
    async () => {
      await atomic(async () => {
        onCommit(() => {
          sent.push('first')
          onCommit(() => void sent.push('registered by a hook'))
        })
      })
    },
    { execute: true },
  )
  expect(executed).toHaveLength(2)
  expect(sent).toEqual(['first', 'registered by a hook'])
})

test('Kysely through db.pool, its own transaction included, joins the test transaction', async () => {
  const kdb = new Kysely<Tables>({ dialect: new PostgresDialect({ pool: h.db.pool }) })
  await kdb.insertInto('t').values({ x: 1 }).execute()
  await kdb.transaction().execute((trx) => trx.insertInto('t').values({ x: 2 }).execute())
  expect(await inside()).toEqual([1, 2, 100])
  expect(await committed()).toEqual([])
})

test('Promise.all of outermost blocks is serialized on the one connection; lock helpers join', async () => {
  await Promise.all([1, 2, 3].map((x) => atomic(() => h.db.query(INSERT, [x]))))
  await lockTable('t', 'share')
  expect(await inside()).toEqual([1, 2, 3, 100])
})

test('work that outlives its test is refused with a clear error', async () => {
  const late = new Promise<unknown>((resolve) => setTimeout(() => resolve(rejection(h.db.query('select 1'))), 50))
  await kit.endTest()
  const error = await late
  expect(error).toBeInstanceOf(TransactionManagementError)
  expect((error as Error).message).toMatch(/^The test transaction of pg-atomic\/testing is between tests/)
  await kit.beginTest()
})

test('a deferred constraint the test violated fails the test at its end, as COMMIT would (Django)', async () => {
  // The test itself: the violation is deferred, so every statement succeeds.
  await atomic(() => h.db.query('insert into child (parent_id) values ($1)', [7]))
  h.reset()
  const error = (await rejection(kit.endTest())) as Error & { code?: string }
  expect(error.constructor.name).toBe('DatabaseError')
  expect(error.code).toBe('23503')
  expect(error.message).toBe('insert or update on table "child" violates foreign key constraint "child_parent_id_fkey"')
  await kit.beginTest()
  expect((await h.db.query('select count(*)::int as n from child')).rows).toEqual([{ n: 0 }])
  // Checked, then the test's savepoint rolled back all the same (restoring the constraint modes);
  // the ROLLBACK TO rides with the next statement.
  const test = /"pga_\d+"/.exec(h.statements[1] ?? '')?.[0]
  expect(h.statements.map((sql) => sql.replace(/"pga_\d+"/, '"pga_N"'))).toEqual([
    'SET CONSTRAINTS ALL IMMEDIATE',
    'ROLLBACK TO SAVEPOINT "pga_N"',
    'RELEASE SAVEPOINT "pga_N"',
    'SAVEPOINT "pga_N"',
    'select count(*)::int as n from child',
  ])
  expect(h.statements[2]).toBe(`RELEASE SAVEPOINT ${test}`)
  // Still deferred in the next test: the check did not leak into it.
  await h.db.query('insert into child (parent_id) values ($1)', [8])
  await h.db.query('delete from child')
})

test('a test that sent nothing sends nothing at its end', async () => {
  h.reset()
  await kit.endTest()
  expect(h.statements).toEqual([])
  await kit.beginTest()
})

test('propagation in a test transaction: notSupported sees no block, requiresNew is a savepoint', async () => {
  const order: string[] = []
  const hooks = await captureOnCommit(() =>
    atomic(async () => {
      await atomic({ propagation: 'notSupported' }, async () => {
        // As in production, the code finds no block here: mandatory is refused, never allowed.
        const refused = await rejection(atomic({ propagation: 'mandatory' }, () => undefined))
        expect(refused).toBeInstanceOf(TransactionManagementError)
        await atomic({ propagation: 'never' }, () => h.db.query(INSERT, [7]))
        // Outside any block of the code: captured by the kit at once, not tied to the enclosing block.
        onCommit(() => void order.push('notSupported hook'))
      })
      await atomic({ propagation: 'requiresNew' }, async () => {
        await h.db.query(INSERT, [8])
        onCommit(() => void order.push('requiresNew hook'))
      })
    }),
  )
  expect(hooks).toHaveLength(2)
  expect(order).toEqual([])
  // One connection, the test's: the work is visible in the test, never committed. (Both ran in savepoints
  // of the enclosing block: their independence from its rollback needs real transactions, useCommittingTests.)
  expect(await inside()).toEqual([7, 8, 100])
  expect(await committed()).toEqual([])
})
