/**
 * Round trips per transaction, counted as ReadyForQuery messages: control statements are deferred
 * and ride in the same round trip as the next statement, before the same Sync (issue 8), and
 * semantics do not change. `h.batches` shows which statements shared a round trip.
 *
 * | workload | hand-written pg | pg-atomic |
 * |---|---|---|
 * | one SELECT 1 in a block | 3 | 2 |
 * | pgbench TPC-B (5 statements) | 7 | 6 |
 * | 1 insert + 3 nested blocks of 1 insert, the 3rd throws and is caught | 12 | 5 |
 * | serializable transfer (select + 2 updates) | 5 | 4 |
 * | empty block / nested block without statements | 2 / 2 | 0 / 0 |
 */
import pg from 'pg'
import { atomic } from 'pg-atomic'
import { rejection, setupHarness } from './support/harness'
import type { Harness } from './support/harness'
import { Boom } from './support/errors'
import { sleep } from './support/wait'

let h: Harness
/** Checkouts from the recorded pool since the test started. */
let acquired = 0

beforeAll(async () => {
  h = await setupHarness('roundtrips', { max: 1 })
  h.pool.on('acquire', () => {
    acquired++
  })
  await h.admin.query(`
    create table t (id int primary key, x int not null);
    create table u (x int not null);
    create table deferred (x int unique deferrable initially deferred);
    create table pgbench_branches (bid int primary key, bbalance int not null, filler char(88));
    create table pgbench_tellers (tid int primary key, bid int not null, tbalance int not null, filler char(84));
    create table pgbench_accounts (aid int primary key, bid int not null, abalance int not null, filler char(84));
    create table pgbench_history (tid int, bid int, aid int, delta int, mtime timestamp, filler char(22));
  `)
})
afterAll(() => h.close())
beforeEach(async () => {
  await h.admin.query(`
    truncate t, u, deferred, pgbench_branches, pgbench_tellers, pgbench_accounts, pgbench_history;
    insert into t (id, x) values (1, 0), (2, 0), (3, 0);
    insert into pgbench_branches (bid, bbalance) values (1, 0);
    insert into pgbench_tellers (tid, bid, tbalance) select g, 1, 0 from generate_series(1, 10) g;
    insert into pgbench_accounts (aid, bid, abalance) select g, 1, 0 from generate_series(1, 100) g;
  `)
  // An open, idle connection in the pool, so connection start-up is not counted.
  await h.db.query('select 1')
  h.reset()
  acquired = 0
})

/** Waits (bounded) until `condition()` holds. */
async function until(condition: () => boolean, what: string, timeoutMs = 2000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)
    await sleep(5)
  }
}

const INSERT = 'insert into u (x) values ($1)'
const insert = (x: number) => h.db.query(INSERT, [x])
const inserted = () => h.column('select x from u order by x')

test('one SELECT 1 in a block: 2 round trips (BEGIN rides with the statement)', async () => {
  await atomic(() => h.db.query('SELECT 1'))
  expect(h.batches).toEqual([['BEGIN', 'SELECT 1'], ['COMMIT']])
  expect(h.roundTrips()).toBe(2)
  expect(acquired).toBe(1)
})

