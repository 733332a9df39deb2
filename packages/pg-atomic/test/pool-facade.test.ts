/**
 * db.pool as a pg Pool: query() and connect() route to the ambient block, outside they behave like
 * pg; events and counts are the real pool's. Minimal imitations of how Kysely's PostgresDriver and
 * Drizzle's node-postgres session use a pool show that both join atomic() blocks.
 */
import pg from 'pg'
import Cursor from 'pg-cursor'
import { TransactionManagementError, atomic } from 'pg-atomic'
import { rejection, setupHarness } from './support/harness'
import type { Harness } from './support/harness'
import { Boom } from './support/errors'

let h: Harness

beforeAll(async () => {
  h = await setupHarness('pool facade')
  await h.admin.query('create table t (x int not null)')
})
afterAll(() => h.close())
beforeEach(async () => {
  await h.admin.query('truncate t')
  h.reset()
})
afterEach(() => {
  expect(h.pool.idleCount).toBe(h.pool.totalCount)
})

const INSERT = 'insert into t (x) values ($1)'
const committed = () => h.column<number>('select x from t order by x')
const checkedOut = () => h.pool.totalCount - h.pool.idleCount
const pidOf = (client: pg.PoolClient) => (client as unknown as { processID: number }).processID
const FORBIDDEN =
  /^This is forbidden when an 'atomic' block is active\. BEGIN cannot be sent inside an atomic\(\) block/

/** Fails fast instead of waiting for jest's timeout when `promise` never settles. */
function within<T>(promise: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined
  const bound = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => reject(new Error(`did not settle within ${ms} ms`)), ms)
  })
  return Promise.race([promise, bound]).finally(() => clearTimeout(timer))
}

/** 'resolved', or the class name of the rejection reason: compact in failure output. */
function describeOutcome(outcome: unknown): string {
  const o = outcome as PromiseSettledResult<unknown> | undefined
  if (o?.status === 'fulfilled') return 'resolved'
  const reason = o?.reason as Error | undefined
  return reason instanceof TransactionManagementError
    ? 'TransactionManagementError'
    : `${reason?.name}: ${reason?.message}`
}

/** Promisifies the callback form of query(). */
function callbackQuery(
  run: (cb: (err: Error | null, result?: pg.QueryResult) => void) => unknown,
): Promise<pg.QueryResult> {
  return new Promise((resolve, reject) => {
    const returned = run((err, result) => (err ? reject(err) : resolve(result as pg.QueryResult)))
    expect(returned).toBeUndefined()
  })
}

describe('db.pool.query', () => {
  test('inside a block it runs on the block connection: visible inside only, until COMMIT', async () => {
    await atomic(async () => {
      await h.db.pool.query(INSERT, [1])
      const inside = await h.db.pool.query<{ n: number }>('select count(*)::int as n from t')
      expect(inside.rows).toEqual([{ n: 1 }])
      expect(await committed()).toEqual([])
      expect(checkedOut()).toBe(1)
    })
    expect(await committed()).toEqual([1])
    expect(h.statements).toEqual(['BEGIN', INSERT, 'select count(*)::int as n from t', 'COMMIT'])
  })

  test('inside a block it rolls back with the block', async () => {
    await expect(
      atomic(async () => {
        await h.db.pool.query(INSERT, [1])
        throw new Boom('no')
      }),
    ).rejects.toThrow(Boom)
    expect(await committed()).toEqual([])
    expect(h.statements).toEqual(['BEGIN', INSERT, 'ROLLBACK'])
  })

  test('outside a block it runs in autocommit', async () => {
    const result = await h.db.pool.query(INSERT, [1])
    expect(result).toMatchObject({ command: 'INSERT', rowCount: 1 })
    expect(await committed()).toEqual([1])
    expect(h.statements).toEqual([INSERT])
  })

  test('the callback forms work inside and outside a block', async () => {
    const outside = await callbackQuery((cb) => h.db.pool.query('select 1 as one', cb))
    expect(outside.rows).toEqual([{ one: 1 }])
    await atomic(async () => {
      const inserted = await callbackQuery((cb) => h.db.pool.query(INSERT, [2], cb))
      expect(inserted.rowCount).toBe(1)
      const seen = await callbackQuery((cb) => h.db.pool.query('select x from t', cb))
      expect(seen.rows).toEqual([{ x: 2 }])
      expect(await committed()).toEqual([])
    })
    expect(await committed()).toEqual([2])
    expect(h.statements).toEqual(['select 1 as one', 'BEGIN', INSERT, 'select x from t', 'COMMIT'])
  })

  test('the callback receives the pg error, and inside a block that error dooms it', async () => {
    const error = await rejection(
      atomic(async () => {
        await h.db.pool.query(INSERT, [1])
        const failed = await rejection(callbackQuery((cb) => h.db.pool.query('select 1/0', cb)))
        expect(failed).toMatchObject({ code: '22012' })
        throw failed
      }),
    )
    expect(error).toMatchObject({ code: '22012' })
    expect(await committed()).toEqual([])
  })

  test('transaction control through it is refused inside a block without dooming the block', async () => {
    await atomic(async () => {
      await h.db.pool.query(INSERT, [1])
      const error = await rejection(h.db.pool.query('BEGIN'))
      expect(error).toBeInstanceOf(TransactionManagementError)
      expect((error as Error).message).toMatch(FORBIDDEN)
      await h.db.pool.query(INSERT, [2])
    })
    expect(await committed()).toEqual([1, 2])
    expect(h.statements).toEqual(['BEGIN', INSERT, INSERT, 'COMMIT'])
  })
})

