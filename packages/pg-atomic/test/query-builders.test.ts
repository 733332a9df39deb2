/**
 * Query builders' own transactions join the atomic() block (issue 9 §0), with the real Kysely and
 * Drizzle packages on `db.pool`: inside a block their BEGIN / COMMIT / ROLLBACK and SAVEPOINT /
 * RELEASE / ROLLBACK TO map onto nested blocks (savepoints), so their work commits and rolls back
 * with the block; outside any block nothing changes. Code in a builder's transaction callback
 * that uses db.query or atomic() joins the builder's transaction instead of waiting for it; and
 * Kysely's `.stream()` works inside blocks (a submittable on a db.pool client).
 */
import { TransactionRollbackError } from 'drizzle-orm'
import { drizzle } from 'drizzle-orm/node-postgres'
import { integer, pgTable } from 'drizzle-orm/pg-core'
import { Kysely, PostgresDialect } from 'kysely'
import Cursor from 'pg-cursor'
import { TransactionManagementError, atomic } from 'pg-atomic'
import { setupHarness } from './support/harness'
import type { Harness } from './support/harness'
import { Boom, rejection } from './support/errors'

interface Tables {
  t: { x: number }
}

let h: Harness
let kdb: Kysely<Tables>
let ddb: ReturnType<typeof drizzle>
const t = pgTable('t', { x: integer('x').notNull() })

const K_INSERT = 'insert into "t" ("x") values ($1)'
const D_INSERT = 'insert into "t" ("x") values ($1)'
const INSERT = 'insert into t (x) values ($1)'

beforeAll(async () => {
  h = await setupHarness('query builders')
  await h.admin.query('create table t (x int not null)')
  kdb = new Kysely<Tables>({ dialect: new PostgresDialect({ pool: h.db.pool, cursor: Cursor }) })
  ddb = drizzle({ client: h.db.pool })
})

afterAll(async () => {
  await h.close()
})

beforeEach(async () => {
  await h.admin.query('truncate t')
  h.reset()
})

afterEach(() => {
  expect(h.pool.idleCount).toBe(h.pool.totalCount)
})

const committed = () => h.column<number>('select x from t order by x')