describe("pgbench's TPC-B transaction", () => {
  const tpcb = (aid: number, tid: number, bid: number, delta: number) =>
    atomic(async () => {
      await h.db.query('UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2', [delta, aid])
      const { rows } = await h.db.query<{ abalance: number }>('SELECT abalance FROM pgbench_accounts WHERE aid = $1', [
        aid,
      ])
      await h.db.query('UPDATE pgbench_tellers SET tbalance = tbalance + $1 WHERE tid = $2', [delta, tid])
      await h.db.query('UPDATE pgbench_branches SET bbalance = bbalance + $1 WHERE bid = $2', [delta, bid])
      await h.db.query(
        'INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES ($1, $2, $3, $4, CURRENT_TIMESTAMP)',
        [tid, bid, aid, delta],
      )
      return rows[0]?.abalance
    })

  test('5 statements: 6 round trips', async () => {
    await expect(tpcb(7, 3, 1, 250)).resolves.toBe(250)
    expect(h.batches).toEqual([
      ['BEGIN', 'UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2'],
      ['SELECT abalance FROM pgbench_accounts WHERE aid = $1'],
      ['UPDATE pgbench_tellers SET tbalance = tbalance + $1 WHERE tid = $2'],
      ['UPDATE pgbench_branches SET bbalance = bbalance + $1 WHERE bid = $2'],
      ['INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES ($1, $2, $3, $4, CURRENT_TIMESTAMP)'],
      ['COMMIT'],
    ])
    expect(h.roundTrips()).toBe(6)
    expect(await h.rows('select abalance from pgbench_accounts where aid = 7')).toEqual([{ abalance: 250 }])
    expect(await h.rows('select tbalance from pgbench_tellers where tid = 3')).toEqual([{ tbalance: 250 }])
    expect(await h.rows('select bbalance from pgbench_branches where bid = 1')).toEqual([{ bbalance: 250 }])
    expect(await h.column('select count(*)::int from pgbench_history')).toEqual([1])
  })

  test('every transaction of a run costs 6, nothing is carried over between them', async () => {
    for (let i = 1; i <= 5; i++) {
      h.reset()
      await tpcb(i, i, 1, 10 * i)
      expect(h.roundTrips()).toBe(6)
      expect(h.statements[0]).toBe('BEGIN')
      expect(h.statements.at(-1)).toBe('COMMIT')
    }
    expect(await h.rows('select bbalance from pgbench_branches where bid = 1')).toEqual([{ bbalance: 150 }])
    expect(acquired).toBe(5)
  })
})

test('1 insert and 3 nested blocks of 1 insert each, the third throwing and caught: 5 round trips', async () => {
  const boom = new Boom('third')
  await atomic(async () => {
    await insert(1)
    await atomic(() => insert(2))
    await atomic(() => insert(3))
    const error = await rejection(
      atomic(async () => {
        await insert(4)
        throw boom
      }),
    )
    expect(error).toBe(boom)
  })
  expect(h.batches).toEqual([
    ['BEGIN', INSERT],
    ['SAVEPOINT "pga_1"', INSERT],
    ['RELEASE SAVEPOINT "pga_1"', 'SAVEPOINT "pga_2"', INSERT],
    ['RELEASE SAVEPOINT "pga_2"', 'SAVEPOINT "pga_3"', INSERT],
    ['ROLLBACK TO SAVEPOINT "pga_3"; RELEASE SAVEPOINT "pga_3"; COMMIT'],
  ])
  expect(h.roundTrips()).toBe(5)
  expect(await inserted()).toEqual([1, 2, 3])
})

test(
  'a COMMIT that fails (deferred unique constraint) costs 2 round trips: the ' +
    'server already ended the transaction, no ROLLBACK follows',
  async () => {
    // Repeated: whether ReadyForQuery arrives in the same TCP read as the error varies from run to run.
    for (let i = 0; i < 100; i++) {
      h.reset()
      const error = await rejection(atomic(() => h.db.query('insert into deferred (x) values (1), (1)')))
      expect(error).toBeInstanceOf(pg.DatabaseError)
      expect(error).toMatchObject({ code: '23505' })
      expect(h.batches).toEqual([['BEGIN', 'insert into deferred (x) values (1), (1)'], ['COMMIT']])
      expect(h.roundTrips()).toBe(2)
    }
    expect(await h.column('select count(*)::int from deferred')).toEqual([0])
    expect(h.pool.totalCount).toBe(h.pool.idleCount)
  },
)

test('a serializable transfer (select + 2 updates): 4 round trips', async () => {
  await atomic({ isolationLevel: 'serializable' }, async () => {
    const { rows } = await h.db.query<{ x: number }>('select x from t where id = $1', [1])
    expect(rows).toEqual([{ x: 0 }])
    await h.db.query('update t set x = x - $1 where id = $2', [10, 1])
    await h.db.query('update t set x = x + $1 where id = $2', [10, 2])
  })
  expect(h.batches).toEqual([
    ['BEGIN ISOLATION LEVEL SERIALIZABLE', 'select x from t where id = $1'],
    ['update t set x = x - $1 where id = $2'],
    ['update t set x = x + $1 where id = $2'],
    ['COMMIT'],
  ])
  expect(h.roundTrips()).toBe(4)
  expect(await h.rows('select id, x from t order by id')).toEqual([
    { id: 1, x: -10 },
    { id: 2, x: 10 },
    { id: 3, x: 0 },
  ])
})

