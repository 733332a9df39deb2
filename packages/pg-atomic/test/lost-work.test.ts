/**
 * A block never reports success for work the server has lost (issue 7 §1.5). Regression: inside
 * an enclosing transaction, a nested savepoint block whose `savepoint: false` child failed on a
 * statement, and which then called `setRollback(false)`, resolved normally; its work was gone (the
 * server transaction stayed aborted until a ROLLBACK TO) and the loss only surfaced later,
 * elsewhere.
 */
import { TransactionManagementError, atomic, getRollback, setRollback } from 'pg-atomic'
import { setupHarness } from './support/harness'
import type { Harness } from './support/harness'
import { Boom, rejection } from './support/errors'

const INSERT = 'insert into t (x) values ($1)'
const ABORTED =
  "The 'atomic' block finished normally, but a statement inside it failed and the " +
  'transaction was aborted on the server; setRollback(false) cleared the rollback ' +
  "flag but cannot undo that, so the block's work was lost and it was rolled back. " +
  'Let the error propagate, or wrap the failing part in a nested atomic() block so ' +
  'that only that part is rolled back.'
let h: Harness

beforeAll(async () => {
  h = await setupHarness('lost work')
  await h.admin.query('create table t (x int primary key)')
})

afterAll(async () => {
  await h.close()
})

beforeEach(async () => {
  await h.admin.query('truncate t')
  h.reset()
})

test(
  'a nested block whose joined child failed on the server rejects even after ' +
    'setRollback(false), and rolls back to its savepoint',
  async () => {
    let nested: unknown
    await atomic(async () => {
      await h.db.query(INSERT, [1])
      nested = await rejection(
        atomic(async () => {
          await h.db.query(INSERT, [2])
          try {
            await atomic({ savepoint: false }, () => h.db.query('select 1/0'))
          } catch {
            // swallowed on purpose, then the flag cleared: the server transaction stays aborted
          }
          setRollback(false)
          expect(getRollback()).toBe(false)
        }),
      )
      // The enclosing block goes on: the savepoint was rolled back, so the transaction is usable.
      await h.db.query(INSERT, [3])
    })
    expect(nested).toBeInstanceOf(TransactionManagementError)
    expect((nested as Error).message).toBe(ABORTED)
    expect((nested as Error).cause).toMatchObject({ code: '22012', message: 'division by zero' })
    expect(h.statements).toEqual([
      'BEGIN',
      INSERT,
      'SAVEPOINT "pga_1"',
      INSERT,
      'select 1/0',
      'ROLLBACK TO SAVEPOINT "pga_1"',
      'RELEASE SAVEPOINT "pga_1"',
      INSERT,
      'COMMIT',
    ])
    expect(await h.column('select x from t order by x')).toEqual([1, 3])
  },
)

test(
  'the outermost block in the same situation: COMMIT is answered with ROLLBACK and ' +
    'reported, with the statement error as cause',
  async () => {
    const error = await rejection(
      atomic(async () => {
        await h.db.query(INSERT, [1])
        try {
          await atomic({ savepoint: false }, () => h.db.query('select 1/0'))
        } catch {
          // swallowed
        }
        setRollback(false)
      }),
    )
    expect(error).toBeInstanceOf(TransactionManagementError)
    expect((error as Error).message).toBe(
      'COMMIT was answered with ROLLBACK: the transaction had failed on the server, so nothing was committed.',
    )
    expect((error as Error).cause).toMatchObject({ code: '22012' })
    expect(h.statements).toEqual(['BEGIN', INSERT, 'select 1/0', 'COMMIT'])
    expect(await h.column('select x from t')).toEqual([])
  },
)

test('setRollback(false) after an error that never reached the server keeps the work (nothing was lost)', async () => {
  await atomic(async () => {
    await h.db.query(INSERT, [1])
    const result = await atomic(async () => {
      await h.db.query(INSERT, [2])
      try {
        await atomic({ savepoint: false }, () => {
          throw new Boom('not a database error')
        })
      } catch {
        // swallowed; the server transaction is fine
      }
      expect(getRollback()).toBe(true)
      setRollback(false)
      return 'kept'
    })
    expect(result).toBe('kept')
  })
  expect(h.statements).toEqual(['BEGIN', INSERT, 'SAVEPOINT "pga_1"', INSERT, 'COMMIT'])
  expect(await h.column('select x from t order by x')).toEqual([1, 2])
})

test('a nested block entered after the abort, whose savepoint was never sent, does not claim the loss', async () => {
  let nested: unknown
  const outer = await rejection(
    atomic(async () => {
      await h.db.query(INSERT, [1])
      try {
        await atomic({ savepoint: false }, () => h.db.query('select 1/0'))
      } catch {
        // swallowed
      }
      setRollback(false)
      // No statement inside: its SAVEPOINT is never sent, so the failure is not inside it.
      nested = await atomic(async () => 'empty')
    }),
  )
  expect(nested).toBe('empty')
  expect(outer).toBeInstanceOf(TransactionManagementError)
  expect((outer as Error).message).toBe(
    'COMMIT was answered with ROLLBACK: the transaction had failed on the server, so nothing was committed.',
  )
  expect(h.statements).toEqual(['BEGIN', INSERT, 'select 1/0', 'COMMIT'])
})