describe('db.pool.connect', () => {
  test('inside a block: a client on the block connection whose release() does not return it', async () => {
    await atomic(async () => {
      await h.db.query(INSERT, [1])
      expect(checkedOut()).toBe(1)
      const total = h.pool.totalCount
      const client = await h.db.pool.connect()
      expect(checkedOut()).toBe(1)
      expect(h.pool.totalCount).toBe(total)
      await client.query(INSERT, [2])
      expect((await client.query('select x from t order by x')).rows).toEqual([{ x: 1 }, { x: 2 }])
      client.release()
      expect(checkedOut()).toBe(1)
      // The block still owns the connection: more statements run in the same transaction.
      await h.db.query(INSERT, [3])
      expect(await committed()).toEqual([])
    })
    expect(checkedOut()).toBe(0)
    expect(await committed()).toEqual([1, 2, 3])
    expect(h.statements).toEqual(['BEGIN', INSERT, INSERT, 'select x from t order by x', INSERT, 'COMMIT'])
  })

  test('inside a block: its statements roll back with the block', async () => {
    await expect(
      atomic(async () => {
        const client = await h.db.pool.connect()
        try {
          await client.query(INSERT, [1])
        } finally {
          client.release()
        }
        throw new Boom('no')
      }),
    ).rejects.toThrow(Boom)
    expect(await committed()).toEqual([])
    expect(h.statements).toEqual(['BEGIN', INSERT, 'ROLLBACK'])
  })

  test(
    'inside a block: BEGIN and COMMIT through the client map onto a nested block; a ' + 'stray COMMIT is refused',
    async () => {
      await atomic(async () => {
        await h.db.query(INSERT, [1])
        const client = await h.db.pool.connect()
        h.reset()
        const stray = await rejection(client.query({ text: 'commit' }))
        expect(stray).toBeInstanceOf(TransactionManagementError)
        expect((stray as Error).message).toBe(
          'COMMIT was sent on a client of db.pool inside an atomic() block, but no transaction was begun on this ' +
            'client: nest atomic() blocks for savepoints and let the outermost block commit or roll back.',
        )
        expect(h.statements).toEqual([])
        await expect(client.query('BEGIN')).resolves.toMatchObject({ command: 'BEGIN', rows: [] })
        await client.query(INSERT, [2])
        await expect(client.query('COMMIT')).resolves.toMatchObject({ command: 'COMMIT', rows: [] })
        client.release()
      })
      // The client's COMMIT is the savepoint's RELEASE, deferred and then made unnecessary by COMMIT.
      expect(h.statements).toEqual(['SAVEPOINT "pga_1"', INSERT, 'COMMIT'])
      expect(await committed()).toEqual([1, 2])
    },
  )

  test('inside a block: the callback form of connect() and query() works', async () => {
    await atomic(async () => {
      const client = await new Promise<pg.PoolClient>((resolve, reject) => {
        h.db.pool.connect((err, c) => (err ? reject(err) : resolve(c as pg.PoolClient)))
      })
      const result = await callbackQuery((cb) => client.query(INSERT, [1], cb))
      expect(result.rowCount).toBe(1)
      client.release()
    })
    expect(await committed()).toEqual([1])
    expect(h.statements).toEqual(['BEGIN', INSERT, 'COMMIT'])
  })

  test('inside a block: a submittable (pg-cursor) on the client runs in the block, as on a pg client', async () => {
    await atomic(async () => {
      await h.db.query(INSERT, [1])
      await h.db.query(INSERT, [2])
      const client = await h.db.pool.connect()
      const cursor = client.query(new Cursor<{ x: number }>('select x from t order by x'))
      expect(cursor).toBeInstanceOf(Cursor)
      expect(await cursor.read(1)).toEqual([{ x: 1 }])
      // The cursor holds the connection: other statements are refused until it is closed.
      const busy = await rejection(h.db.query('select 1'))
      expect(busy).toBeInstanceOf(TransactionManagementError)
      expect(await cursor.read(10)).toEqual([{ x: 2 }])
      await cursor.close()
      await h.db.query(INSERT, [3])
      client.release()
    })
    expect(await committed()).toEqual([1, 2, 3])
    expect(h.statements).toEqual(['BEGIN', INSERT, INSERT, 'select x from t order by x', INSERT, 'COMMIT'])
  })

  test('inside a block: the client is unusable once the block has ended', async () => {
    let client: pg.PoolClient | undefined
    await atomic(async () => {
      client = await h.db.pool.connect()
      await client.query(INSERT, [1])
    })
    h.reset()
    const error = await rejection((client as pg.PoolClient).query(INSERT, [2]))
    expect(error).toBeInstanceOf(TransactionManagementError)
    expect((error as Error).message).toMatch(/^This 'atomic' block has already ended/)
    expect(h.statements).toEqual([])
    expect(await committed()).toEqual([1])
  })

  test('outside a block: a real pg client, returned to the pool by release()', async () => {
    const client = await h.db.pool.connect()
    expect(client).toBeInstanceOf(pg.Client)
    expect(checkedOut()).toBe(1)
    const pid = pidOf(client)
    await client.query('BEGIN')
    await client.query(INSERT, [1])
    expect(await committed()).toEqual([])
    await client.query('COMMIT')
    expect(client.getTransactionStatus()).toBe('I')
    client.release()
    expect(checkedOut()).toBe(0)
    expect(await committed()).toEqual([1])
    const again = await h.pool.connect()
    expect(pidOf(again)).toBe(pid)
    again.release()
  })

  test('outside a block: release(true) destroys the client, as with pg', async () => {
    const client = await h.db.pool.connect()
    const total = h.pool.totalCount
    client.release(true)
    expect(h.pool.totalCount).toBe(total - 1)
  })

  test('outside a block: the callback form gives a real client and a done() that returns it', async () => {
    const total = await new Promise<number>((resolve, reject) => {
      h.db.pool.connect((err, client, done) => {
        if (err || client === undefined) return reject(err)
        client.query('select 1 as one').then((result) => {
          expect(result.rows).toEqual([{ one: 1 }])
          done()
          resolve(h.pool.totalCount)
        }, reject)
      })
    })
    expect(h.pool.idleCount).toBe(total)
  })
})