describe('blocks that run no query send nothing', () => {
  test('an empty block: no round trip, no connection checked out', async () => {
    const totalBefore = h.pool.totalCount
    await expect(
      atomic(async (tx) => {
        expect(tx.depth).toBe(1)
        expect(h.pool.idleCount).toBe(h.pool.totalCount)
        return 'empty'
      }),
    ).resolves.toBe('empty')
    expect(h.statements).toEqual([])
    expect(h.roundTrips()).toBe(0)
    expect(acquired).toBe(0)
    expect(h.pool.totalCount).toBe(totalBefore)
  })

  test('an empty block with options and nested empty blocks: nothing either', async () => {
    await atomic({ isolationLevel: 'serializable', lockTimeout: 100 }, async () => {
      await atomic(async () => {
        await atomic({ savepoint: false }, async () => undefined)
      })
      await atomic(() => undefined)
    })
    expect(h.statements).toEqual([])
    expect(h.roundTrips()).toBe(0)
    expect(acquired).toBe(0)
  })

  test('a failing block that ran no query sends nothing', async () => {
    const boom = new Boom('before any query')
    await expect(
      atomic(async () => {
        await atomic(async () => undefined)
        throw boom
      }),
    ).rejects.toBe(boom)
    expect(h.statements).toEqual([])
    expect(h.roundTrips()).toBe(0)
    expect(acquired).toBe(0)
  })

  test('a nested block that runs no query gets no SAVEPOINT, even when it fails', async () => {
    await atomic(async () => {
      await h.db.query('select 1')
      await atomic(async () => undefined)
      await expect(
        atomic(async () => {
          throw new Boom('nested, no query')
        }),
      ).rejects.toThrow('nested, no query')
      await h.db.query('select 2')
    })
    expect(h.batches).toEqual([['BEGIN', 'select 1'], ['select 2'], ['COMMIT']])
    expect(h.roundTrips()).toBe(3)
  })
})

describe('BEGIN, its SET LOCALs and early SAVEPOINTs share the round trip of the first statement', () => {
  test("a nested block entered before the outer block's first query", async () => {
    await atomic({ lockTimeout: 1000 }, () => atomic(() => h.db.query('select 1')))
    expect(h.batches).toEqual([['BEGIN', 'SET LOCAL lock_timeout = 1000', 'SAVEPOINT "pga_1"', 'select 1'], ['COMMIT']])
    expect(h.roundTrips()).toBe(2)
  })

  test('three levels deep, with options', async () => {
    await atomic({ isolationLevel: 'repeatable read', statementTimeout: 5000 }, async () => {
      await atomic(async () => {
        await atomic({ lockTimeout: 200 }, () => h.db.query('select 1'))
      })
    })
    expect(h.batches).toEqual([
      [
        'BEGIN ISOLATION LEVEL REPEATABLE READ',
        'SET LOCAL statement_timeout = 5000',
        'SAVEPOINT "pga_1"',
        'SAVEPOINT "pga_2"',
        'SET LOCAL lock_timeout = 200',
        'select 1',
      ],
      ['COMMIT'],
    ])
    expect(h.roundTrips()).toBe(2)
  })
})

