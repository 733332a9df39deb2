/**
 * db.close(): waits for running blocks (bounded), refuses new outermost blocks meanwhile, rolls
 * back what is still running at the deadline, ends only a pool it created, and frees the alias.
 * Every scenario uses its own alias; databases created here are closed in afterAll in any case.
 */
import {
  ConnectionLostError,
  InvalidOptionError,
  TransactionManagementError,
  atomic,
  createDatabase,
  getDatabase,
  onRollback,
} from 'pg-atomic'
import type { Database } from 'pg-atomic'
import { rejection, setupHarness } from './support/harness'
import type { Harness } from './support/harness'
import { sleep } from './support/wait'

/** Provides the test database and the admin pool; its own pg-atomic database is not used. */
let base: Harness
const opened: Database[] = []

beforeAll(async () => {
  base = await setupHarness('close', { alias: 'close_base' })
  await base.admin.query('create table t (x int not null)')
})
afterAll(async () => {
  // Cleanup, whatever the tests did: every database opened here is closed before the harness checks for leaks.
  await Promise.allSettled(opened.map((db) => db.close({ timeoutMs: 0 })))
  await base.close()
})
beforeEach(async () => {
  await base.admin.query('truncate t')
})

const INSERT = 'insert into t (x) values ($1)'
const committed = () => base.column<number>('select x from t order by x')

/** A database with its own pool (pg-atomic creates and owns it). */
function ownDatabase(alias: string): Database {
  const db = createDatabase({ connectionString: base.testDb.url, alias, max: 2 })
  opened.push(db)
  return db
}

/** Polls `predicate` every 10 ms; fails after `timeoutMs` (a bound, not a timing assertion). */
async function waitUntil(predicate: () => boolean | Promise<boolean>, what: string, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!(await predicate())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)
    await sleep(10)
  }
}

/** Rejects when `promise` has not settled after `ms` (so a hang fails fast instead of at jest's timeout). */
function within<T>(promise: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const bound = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`did not settle within ${ms} ms`)), ms)
  })
  return Promise.race([promise, bound]).finally(() => clearTimeout(timer))
}

function gate(): { wait: Promise<void>; open: () => void } {
  let open!: () => void
  const wait = new Promise<void>((resolve) => {
    open = resolve
  })
  return { wait, open }
}

const CLOSING = (alias: string) => `Database '${alias}' is closing or closed: no new atomic() block can start on it.`