describe('events and counts', () => {
  test('listeners added on db.pool receive the real pool events', async () => {
    const connect = jest.fn()
    const acquire = jest.fn()
    const release = jest.fn()
    expect(h.db.pool.on('connect', connect)).toBe(h.db.pool)
    h.db.pool.on('acquire', acquire)
    h.db.pool.addListener('release', release)
    const removed = new Promise((resolve) => h.db.pool.once('remove', resolve))
    try {
      // One more client than idle ones: the pool must open a new connection.
      const idle = h.pool.idleCount
      expect(idle).toBeLessThan(5)
      const clients = await Promise.all(Array.from({ length: idle + 1 }, () => h.db.pool.connect()))
      expect(connect).toHaveBeenCalledTimes(1)
      expect(connect.mock.calls[0]?.[0]).toBeInstanceOf(pg.Client)
      expect(acquire).toHaveBeenCalledTimes(idle + 1)
      for (const c of clients) c.release()
      expect(release).toHaveBeenCalledTimes(idle + 1)

      // The checkout of an atomic() block is a real checkout too.
      await atomic(() => h.db.query('select 1'))
      expect(acquire).toHaveBeenCalledTimes(idle + 2)

      const doomed = await h.db.pool.connect()
      doomed.release(true)
      // pg-pool emits 'remove' once the destroyed client has ended.
      expect(await removed).toBe(doomed)
    } finally {
      h.db.pool.off('connect', connect)
      h.db.pool.removeListener('acquire', acquire)
      h.db.pool.off('release', release)
    }
    acquire.mockClear()
    await h.db.query('select 1')
    expect(acquire).not.toHaveBeenCalled()
    expect(h.pool.listenerCount('connect')).toBe(0)
    expect(h.pool.listenerCount('remove')).toBe(0)
  })

  test(
    'the rest of the EventEmitter surface is delegated too: prependListener, ' +
      'listenerCount, listeners, removeAllListeners',
    async () => {
      const first = jest.fn()
      const second = jest.fn()
      try {
        h.db.pool.on('acquire', second)
        h.db.pool.prependListener('acquire', first)
        const client = await h.db.pool.connect()
        client.release()
        // A listener added with prependListener must hear the real pool's events, before the others.
        expect(second).toHaveBeenCalledTimes(1)
        expect(first).toHaveBeenCalledTimes(1)
        expect(first.mock.invocationCallOrder[0]).toBeLessThan(second.mock.invocationCallOrder[0] ?? 0)
        expect(h.pool.listenerCount('acquire')).toBe(2)
        expect(h.db.pool.listenerCount('acquire')).toBe(2)
        expect(h.db.pool.listeners('acquire')).toEqual([first, second])
        h.db.pool.removeAllListeners('acquire')
        expect(h.pool.listenerCount('acquire')).toBe(0)
      } finally {
        h.pool.removeAllListeners('acquire')
        h.db.pool.removeAllListeners('acquire')
      }
    },
  )

  test('totalCount, idleCount and waitingCount are the real pool counts', async () => {
    const same = () => {
      expect(h.db.pool.totalCount).toBe(h.pool.totalCount)
      expect(h.db.pool.idleCount).toBe(h.pool.idleCount)
      expect(h.db.pool.waitingCount).toBe(h.pool.waitingCount)
    }
    same()
    await atomic(async () => {
      await h.db.query('select 1')
      same()
      expect(h.db.pool.idleCount).toBe(h.db.pool.totalCount - 1)
    })
    same()
    // Exhaust the pool (max 5) from outside, then one more waits.
    const clients = await Promise.all(Array.from({ length: 5 }, () => h.db.pool.connect()))
    expect(h.db.pool.totalCount).toBe(5)
    expect(h.db.pool.idleCount).toBe(0)
    const waiting = h.db.pool.connect()
    expect(h.db.pool.waitingCount).toBe(1)
    same()
    for (const c of clients) c.release()
    ;(await waiting).release()
    same()
    expect(h.db.pool.waitingCount).toBe(0)
    expect(h.db.pool.ended).toBe(false)
  })
})