describe('Kysely', () => {
  test('its transaction inside a block is a savepoint that commits with the block', async () => {
    await atomic(async () => {
      await h.db.query(INSERT, [1])
      await kdb.transaction().execute(async (trx) => {
        await trx.insertInto('t').values({ x: 2 }).execute()
      })
      await h.db.query(INSERT, [3])
    })
    expect(await committed()).toEqual([1, 2, 3])
    // The builder's COMMIT is the savepoint's RELEASE, deferred as for every nested block: no control
    // statement followed it, so COMMIT made it unnecessary.
    expect(h.batches).toEqual([['BEGIN', INSERT], ['SAVEPOINT "pga_1"', K_INSERT], [INSERT], ['COMMIT']])
  })

  test(
    'a failing transaction callback rolls back to the savepoint; the error reaches ' + 'the caller; the block goes on',
    async () => {
      let caught: unknown
      await atomic(async () => {
        await h.db.query(INSERT, [1])
        caught = await rejection(
          kdb.transaction().execute(async (trx) => {
            await trx.insertInto('t').values({ x: 2 }).execute()
            throw new Boom('undo the builder transaction')
          }),
        )
        await h.db.query(INSERT, [3])
      })
      expect(caught).toBeInstanceOf(Boom)
      expect(await committed()).toEqual([1, 3])
      expect(h.statements).toEqual([
        'BEGIN',
        INSERT,
        'SAVEPOINT "pga_1"',
        K_INSERT,
        'ROLLBACK TO SAVEPOINT "pga_1"',
        'RELEASE SAVEPOINT "pga_1"',
        INSERT,
        'COMMIT',
      ])
    },
  )

  test('the rows it committed disappear when the enclosing block rolls back', async () => {
    const error = await rejection(
      atomic(async () => {
        await kdb.transaction().execute((trx) => trx.insertInto('t').values({ x: 2 }).execute())
        throw new Boom('roll back the request')
      }),
    )
    expect(error).toBeInstanceOf(Boom)
    expect(await committed()).toEqual([])
    expect(h.statements.at(-1)).toBe('ROLLBACK')
  })

  test(
    'service code calling db.query and atomic() inside the callback joins the ' + 'builder transaction (no deadlock)',
    async () => {
      const error = await rejection(
        atomic(async () => {
          await kdb.transaction().execute(async (trx) => {
            await trx.insertInto('t').values({ x: 1 }).execute()
            await h.db.query(INSERT, [2])
            await atomic(() => h.db.query(INSERT, [3]))
            expect(await h.column('select count(*)::int from t')).toEqual([0])
            const { rows } = await h.db.query<{ n: number }>('select count(*)::int as n from t')
            expect(rows).toEqual([{ n: 3 }])
            throw new Boom('all three go with the builder transaction')
          })
        }),
      )
      expect(error).toBeInstanceOf(Boom)
      expect(await committed()).toEqual([])
      expect(h.statements).toEqual([
        'BEGIN',
        'SAVEPOINT "pga_1"',
        K_INSERT,
        INSERT,
        'SAVEPOINT "pga_2"',
        INSERT,
        'select count(*)::int as n from t',
        // The builder's ROLLBACK (to pga_1) is made unnecessary by the block's ROLLBACK in the same turn.
        'ROLLBACK',
      ])
    },
  )

  test('a controlled transaction with savepoints: rollback to one, release, commit', async () => {
    await atomic(async () => {
      const trx = await kdb.startTransaction().execute()
      await trx.insertInto('t').values({ x: 1 }).execute()
      const sp = await trx.savepoint('sp1').execute()
      await sp.insertInto('t').values({ x: 2 }).execute()
      await sp.rollbackToSavepoint('sp1').execute()
      await sp.insertInto('t').values({ x: 3 }).execute()
      await sp.releaseSavepoint('sp1').execute()
      await trx.commit().execute()
    })
    expect(await committed()).toEqual([1, 3])
    expect(h.statements).toEqual([
      'BEGIN',
      'SAVEPOINT "pga_1"',
      K_INSERT,
      'SAVEPOINT "pga_2"',
      K_INSERT,
      'ROLLBACK TO SAVEPOINT "pga_2"',
      'RELEASE SAVEPOINT "pga_2"',
      'SAVEPOINT "pga_3"',
      K_INSERT,
      'COMMIT',
    ])
  })

  test(
    'an isolation level the block does not have is refused with a clear error; the ' + 'same one is accepted',
    async () => {
      let refused: unknown
      await atomic(async () => {
        refused = await rejection(
          kdb
            .transaction()
            .setIsolationLevel('serializable')
            .execute((trx) => trx.insertInto('t').values({ x: 1 }).execute()),
        )
      })
      expect(refused).toBeInstanceOf(TransactionManagementError)
      expect((refused as Error).message).toBe(
        "A query builder's transaction asked for isolationLevel serializable, but it runs inside an atomic() block " +
          "whose transaction has the server's default: a nested block cannot change it. Set it on the outermost " +
          "atomic() block (or drop it from the builder), or run the builder's transaction outside atomic().",
      )
      await atomic({ isolationLevel: 'serializable' }, () =>
        kdb
          .transaction()
          .setIsolationLevel('serializable')
          .execute((trx) => trx.insertInto('t').values({ x: 2 }).execute()),
      )
      expect(await committed()).toEqual([2])
    },
  )

  test('.stream() works inside a block and inside its transaction, in the block snapshot', async () => {
    await h.admin.query('insert into t (x) select g from generate_series(1, 5) g')
    const seen: number[] = []
    await atomic(async () => {
      await h.db.query(INSERT, [6])
      for await (const row of kdb.selectFrom('t').select('x').orderBy('x').stream(2)) seen.push(row.x)
      await kdb.transaction().execute(async (trx) => {
        for await (const row of trx.selectFrom('t').select('x').where('x', '>', 4).orderBy('x').stream(10)) {
          seen.push(row.x)
        }
      })
    })
    expect(seen).toEqual([1, 2, 3, 4, 5, 6, 5, 6])
  })

  test('outside a block, its transaction is a normal pg transaction', async () => {
    await kdb.transaction().execute((trx) => trx.insertInto('t').values({ x: 1 }).execute())
    expect(await committed()).toEqual([1])
    expect(h.statements).toEqual(['begin', K_INSERT, 'commit'])
  })
})

