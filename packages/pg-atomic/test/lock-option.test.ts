/**
 * The `lock` option of atomic() / @Atomic(): a table lock taken when the block starts.
 */
import pg from 'pg'
import { Atomic, InvalidOptionError, LockNotAvailableError, atomic } from 'pg-atomic'
import { rejection, setupHarness } from './support/harness'
import type { Harness } from './support/harness'

let h: Harness
let other: pg.Client

beforeAll(async () => {
  h = await setupHarness('lock_option')
  await h.admin.query('create table a (x int); create table b (x int)')
  other = new pg.Client(h.testDb.url)
  await other.connect()
})
afterAll(async () => {
  await other.end()
  await h.close()
})
beforeEach(() => h.reset())

/** Modes another session holds on table `t`, read from pg_locks. */
async function modesHeldOn(table: string, pid: number): Promise<string[]> {
  return h.column<string>(
    "select mode from pg_locks where locktype = 'relation' and relation = $1::regclass and pid = $2 order by mode",
    [table, pid],
  )
}

test('the lock is taken first, tables in canonical order, and held until COMMIT', async () => {
  let pid = 0
  await atomic({ lock: { tables: ['b', 'a'], mode: 'SHARE ROW EXCLUSIVE' } }, async (tx) => {
    pid = (await tx.query<{ pid: number }>('select pg_backend_pid() as pid')).rows[0]?.pid ?? 0
    expect(await modesHeldOn('a', pid)).toEqual(['ShareRowExclusiveLock'])
    expect(await modesHeldOn('b', pid)).toEqual(['ShareRowExclusiveLock'])
  })
  expect(await modesHeldOn('a', pid)).toEqual([])
  expect(h.statements).toEqual(['BEGIN', 'LOCK TABLE "a", "b" IN SHARE ROW EXCLUSIVE MODE', 'select pg_backend_pid() as pid', 'COMMIT'])
})

test('@Atomic({ lock: { nowait } }) rejects with LockNotAvailableError before the body runs when the table is locked elsewhere', async () => {
  let ran = false
  class Reports {
    @Atomic({ lock: { tables: 'a', mode: 'access exclusive', nowait: true } })
    async rebuild(): Promise<void> {
      ran = true
    }
  }
  await other.query('begin; lock table a in access share mode')
  try {
    const error = await rejection(new Reports().rebuild())
    expect(error).toBeInstanceOf(LockNotAvailableError)
    expect(error).toMatchObject({ code: '55P03', relation: 'a', reason: 'nowait', cause: { code: '55P03' } })
  } finally {
    await other.query('rollback')
  }
  expect(ran).toBe(false)
  expect(h.statements).toEqual(['BEGIN', 'LOCK TABLE "a" IN ACCESS EXCLUSIVE MODE NOWAIT', 'ROLLBACK'])
})

test('a nested block with a lock that rolls back releases it while the outer block continues', async () => {
  await atomic(async (outer) => {
    const pid = (await outer.query<{ pid: number }>('select pg_backend_pid() as pid')).rows[0]?.pid ?? 0
    await expect(atomic({ lock: { tables: 'b', mode: 'exclusive' } }, async () => {
      expect(await modesHeldOn('b', pid)).toEqual(['ExclusiveLock'])
      throw new Error('undo')
    })).rejects.toThrow('undo')
    await outer.query('select 1')
    expect(await modesHeldOn('b', pid)).toEqual([])
  })
  expect(h.statements).toEqual([
    'BEGIN',
    'select pg_backend_pid() as pid',
    'SAVEPOINT "pga_1"',
    'LOCK TABLE "b" IN EXCLUSIVE MODE',
    'ROLLBACK TO SAVEPOINT "pga_1"; RELEASE SAVEPOINT "pga_1"',
    'select 1',
    'COMMIT',
  ])
})

test.each([
  [{ tables: 'a', mode: 'exclusivest' }, 'lock.mode'],
  [{ tables: '', mode: 'share' }, 'lock.tables'],
  [{ mode: 'share' }, 'lock.tables'],
  ['a', 'lock'],
])('an invalid lock %j is an InvalidOptionError naming %s, and nothing is sent', async (lock, field) => {
  const error = await rejection(atomic({ lock } as never, async () => undefined))
  expect(error).toBeInstanceOf(InvalidOptionError)
  expect(error).toMatchObject({ field })
  expect(h.statements).toEqual([])
})