describe('submittables (pg-cursor, pg-query-stream) passed to query()', () => {
  // pg's Pool type accepts query(submittable); the block client refuses it (use db.cursor()), and
  // so must every other way of running a statement: an open portal makes every later statement of
  // the connection wait forever.
  test('inside a block, db.pool.query / db.query / tx.query refuse it instead of hanging the transaction', async () => {
    const checkout = new Promise<pg.PoolClient>((resolve) => h.pool.once('acquire', resolve))
    const outcomes: unknown[] = []
    const block = atomic(async (tx) => {
      await h.db.query('select 1')
      for (const run of [
        () => h.db.pool.query(new Cursor('select 2') as never),
        () => h.db.query(new Cursor('select 3') as never),
        () => tx.query(new Cursor('select 4') as never),
      ]) {
        const settled = await Promise.allSettled([Promise.resolve().then(run)])
        outcomes.push(settled[0])
        if (settled[0]?.status === 'fulfilled') break // the portal is open: nothing else can run
      }
      return 'done'
    })
    const [result] = await Promise.allSettled([within(block, 2000)])
    if (result?.status === 'rejected' && (result.reason as Error).message.startsWith('did not settle')) {
      // Unstick the transaction left waiting behind the open portal, so the file can go on.
      ;(await checkout).end()
      await Promise.allSettled([block])
    }
    expect(outcomes.map(describeOutcome)).toEqual([
      'TransactionManagementError',
      'TransactionManagementError',
      'TransactionManagementError',
    ])
    expect(describeOutcome(result)).toBe('resolved')
  })

  test('outside a block, db.pool.query refuses it instead of returning a busy connection to the pool', async () => {
    const [result] = await Promise.allSettled([
      h.db.pool.query(new Cursor('select 1') as never) as unknown as Promise<unknown>,
    ])
    if (result?.status === 'fulfilled') {
      // The connection went back to the pool with the portal open: destroy it so the file can go on.
      const poisoned = await h.pool.connect()
      poisoned.release(true)
    }
    expect(describeOutcome(result)).toBe('TransactionManagementError')
    await expect(within(h.db.query('select 1 as one'), 2000)).resolves.toMatchObject({ rows: [{ one: 1 }] })
  })
})