describe('Drizzle', () => {
  test('its transaction and nested transactions inside a block map onto savepoints', async () => {
    await atomic(async () => {
      await ddb.transaction(async (tx) => {
        await tx.insert(t).values({ x: 1 })
        await tx.transaction(async (tx2) => {
          await tx2.insert(t).values({ x: 2 })
        })
        const error = await rejection(
          tx.transaction(async (tx2) => {
            await tx2.insert(t).values({ x: 3 })
            tx2.rollback()
          }),
        )
        expect(error).toBeInstanceOf(TransactionRollbackError)
        await tx.insert(t).values({ x: 4 })
      })
    })
    expect(await committed()).toEqual([1, 2, 4])
    expect(h.statements).toEqual([
      'BEGIN',
      'SAVEPOINT "pga_1"',
      D_INSERT,
      'SAVEPOINT "pga_2"',
      D_INSERT,
      'RELEASE SAVEPOINT "pga_2"',
      'SAVEPOINT "pga_3"',
      D_INSERT,
      'ROLLBACK TO SAVEPOINT "pga_3"',
      'RELEASE SAVEPOINT "pga_3"',
      // Drizzle's sp2 is kept open by ROLLBACK TO, as in PostgreSQL: a savepoint of its own.
      'SAVEPOINT "pga_4"',
      D_INSERT,
      'COMMIT',
    ])
  })

  test('a failing transaction rolls back to its savepoint and the enclosing block decides', async () => {
    const error = await rejection(
      atomic(async () => {
        await h.db.query(INSERT, [1])
        await rejection(
          ddb.transaction(async (tx) => {
            await tx.insert(t).values({ x: 2 })
            throw new Boom('drizzle transaction fails')
          }),
        )
        expect(await h.db.query('select count(*)::int as n from t')).toMatchObject({ rows: [{ n: 1 }] })
        throw new Boom('then the block fails too')
      }),
    )
    expect(error).toBeInstanceOf(Boom)
    expect(await committed()).toEqual([])
  })

  test('outside a block, its transaction is a normal pg transaction', async () => {
    await ddb.transaction(async (tx) => {
      await tx.insert(t).values({ x: 1 })
    })
    expect(await committed()).toEqual([1])
    expect(h.statements).toEqual(['begin', D_INSERT, 'commit'])
  })
})

describe('a builder transaction that never ends', () => {
  test(
    'still open when the block returns: it is rolled back and the block rejects ' + 'instead of committing it',
    async () => {
      const error = await rejection(
        atomic(async () => {
          await h.db.query(INSERT, [1])
          const client = await h.db.pool.connect()
          await client.query('begin')
          await client.query(INSERT, [2])
          // Neither COMMIT nor ROLLBACK, nor release().
        }),
      )
      expect(error).toBeInstanceOf(TransactionManagementError)
      expect((error as Error).message).toBe(
        "A query builder's transaction begun on a db.pool client inside this 'atomic' block was still open when " +
          "the block's function returned, so it never committed: it was rolled back, and so was the block. Await " +
          "the builder's transaction (its COMMIT or ROLLBACK) inside the block.",
      )
      expect(await committed()).toEqual([])
      expect(h.statements.at(-1)).toBe('ROLLBACK')
    },
  )

  test(
    'its client released without COMMIT: the builder block is rolled back, the ' + 'enclosing block goes on',
    async () => {
      await atomic(async () => {
        await h.db.query(INSERT, [1])
        const client = await h.db.pool.connect()
        await client.query('begin')
        await client.query(INSERT, [2])
        client.release()
        await h.db.query(INSERT, [3])
      })
      expect(await committed()).toEqual([1, 3])
    },
  )
})
