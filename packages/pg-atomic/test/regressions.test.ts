/**
 * Regression tests for defects found in review: each test is named after what it pins.
 */
import {
  ConnectionLostError,
  TransactionManagementError,
  atomic,
  createDatabase,
  isIdleInTransactionTimeout,
  isStatementTimeout,
  onCommit,
  onRollback,
} from 'pg-atomic'
import { rejection, setupHarness } from './support/harness'
import type { Harness } from './support/harness'
import { Boom } from './support/errors'

let h: Harness

beforeAll(async () => {
  h = await setupHarness('regressions')
  await h.admin.query('create table t (x int not null)')
})
afterAll(() => h.close())
beforeEach(async () => {
  await h.admin.query('truncate t')
  h.reset()
})

async function waitFor(condition: () => Promise<boolean>, what: string): Promise<void> {
  for (let i = 0; i < 100; i++) {
    if (await condition()) return
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
  throw new Error(`timed out waiting for ${what}`)
}

test('the callback’s own error is rethrown unchanged even when the connection was lost meanwhile', async () => {
  const boom = new Boom('unrelated to the connection')
  const error = await rejection(
    atomic(async (tx) => {
      const pid = (await tx.query<{ pid: number }>('select pg_backend_pid() as pid')).rows[0]?.pid
      await h.admin.query('select pg_terminate_backend($1)', [pid])
      await waitFor(
        async () => (await h.column('select count(*)::int from pg_stat_activity where pid = $1', [pid]))[0] === 0,
        'the backend to exit',
      )
      throw boom
    }),
  )
  expect(error).toBe(boom)
  // The lost connection was destroyed, and the pool serves the next block.
  await atomic(() => h.db.query('insert into t values (1)'))
  expect(await h.column('select x from t')).toEqual([1])
})

test('a block that finishes normally after its connection was lost rejects with ConnectionLostError', async () => {
  const error = await rejection(
    atomic(async (tx) => {
      await tx.query('insert into t values (2)')
      const pid = (await tx.query<{ pid: number }>('select pg_backend_pid() as pid')).rows[0]?.pid
      await h.admin.query('select pg_terminate_backend($1)', [pid])
      await waitFor(
        async () => (await h.column('select count(*)::int from pg_stat_activity where pid = $1', [pid]))[0] === 0,
        'the backend to exit',
      )
      // The client learns of the loss when it reads the socket; a COMMIT sent before that is, from
      // its point of view, in flight when the connection dies (CommitOutcomeUnknownError). Let the
      // event loop deliver the FATAL first, so this test pins the "lost before COMMIT" path.
      await new Promise((resolve) => setTimeout(resolve, 100))
    }),
  )
  expect(error).toBeInstanceOf(ConnectionLostError)
  expect((error as Error).cause).toBeDefined()
  expect(await h.column('select count(*)::int from t')).toEqual([0])
})

test('the name option appears in the error of a block that swallowed an error', async () => {
  const error = await rejection(
    atomic({ name: 'import-batch' }, async () => {
      await h.db
        .query('insert into t values (1)')
        .then(() => h.db.query('select 1/0'))
        .then(
          () => undefined,
          () => undefined, // swallowed on purpose: this is the case under test
        )
    }),
  )
  expect(error).toBeInstanceOf(TransactionManagementError)
  expect((error as Error).message).toMatch(
    /^The 'atomic' block finished normally, but an error inside it was caught .* \(block "import-batch"\)$/,
  )
  expect((error as Error).cause).toMatchObject({ code: '22012' })
})

test('the name option appears in the durable-nesting error', async () => {
  const error = await rejection(atomic(() => atomic({ durable: true, name: 'payout' }, async () => undefined)))
  expect(error).toBeInstanceOf(TransactionManagementError)
  expect((error as Error).message).toBe(
    'A durable atomic block cannot be nested within another atomic block. (block "payout")',
  )
  expect(h.statements).toEqual([])
})

test('createDatabase accepts a bare connection string (registered under the default alias)', () => {
  // The harness holds 'default', so the string form gets as far as the alias check: it was accepted
  // as configuration (an object was not required) and nothing connected.
  let error: unknown
  try {
    createDatabase(h.testDb.url)
  } catch (e) {
    error = e
  }
  expect(error).toMatchObject({ name: 'InvalidOptionError', field: 'alias' })
  expect((error as Error).message).toBe(
    "A database is already registered under the alias 'default': close it first (db.close()), or choose another alias.",
  )
})

describe('timeout predicates', () => {
  test('isStatementTimeout is true for statement_timeout and false for pg_cancel_backend', async () => {
    const timeout = await rejection(atomic({ statementTimeout: 50 }, () => h.db.query('select pg_sleep(2)')))
    expect(timeout).toMatchObject({ code: '57014', message: 'canceling statement due to statement timeout' })
    expect(isStatementTimeout(timeout)).toBe(true)
    const canceled = Object.assign(new Error('canceling statement due to user request'), { code: '57014' })
    expect(isStatementTimeout(canceled)).toBe(false)
  })

  test('isIdleInTransactionTimeout recognises the ConnectionLostError of a 25P03', async () => {
    const error = await rejection(
      atomic({ idleInTransactionSessionTimeout: 100 }, async () => {
        await h.db.query('select 1')
        await new Promise((resolve) => setTimeout(resolve, 600))
      }),
    )
    expect(error).toBeInstanceOf(ConnectionLostError)
    expect((error as Error).cause).toMatchObject({ code: '25P03' })
    expect(isIdleInTransactionTimeout(error)).toBe(true)
    expect(isIdleInTransactionTimeout(new ConnectionLostError('x', { cause: new Error('other') }))).toBe(false)
  })
})

test(
  'a swallowed checkout failure (AcquireTimeoutError) dooms the block: it rejects, ' +
    'and its onCommit hooks never run',
  async () => {
    const db = createDatabase({
      connectionString: h.testDb.url,
      alias: 'acquire_swallowed',
      max: 1,
      acquireTimeoutMs: 100,
    })
    let release!: () => void
    const holding = new Promise<void>((resolve) => {
      release = resolve
    })
    let started!: () => void
    const holderStarted = new Promise<void>((resolve) => {
      started = resolve
    })
    try {
      const holder = db.atomic(async (tx) => {
        await tx.query('select 1')
        started()
        await holding
      })
      await holderStarted
      const hooks: string[] = []
      const error = await rejection(
        db.atomic(async (tx) => {
          tx.onCommit(() => {
            hooks.push('commit')
          })
          try {
            await tx.query('insert into t values (9)')
          } catch (e) {
            expect(e).toMatchObject({ name: 'AcquireTimeoutError', poolSize: 1, heldByBlocks: 1 })
          }
        }),
      )
      expect(error).toBeInstanceOf(TransactionManagementError)
      expect((error as Error).cause).toMatchObject({ name: 'AcquireTimeoutError' })
      expect(hooks).toEqual([])
      release()
      await holder
    } finally {
      release()
      await db.close()
    }
    expect(await h.column('select count(*)::int from t')).toEqual([0])
  },
)

test(
  'an unreachable server inside a block is not reported as a lost connection: the ' +
    'checkout error comes through unchanged',
  async () => {
    const db = createDatabase({
      connectionString: 'postgres://postgres@127.0.0.1:1/nowhere',
      alias: 'unreachable',
      connectionTimeoutMillis: 2000,
    })
    try {
      const error = await rejection(db.atomic((tx) => tx.query('select 1')))
      expect(error).not.toBeInstanceOf(ConnectionLostError)
      expect(error).toMatchObject({ code: 'ECONNREFUSED' })
    } finally {
      await db.close()
    }
  },
)

test('onCommit / onRollback with a using that names no database are errors, not silently "outside a block"', () => {
  const message = "No database is registered under the alias 'typo': call createDatabase({ alias: 'typo', ... }) first."
  expect(() => onCommit(() => undefined, { using: 'typo' })).toThrow(new TransactionManagementError(message))
  expect(() => onRollback(() => undefined, { using: 'typo' })).toThrow(new TransactionManagementError(message))
})