// ---- Query builders ----------------------------------------------------------------------------

/**
 * How Kysely's PostgresDriver uses a pool (kysely src/dialect/postgres/postgres-driver.ts): every
 * query acquires a connection with pool.connect(), runs client.query(sql, [...parameters]) and
 * releases it; its own transactions send 'begin' / 'commit' / 'rollback' through the same client.
 */
class KyselyLikeDriver {
  constructor(private readonly pool: pg.Pool) {}

  async acquireConnection(): Promise<KyselyLikeConnection> {
    return new KyselyLikeConnection(await this.pool.connect())
  }

  async releaseConnection(connection: KyselyLikeConnection): Promise<void> {
    connection.release()
  }

  /** Kysely's DefaultConnectionProvider: acquire, run, release. */
  async execute<R>(
    sql: string,
    parameters: readonly unknown[] = [],
  ): Promise<{ rows: R[]; numUpdatedOrDeletedRows?: bigint }> {
    const connection = await this.acquireConnection()
    try {
      return await connection.executeQuery<R>(sql, parameters)
    } finally {
      await this.releaseConnection(connection)
    }
  }

  /** Kysely's db.transaction().execute(fn). */
  async transaction<T>(fn: (connection: KyselyLikeConnection) => Promise<T>): Promise<T> {
    const connection = await this.acquireConnection()
    try {
      await connection.executeQuery('begin', [])
      try {
        const result = await fn(connection)
        await connection.executeQuery('commit', [])
        return result
      } catch (error) {
        await connection.executeQuery('rollback', [])
        throw error
      }
    } finally {
      await this.releaseConnection(connection)
    }
  }
}

class KyselyLikeConnection {
  constructor(private readonly client: pg.PoolClient) {}

  async executeQuery<R>(
    sql: string,
    parameters: readonly unknown[],
  ): Promise<{ rows: R[]; numUpdatedOrDeletedRows?: bigint }> {
    const result = await this.client.query(sql, [...parameters])
    if (result.command === 'UPDATE' || result.command === 'DELETE') {
      return { numUpdatedOrDeletedRows: BigInt(result.rowCount ?? 0), rows: result.rows ?? [] }
    }
    return { rows: (result.rows ?? []) as R[] }
  }

  release(): void {
    this.client.release()
  }
}

/**
 * How Drizzle's node-postgres session uses a pool (drizzle-orm src/node-postgres/session.ts):
 * pool.query(config, params) with { name, text, rowMode: 'array', types } for mapped selects,
 * { name, text, types } for raw ones; its transaction() checks `client instanceof pg.Pool` to
 * decide whether to connect() a dedicated client first.
 */
const drizzleTypes = {
  getTypeParser: (typeId: number, format?: string) =>
    typeId === pg.types.builtins.TIMESTAMPTZ || typeId === pg.types.builtins.DATE
      ? (value: string) => value
      : pg.types.getTypeParser(typeId, format as 'text'),
}

class DrizzleLikeSession {
  constructor(private readonly client: pg.Pool | pg.PoolClient) {}

  /** NodePgPreparedQuery.execute() with selected fields: array rows. */
  async values(text: string, params: unknown[] = []): Promise<unknown[][]> {
    const result = await this.client.query(
      { name: undefined, text, rowMode: 'array', types: drizzleTypes } as pg.QueryArrayConfig,
      params,
    )
    return result.rows
  }

  /** NodePgPreparedQuery.execute() without fields (raw). */
  async execute(text: string, params: unknown[] = []): Promise<pg.QueryResult> {
    return this.client.query({ name: undefined, text, types: drizzleTypes } as pg.QueryConfig, params)
  }

  /** NodePgSession.transaction(). */
  async transaction<T>(fn: (tx: DrizzleLikeSession) => Promise<T>): Promise<T> {
    const isPool = this.client instanceof pg.Pool
    const session = isPool ? new DrizzleLikeSession(await (this.client as pg.Pool).connect()) : this
    await session.execute('begin')
    try {
      const result = await fn(session)
      await session.execute('commit')
      return result
    } catch (error) {
      await session.execute('rollback')
      throw error
    } finally {
      if (isPool) (session.client as pg.PoolClient).release()
    }
  }
}

