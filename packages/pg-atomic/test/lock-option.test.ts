/**
 * The `lock` option of atomic() / @Atomic(): a table lock taken when the block starts, with
 * `timeoutMs`, names quoted (double quotes doubled) and refused beyond 63 bytes.
 */
import pg from 'pg'
import { Atomic, InvalidOptionError, LockNotAvailableError, atomic } from 'pg-atomic'
import { rejection } from './support/errors'
import { setupHarness } from './support/harness'
import type { Harness } from './support/harness'

let h: Harness
let other: pg.Client

beforeAll(async () => {
  h = await setupHarness('lock_option')
  await h.admin.query('create table a (x int); create table b (x int)')
  await h.admin.query(`create table ${'a'.repeat(63)} (x int); create table "we""ird" (x int)`)
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
  expect(h.statements).toEqual([
    'BEGIN',
    'LOCK TABLE "a", "b" IN SHARE ROW EXCLUSIVE MODE',
    'select pg_backend_pid() as pid',
    'COMMIT',
  ])
})

test(
  '@Atomic({ lock: { nowait } }) rejects with LockNotAvailableError before the body runs when ' +
    'the table is locked elsewhere',
  async () => {
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
  },
)

test('a nested block with a lock that rolls back releases it while the outer block continues', async () => {
  await atomic(async (outer) => {
    const pid = (await outer.query<{ pid: number }>('select pg_backend_pid() as pid')).rows[0]?.pid ?? 0
    await expect(
      atomic({ lock: { tables: 'b', mode: 'exclusive' } }, async () => {
        expect(await modesHeldOn('b', pid)).toEqual(['ExclusiveLock'])
        throw new Error('undo')
      }),
    ).rejects.toThrow('undo')
    await outer.query('select 1')
    expect(await modesHeldOn('b', pid)).toEqual([])
  })
  expect(h.statements).toEqual([
    'BEGIN',
    'select pg_backend_pid() as pid',
    'SAVEPOINT "pga_1"',
    'LOCK TABLE "b" IN EXCLUSIVE MODE',
    'ROLLBACK TO SAVEPOINT "pga_1"',
    'RELEASE SAVEPOINT "pga_1"',
    'select 1',
    'COMMIT',
  ])
})

test(
  'timeoutMs applies lock_timeout to the lock statement only; a name with a double quote is quoted ' +
    'the standard way',
  async () => {
    await atomic({ lock: { tables: ['we"ird', 'a'], mode: 'share', timeoutMs: 250 } }, async (tx) => {
      expect((await tx.query('show lock_timeout')).rows).toEqual([{ lock_timeout: '0' }])
    })
    expect(h.statements).toEqual([
      'BEGIN',
      "SELECT set_config('pga.saved_lock_timeout', current_setting('lock_timeout'), true); SET LOCAL " +
        'lock_timeout = 250; LOCK TABLE "a", "we""ird" IN SHARE MODE; SELECT set_config(\'lock_timeout\', ' +
        "current_setting('pga.saved_lock_timeout'), true)",
      'show lock_timeout',
      'COMMIT',
    ])
  },
)

const MODES =
  "one of 'access share', 'row share', 'row exclusive', 'share update exclusive', 'share', 'share " +
  "row exclusive', 'exclusive', 'access exclusive' (any case), or a pg_locks name such as 'RowExclusiveLock'"
const TABLES =
  "a table name such as 'accounts' or 'public.accounts', or a non-empty list of them; names are " +
  'taken literally (exact case, quoted by pg-atomic), with at most one dot, and each part is ' +
  'non-empty, without NUL character and at most 63 bytes of UTF-8 (PostgreSQL would cut a longer ' +
  'name and lock another table)'
const LOCK = "an object { tables, mode, nowait?, timeoutMs? }, e.g. { tables: 'accounts', mode: 'share row exclusive' }"

test.each([
  [{ tables: 'a', mode: 'exclusivest' }, 'lock.mode', `Invalid option "lock.mode" for atomic(): it must be ${MODES}.`],
  [{ tables: '', mode: 'share' }, 'lock.tables', `Invalid option "lock.tables" for atomic(): it must be ${TABLES}.`],
  [{ mode: 'share' }, 'lock.tables', `Invalid option "lock.tables" for atomic(): it must be ${TABLES}.`],
  [
    { tables: `${'a'.repeat(63)}_other`, mode: 'access exclusive' },
    'lock.tables',
    `Invalid option "lock.tables" for atomic(): it must be ${TABLES}.`,
  ],
  [
    { tables: 'a', mode: 'share', timeout: 5 },
    'lock.timeout',
    `Unknown option "lock.timeout" for atomic(): "lock" must be ${LOCK}.`,
  ],
  [
    { tables: 'a', mode: 'share', timeoutMs: -5 },
    'lock.timeoutMs',
    'Invalid option "lock.timeoutMs" for atomic(): it must be a whole number of milliseconds from ' +
      '0 to 2147483647 (0 waits without limit).',
  ],
  ['a', 'lock', `Invalid option "lock" for atomic(): it must be ${LOCK}.`],
])('an invalid lock %j is an InvalidOptionError naming %s, and nothing is sent', async (lock, field, message) => {
  const error = await rejection(atomic({ lock } as never, async () => undefined))
  expect(error).toBeInstanceOf(InvalidOptionError)
  expect(error).toMatchObject({ name: 'InvalidOptionError', field, message })
  expect(h.statements).toEqual([])
})

test(
  'regression (issue 7, defect 3): a lock option naming a table longer than 63 bytes never locks ' +
    'the table PostgreSQL would cut it to',
  async () => {
    const long = 'a'.repeat(63)
    const error = await rejection(
      atomic({ lock: { tables: `${long}_other`, mode: 'access exclusive' } }, async () => undefined),
    )
    expect(error).toMatchObject({ name: 'InvalidOptionError', field: 'lock.tables' })
    expect(h.statements).toEqual([])
    expect(
      await h.column("select count(*)::int from pg_locks where locktype = 'relation' and relation = $1::regclass", [
        long,
      ]),
    ).toEqual([0])
  },
)