describe('db.close()', () => {
  test('waits for a running block, which commits, then ends the pool it created and frees the alias', async () => {
    const alias = 'close_wait'
    const db = ownDatabase(alias)
    const entered = gate()
    const proceed = gate()
    const events: string[] = []
    const block = atomic({ using: alias }, async () => {
      await db.query(INSERT, [1])
      entered.open()
      await proceed.wait
      // Nested blocks of the running transaction still work while the database is closing.
      await atomic({ using: alias }, async (tx) => {
        expect(tx.depth).toBe(2)
        await db.query(INSERT, [2])
      })
      await db.atomic(() => db.query(INSERT, [3]))
      events.push('body done')
      return 'done'
    }).then((value) => {
      events.push('block resolved')
      return value
    })
    await entered.wait

    const closing = db.close()
    expect(db.close()).toBe(closing)
    void closing.then(() => events.push('close resolved'))

    // New outermost blocks are refused from now on, before their body runs.
    const body = jest.fn()
    for (const start of [() => db.atomic(body), () => atomic({ using: alias }, body)]) {
      const error = await rejection(start())
      expect(error).toBeInstanceOf(TransactionManagementError)
      expect((error as Error).message).toBe(CLOSING(alias))
    }
    expect(body).not.toHaveBeenCalled()

    await sleep(50)
    expect(events).toEqual([]) // close() is still waiting for the block
    expect(db.pool.ended).toBe(false)
    expect(await committed()).toEqual([])

    proceed.open()
    await expect(block).resolves.toBe('done')
    await closing
    expect(events).toEqual(['body done', 'block resolved', 'close resolved'])
    expect(await committed()).toEqual([1, 2, 3])
    expect(db.pool.ended).toBe(true)
    expect(getDatabase(alias)).toBeUndefined()

    // The alias is free again.
    const again = ownDatabase(alias)
    expect(getDatabase(alias)).toBe(again)
    await again.atomic(() => again.query(INSERT, [4]))
    await again.close()
    expect(again.pool.ended).toBe(true)
    expect(await committed()).toEqual([1, 2, 3, 4])
  })

  test('a second database under an open alias is refused; after close() it is accepted', async () => {
    const alias = 'close_alias'
    const db = ownDatabase(alias)
    let error: unknown
    try {
      ownDatabase(alias)
    } catch (e) {
      error = e
    }
    expect(error).toBeInstanceOf(InvalidOptionError)
    expect(error).toMatchObject({ field: 'alias' })
    await db.close()
    const again = ownDatabase(alias)
    expect(getDatabase(alias)).toBe(again)
    await again.close()
  })

  test('an invalid timeout is refused and leaves the database open', async () => {
    const alias = 'close_invalid'
    const db = ownDatabase(alias)
    const error = await rejection(db.close({ timeoutMs: -1 }))
    expect(error).toBeInstanceOf(InvalidOptionError)
    expect(error).toMatchObject({ field: 'timeoutMs' })
    await db.atomic(() => db.query(INSERT, [1]))
    expect(await committed()).toEqual([1])
    await db.close()
  })

  test('a block still running at the deadline is rolled back: ConnectionLostError, nothing committed', async () => {
    const alias = 'close_deadline'
    const db = ownDatabase(alias)
    const entered = gate()
    const rolledBack = jest.fn()
    let late: unknown
    const block = atomic({ using: alias }, async () => {
      await db.query(INSERT, [10])
      onRollback(rolledBack, { using: alias })
      entered.open()
      await sleep(2000)
      late = await rejection(db.query(INSERT, [11]))
      throw late
    })
    await entered.wait

    await db.close({ timeoutMs: 200 })
    expect(db.pool.ended).toBe(true)
    expect(getDatabase(alias)).toBeUndefined()
    // The transaction was rolled back by the server when its connection was destroyed.
    expect(await committed()).toEqual([])

    const error = await rejection(block)
    expect(error).toBeInstanceOf(ConnectionLostError)
    const cause = (error as Error).cause
    expect(cause).toBeInstanceOf(TransactionManagementError)
    expect((cause as Error).message).toBe(
      `Database '${alias}' was closed while this transaction was still running after 200 ms; it was rolled back.`,
    )
    expect(late).toBeInstanceOf(ConnectionLostError)
    expect(rolledBack).toHaveBeenCalledTimes(1)
    expect(await committed()).toEqual([])
  })

  test('a block still waiting for a pooled connection at the deadline is rejected too, it does not hang', async () => {
    const alias = 'close_queued'
    const db = createDatabase({ connectionString: base.testDb.url, alias, max: 1 })
    opened.push(db)
    const entered = gate()
    const first = atomic({ using: alias }, async () => {
      await db.query(INSERT, [1])
      entered.open()
      await sleep(1000)
      await db.query(INSERT, [2])
    })
    await entered.wait
    // The only connection is taken: this block waits for it in its first statement.
    const second = atomic({ using: alias }, () => db.query(INSERT, [3]))
    await sleep(20)
    await db.close({ timeoutMs: 100 })
    const outcomes = await Promise.allSettled([first, within(second, 2000)])
    expect(
      outcomes.map((o) =>
        o.status === 'fulfilled'
          ? 'resolved'
          : o.reason instanceof ConnectionLostError
            ? 'ConnectionLostError'
            : String(o.reason),
      ),
    ).toEqual(['ConnectionLostError', 'ConnectionLostError'])
    expect(await committed()).toEqual([])
  })

  test(
    'a block waiting on a lock at the deadline: after close() its transaction is ' + 'gone and its locks are free',
    async () => {
      const alias = 'close_locked'
      await base.admin.query('insert into t (x) values (1), (2)')
      const holder = await base.admin.connect()
      try {
        await holder.query('begin')
        await holder.query('select x from t where x = 2 for update')
        const db = ownDatabase(alias)
        let pid = 0
        const block = atomic({ using: alias }, async () => {
          pid = (await db.query<{ pid: number }>('select pg_backend_pid() as pid')).rows[0]?.pid ?? 0
          await db.query('update t set x = 10 where x = 1') // row 1 is now locked by the block
          await db.query('update t set x = 20 where x = 2') // waits for the holder
        })
        await waitUntil(
          async () =>
            pid !== 0 &&
            (await base.rows("select 1 from pg_stat_activity where pid = $1 and wait_event_type = 'Lock'", [pid]))
              .length === 1,
          'the block to wait for the row lock',
        )
        await db.close({ timeoutMs: 200 })
        const error = await rejection(block)
        expect(error).toBeInstanceOf(ConnectionLostError)
        expect(((error as Error).cause as Error).message).toMatch(/it was rolled back\.$/)
        // "Rolled back" must be true once close() has resolved, not whenever the server next looks
        // at the socket: the backend must not keep the transaction and its row lock.
        await waitUntil(
          async () => (await base.rows('select 1 from pg_stat_activity where pid = $1', [pid])).length === 0,
          `backend ${pid} to end`,
          2000,
        )
        await expect(base.admin.query('select x from t where x = 1 for update nowait')).resolves.toMatchObject({
          rowCount: 1,
        })
      } finally {
        await holder.query('rollback')
        holder.release()
      }
    },
  )

  test('close() of a database created with { pool } waits for its blocks but does not end that pool', async () => {
    const alias = 'close_pool'
    const h = await setupHarness('close pool', { alias })
    try {
      await h.admin.query('create table t (x int not null)')
      const entered = gate()
      const proceed = gate()
      const block = atomic({ using: alias }, async () => {
        await h.db.query(INSERT, [1])
        entered.open()
        await proceed.wait
        await h.db.query(INSERT, [2])
      })
      await entered.wait
      const closing = h.db.close()
      const refused = await rejection(h.db.atomic(() => h.db.query(INSERT, [3])))
      expect(refused).toBeInstanceOf(TransactionManagementError)
      expect((refused as Error).message).toBe(CLOSING(alias))
      proceed.open()
      await block
      await closing
      // Nothing of the refused block was sent.
      expect(h.statements).toEqual(['BEGIN', INSERT, INSERT, 'COMMIT'])
      expect(h.pool.ended).toBe(false)
      expect(h.pool.ending).toBe(false)
      expect(h.pool.idleCount).toBe(h.pool.totalCount)
      await expect(h.pool.query('select 1 as one')).resolves.toMatchObject({ rows: [{ one: 1 }] })
      expect(getDatabase(alias)).toBeUndefined()

      // The alias is free, and the same pool can serve a new database.
      const again = createDatabase({ pool: h.pool, alias })
      opened.push(again)
      await again.atomic(() => again.query(INSERT, [4]))
      await again.close()
      expect(h.pool.ended).toBe(false)
      expect(await h.column('select x from t order by x')).toEqual([1, 2, 4])
    } finally {
      await h.close()
    }
  })

  test('close() with no running block ends the pool at once', async () => {
    const alias = 'close_idle'
    const db = ownDatabase(alias)
    await db.query(INSERT, [1])
    await db.close()
    expect(db.pool.ended).toBe(true)
    const error = await rejection(db.atomic(() => db.query('select 1')))
    expect(error).toBeInstanceOf(TransactionManagementError)
    expect((error as Error).message).toBe(CLOSING(alias))
    const outside = await rejection(db.query('select 1'))
    expect(outside).toBeInstanceOf(TransactionManagementError)
    expect((outside as Error).message).toBe(
      `Database '${alias}' is closed: create a new database with createDatabase() to run more statements.`,
    )
  })
})

describe('a closed database refuses further use', () => {
  test(
    'db.query, db.cursor and db.pool.connect on a closed database built on a user ' +
      'pool are refused; the pool itself stays usable',
    async () => {
      const hx = await setupHarness('close-refuse', { alias: 'close_refuse' })
      await hx.db.close()
      const message =
        "Database 'close_refuse' is closed: create a new database with createDatabase() to run more statements."
      await expect(hx.db.query('select 1')).rejects.toThrow(new TransactionManagementError(message))
      await expect(hx.db.pool.connect()).rejects.toThrow(message)
      const iterate = async () => {
        for await (const row of hx.db.cursor('select 1')) void row
      }
      await expect(iterate()).rejects.toThrow(message)
      expect(hx.statements).toEqual([])
      await expect(hx.pool.query('select 1 as one')).resolves.toMatchObject({ rows: [{ one: 1 }] })
      await hx.close()
    },
  )
})