describe('query builders that take a pool join atomic() blocks', () => {
  test('Kysely-style acquire/query/release per statement runs in the block and rolls back with it', async () => {
    const kysely = new KyselyLikeDriver(h.db.pool)
    const error = await rejection(
      atomic(async () => {
        await kysely.execute('insert into t (x) values ($1), ($2)', [1, 2])
        const updated = await kysely.execute('update t set x = x * 10 where x = $1', [2])
        expect(updated.numUpdatedOrDeletedRows).toBe(1n)
        expect((await kysely.execute<{ x: number }>('select x from t order by x')).rows).toEqual([{ x: 1 }, { x: 20 }])
        expect(checkedOut()).toBe(1)
        expect(await committed()).toEqual([])
        throw new Boom('undo')
      }),
    )
    expect(error).toBeInstanceOf(Boom)
    expect(await committed()).toEqual([])
    expect(h.statements).toEqual([
      'BEGIN',
      'insert into t (x) values ($1), ($2)',
      'update t set x = x * 10 where x = $1',
      'select x from t order by x',
      'ROLLBACK',
    ])
  })

  test('Kysely-style statements commit with the block, and mix with db.query in one transaction', async () => {
    const kysely = new KyselyLikeDriver(h.db.pool)
    await atomic(async () => {
      await kysely.execute(INSERT, [1])
      await h.db.query(INSERT, [2])
      await atomic(async () => {
        await kysely.execute(INSERT, [3])
      })
    })
    expect(await committed()).toEqual([1, 2, 3])
    expect(h.statements).toEqual(['BEGIN', INSERT, INSERT, 'SAVEPOINT "pga_1"', INSERT, 'COMMIT'])
  })

  test("Kysely's own transaction: a savepoint inside a block, a normal pg transaction outside", async () => {
    const kysely = new KyselyLikeDriver(h.db.pool)
    await atomic(async () => {
      await h.db.query(INSERT, [1])
      await kysely.transaction((c) => c.executeQuery(INSERT, [2]))
    })
    expect(await committed()).toEqual([1, 2])
    expect(h.statements).toEqual(['BEGIN', INSERT, 'SAVEPOINT "pga_1"', INSERT, 'COMMIT'])
    h.reset()
    await kysely.transaction((c) => c.executeQuery(INSERT, [3]))
    expect(await committed()).toEqual([1, 2, 3])
    expect(h.statements).toEqual(['begin', INSERT, 'commit'])
  })

  test(
    'Drizzle-style pool.query({ text, rowMode: "array", types }, params) runs in the ' + 'block and rolls back with it',
    async () => {
      const drizzle = new DrizzleLikeSession(h.db.pool)
      const error = await rejection(
        atomic(async () => {
          await drizzle.execute(INSERT, [1])
          expect(await drizzle.values('select x, $1::text as label from t', ['one'])).toEqual([[1, 'one']])
          // The config's own type parsers are used: timestamptz stays a string.
          const [[stamp]] = (await drizzle.values("select '2024-01-02 03:04:05+00'::timestamptz")) as [[unknown]]
          expect(typeof stamp).toBe('string')
          expect(await committed()).toEqual([])
          throw new Boom('undo')
        }),
      )
      expect(error).toBeInstanceOf(Boom)
      expect(await committed()).toEqual([])
      expect(h.statements).toEqual([
        'BEGIN',
        INSERT,
        'select x, $1::text as label from t',
        "select '2024-01-02 03:04:05+00'::timestamptz",
        'ROLLBACK',
      ])
    },
  )

  test('Drizzle-style statements commit with the block', async () => {
    const drizzle = new DrizzleLikeSession(h.db.pool)
    await atomic(async () => {
      await drizzle.execute(INSERT, [1])
      expect(await drizzle.values('select count(*)::int from t')).toEqual([[1]])
    })
    expect(await committed()).toEqual([1])
  })

  test(
    "Drizzle's own transaction() outside a block runs on one pooled client, as with " +
      'a pg.Pool (needs db.pool instanceof pg.Pool)',
    async () => {
      const drizzle = new DrizzleLikeSession(h.db.pool)
      await drizzle.transaction(async (tx) => {
        await tx.execute(INSERT, [1])
        expect(await tx.values('select count(*)::int from t')).toEqual([[1]])
      })
      expect(await committed()).toEqual([1])
      expect(h.statements).toEqual(['begin', INSERT, 'select count(*)::int from t', 'commit'])
    },
  )
})
