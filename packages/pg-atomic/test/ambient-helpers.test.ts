/**
 * The module-level helpers act on the block they are called in (issue 7 §1.6): without `using`,
 * the innermost active block of the current async context whatever its database; with
 * `{ using }`, that database's innermost block. Regression: with only a database registered as
 * 'reports', `onCommit(fn)` inside `atomic({ using: 'reports' }, ...)` ran `fn` at once (before the
 * commit, even when the block rolled back) and `setRollback(true)` threw "outside of an 'atomic'
 * block".
 */
import {
  InvalidOptionError,
  TransactionManagementError,
  atomic,
  createDatabase,
  currentTransaction,
  getRollback,
  inAtomicBlock,
  onCommit,
  onRollback,
  setRollback,
} from 'pg-atomic'
import type { Database } from 'pg-atomic'
import { setupHarness } from './support/harness'
import type { Harness } from './support/harness'
import { rejection, thrown } from './support/errors'

const INSERT = 'insert into t (x) values ($1)'
let h: Harness

beforeAll(async () => {
  // Only 'reports' is registered: nothing under 'default'.
  h = await setupHarness('ambient helpers', { alias: 'reports' })
  await h.admin.query('create table t (x int primary key)')
})

afterAll(async () => {
  await h.close()
})

beforeEach(async () => {
  await h.admin.query('truncate t')
  h.reset()
})

describe('with only a non-default database registered', () => {
  test('onCommit(fn) inside atomic({ using }) runs after COMMIT, not at once', async () => {
    const log: string[] = []
    await atomic({ using: 'reports' }, async () => {
      await h.db.query(INSERT, [1])
      onCommit(() => void log.push('committed'))
      expect(log).toEqual([])
    })
    expect(log).toEqual(['committed'])
    expect(h.statements).toEqual(['BEGIN', INSERT, 'COMMIT'])
  })

  test('onCommit(fn) of a block that rolls back never runs; onRollback(fn) does', async () => {
    const log: string[] = []
    const error = await rejection(
      atomic({ using: 'reports' }, async () => {
        await h.db.query(INSERT, [1])
        onCommit(() => void log.push('committed'))
        onRollback(() => void log.push('rolled back'))
        throw new Error('give up')
      }),
    )
    expect(error).toMatchObject({ message: 'give up' })
    expect(log).toEqual(['rolled back'])
    expect(h.statements).toEqual(['BEGIN', INSERT, 'ROLLBACK'])
    expect(await h.column('select x from t')).toEqual([])
  })

  test('setRollback(true) and getRollback() act on the block: a silent rollback', async () => {
    const result = await atomic({ using: 'reports' }, async () => {
      await h.db.query(INSERT, [1])
      expect(getRollback()).toBe(false)
      setRollback(true)
      expect(getRollback()).toBe(true)
      return 'value'
    })
    expect(result).toBe('value')
    expect(h.statements).toEqual(['BEGIN', INSERT, 'ROLLBACK'])
    expect(await h.column('select x from t')).toEqual([])
  })

  test('inAtomicBlock() and currentTransaction() see the block', async () => {
    expect(inAtomicBlock()).toBe(false)
    expect(currentTransaction()).toBeUndefined()
    await atomic({ using: 'reports', name: 'report' }, async () => {
      expect(inAtomicBlock()).toBe(true)
      expect(inAtomicBlock({ using: 'reports' })).toBe(true)
      expect(inAtomicBlock({ using: 'default' })).toBe(false)
      expect(currentTransaction()).toMatchObject({ database: 'reports', depth: 1, name: 'report' })
    })
  })

  test('{ using: \'default\' } names a database that is not registered: an error, not "outside"', async () => {
    await atomic({ using: 'reports' }, async () => {
      for (const call of [
        () => setRollback(true, { using: 'default' }),
        () => onCommit(() => undefined, { using: 'default' }),
      ]) {
        const error = thrown(call)
        expect(error).toBeInstanceOf(TransactionManagementError)
        expect((error as Error).message).toBe(
          "No database is registered under the alias 'default': call createDatabase() first.",
        )
      }
      expect(getRollback()).toBe(false)
    })
  })
})

describe('blocks of two databases nested in each other', () => {
  let other: Database

  beforeAll(() => {
    other = createDatabase({ connectionString: h.testDb.url, alias: 'audit', max: 2 })
  })

  afterAll(async () => {
    await other.close()
  })

  test('without using, the helpers act on the innermost block; with using, on that database', async () => {
    const log: string[] = []
    await atomic({ using: 'reports' }, async () => {
      await h.db.query(INSERT, [1])
      await atomic({ using: 'audit' }, async () => {
        await other.query('select 1')
        expect(currentTransaction()).toMatchObject({ database: 'audit', depth: 1 })
        expect(currentTransaction({ using: 'reports' })).toMatchObject({ database: 'reports', depth: 1 })
        onCommit(() => void log.push('audit committed'))
        onCommit(() => void log.push('reports committed'), { using: 'reports' })
        // The innermost block (audit) rolls back silently; reports is untouched.
        setRollback(true)
        expect(getRollback()).toBe(true)
        expect(getRollback({ using: 'reports' })).toBe(false)
      })
      expect(log).toEqual([])
      expect(currentTransaction()).toMatchObject({ database: 'reports' })
    })
    expect(log).toEqual(['reports committed'])
    expect(await h.column('select x from t')).toEqual([1])
  })
})

describe('one argument style: an options object', () => {
  test('a positional alias is refused with InvalidOptionError naming the options', async () => {
    await atomic({ using: 'reports' }, async () => {
      const positional = thrown(() =>
        (setRollback as unknown as (flag: boolean, using: string) => void)(true, 'reports'),
      )
      expect(positional).toBeInstanceOf(InvalidOptionError)
      expect(positional).toMatchObject({
        field: 'options',
        message: "The options of setRollback() must be an object such as { using: 'reports' }.",
      })
      const empty = thrown(() => getRollback({ using: '' }))
      expect(empty).toBeInstanceOf(InvalidOptionError)
      expect(empty).toMatchObject({
        field: 'using',
        message:
          'Invalid option "using" for getRollback(): it must be a non-empty string naming a registered database.',
      })
      expect(getRollback()).toBe(false)
    })
  })
})