describe('the ROLLBACK TO of a failed nested block', () => {
  test('is sent on the next turn when no control statement follows in the same turn, freeing its locks', async () => {
    const boom = new Boom('nested')
    const other = new pg.Client({ connectionString: h.testDb.url })
    await other.connect()
    try {
      await atomic(async () => {
        await h.db.query('select * from t where id = 1 for update')
        await expect(
          atomic(async () => {
            await h.db.query('update t set x = 99 where id = 2')
            throw boom
          }),
        ).rejects.toBe(boom)
        expect(h.statements.at(-1)).toBe('update t set x = 99 where id = 2')
        await sleep(20)
        expect(h.statements.at(-1)).toBe('ROLLBACK TO SAVEPOINT "pga_1"; RELEASE SAVEPOINT "pga_1"')
        await until(() => h.roundTrips() === 3, 'the ROLLBACK TO round trip')
        // Row 2, locked only by the failed block, is free for another session; row 1 is still held.
        await expect(other.query('select id from t where id = 2 for update nowait')).resolves.toMatchObject({
          rows: [{ id: 2 }],
        })
        const held = await rejection(other.query('select id from t where id = 1 for update nowait'))
        expect(held).toBeInstanceOf(pg.DatabaseError)
        expect(held).toMatchObject({ code: '55P03' })
        await h.db.query('update t set x = 1 where id = 3')
      })
    } finally {
      await other.end()
    }
    expect(h.batches).toEqual([
      ['BEGIN', 'select * from t where id = 1 for update'],
      ['SAVEPOINT "pga_1"', 'update t set x = 99 where id = 2'],
      ['ROLLBACK TO SAVEPOINT "pga_1"; RELEASE SAVEPOINT "pga_1"'],
      ['update t set x = 1 where id = 3'],
      ['COMMIT'],
    ])
    expect(h.roundTrips()).toBe(5)
    expect(await h.rows('select id, x from t order by id')).toEqual([
      { id: 1, x: 0 },
      { id: 2, x: 0 },
      { id: 3, x: 1 },
    ])
  })

  test('rides with the next statement of the same turn; the same rows are committed', async () => {
    await atomic(async () => {
      await h.db.query('select * from t where id = 1 for update')
      await expect(
        atomic(async () => {
          await h.db.query('update t set x = 99 where id = 2')
          throw new Boom('nested')
        }),
      ).rejects.toThrow('nested')
      await h.db.query('update t set x = 1 where id = 3')
    })
    expect(h.batches).toEqual([
      ['BEGIN', 'select * from t where id = 1 for update'],
      ['SAVEPOINT "pga_1"', 'update t set x = 99 where id = 2'],
      ['ROLLBACK TO SAVEPOINT "pga_1"', 'RELEASE SAVEPOINT "pga_1"', 'update t set x = 1 where id = 3'],
      ['COMMIT'],
    ])
    expect(h.roundTrips()).toBe(4)
    expect(await h.rows('select id, x from t order by id')).toEqual([
      { id: 1, x: 0 },
      { id: 2, x: 0 },
      { id: 3, x: 1 },
    ])
  })

  test('sent on the next turn, it is not sent again with the COMMIT', async () => {
    await atomic(async () => {
      await insert(1)
      await expect(
        atomic(async () => {
          await insert(2)
          throw new Boom('nested')
        }),
      ).rejects.toThrow('nested')
      await sleep(20)
    })
    expect(h.batches).toEqual([
      ['BEGIN', INSERT],
      ['SAVEPOINT "pga_1"', INSERT],
      ['ROLLBACK TO SAVEPOINT "pga_1"; RELEASE SAVEPOINT "pga_1"'],
      ['COMMIT'],
    ])
    expect(h.roundTrips()).toBe(4)
    expect(await inserted()).toEqual([1])
  })

  test('a successful RELEASE rides with the next statement, never on its own', async () => {
    await atomic(async () => {
      await insert(10)
      await atomic(() => insert(11))
      await sleep(20)
      // Nothing was sent on the next turn for a successful block.
      expect(h.statements.at(-1)).toBe(INSERT)
      await expect(
        atomic(async () => {
          await insert(12)
          throw new Boom('second')
        }),
      ).rejects.toThrow('second')
    })
    expect(h.batches).toEqual([
      ['BEGIN', INSERT],
      ['SAVEPOINT "pga_1"', INSERT],
      ['RELEASE SAVEPOINT "pga_1"', 'SAVEPOINT "pga_2"', INSERT],
      ['ROLLBACK TO SAVEPOINT "pga_2"; RELEASE SAVEPOINT "pga_2"; COMMIT'],
    ])
    expect(h.roundTrips()).toBe(4)
    expect(await inserted()).toEqual([10, 11])
  })
})
