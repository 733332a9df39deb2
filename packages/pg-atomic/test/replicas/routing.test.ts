/**
 * Read replicas (issue 12 §2): which server each kind of block and read goes to, on a real
 * primary + streaming standby pair (.ci/replica.sh). Every case asserts the server that answered
 * (`inet_server_port()`, `pg_is_in_recovery()`), the rows, and what reached the primary.
 */
import pg from 'pg'
import {
  Atomic,
  ConnectionLostError,
  InvalidOptionError,
  SuspendedTransactionDeadlockError,
  TransactionManagementError,
  createDatabase,
} from 'pg-atomic'
import type { Database, DatabaseConfig } from 'pg-atomic'
import { rejection, thrown } from '../support/errors'
import { waitUntil } from '../support/wait'
import { WHO, describeWithReplica, setupReplicaPair } from '../support/replica'
import type { ReplicaPair, ServerIdentity } from '../support/replica'

const LSN_AFTER_COMMIT =
  'COMMIT; select case when pg_is_in_recovery() then null else pg_current_wal_insert_lsn()::text end as lsn'

let pair: ReplicaPair
let db: Database

async function who(run: (sql: string) => Promise<pg.QueryResult>): Promise<ServerIdentity> {
  const { rows } = await run(WHO)
  return rows[0] as ServerIdentity
}

describeWithReplica('read replicas: routing', () => {
  let primary: ServerIdentity
  let replica: ServerIdentity

  beforeAll(async () => {
    pair = await setupReplicaPair('routing')
    await pair.admin.query('create table items (id int primary key, name text not null)')
    await pair.admin.query("insert into items values (1, 'one')")
    await pair.waitForReplay()
    primary = { port: pair.primaryPort, standby: false }
    replica = { port: pair.replicaPort, standby: true }
  }, 120_000)
  afterAll(async () => {
    await pair?.close()
  })
  beforeEach(() => {
    db = createDatabase({ alias: 'routing', pool: pair.primaryPool, replicas: [pair.replicaUrl] })
    pair.reset()
  })
  afterEach(async () => {
    await db.close()
  })

  test('an outermost readOnly block runs on the replica; nothing reaches the primary', async () => {
    const seen = await db.atomic({ readOnly: true }, async () => ({
      server: await who((sql) => db.query(sql)),
      readOnly: (await db.query<{ r: string }>('select current_setting($1) as r', ['transaction_read_only'])).rows[0]
        ?.r,
      rows: (await db.query('select id, name from items order by id')).rows,
    }))
    expect(seen).toEqual({ server: replica, readOnly: 'on', rows: [{ id: 1, name: 'one' }] })
    expect(pair.statements).toEqual([])
    expect(db.replica.lastCommitLsn()).toBeUndefined()
  })

  test('a read-write block runs on the primary; its COMMIT carries the WAL position in one round trip', async () => {
    const server = await db.atomic(async () => {
      await db.query("insert into items values (2, 'two')")
      return who((sql) => db.query(sql))
    })
    expect(server).toEqual(primary)
    expect(pair.batches.at(-1)).toEqual([LSN_AFTER_COMMIT])
    const lsn = db.replica.lastCommitLsn()
    expect(lsn).toMatch(/^[0-9A-F]+\/[0-9A-F]+$/)
    // The position is at or past the commit: the primary's current position is not before it.
    const { rows } = await pair.admin.query<{ ok: boolean }>('select pg_current_wal_insert_lsn() >= $1::pg_lsn as ok', [
      lsn,
    ])
    expect(rows).toEqual([{ ok: true }])
    await pair.admin.query('delete from items where id = 2')
  })

  test('a block without options (the server default, read-write) runs on the primary', async () => {
    expect(await db.atomic(() => who((sql) => db.query(sql)))).toEqual(primary)
    // Nothing written is still a read-write transaction: it asks for the WAL position too.
    expect(pair.statements).toEqual(['BEGIN', WHO, LSN_AFTER_COMMIT])
  })

  test('readOnly serializable runs on the primary: a standby refuses serializable transactions', async () => {
    const server = await db.atomic({ readOnly: true, isolationLevel: 'serializable' }, () =>
      who((sql) => db.query(sql)),
    )
    expect(server).toEqual(primary)
    // Read-only: no WAL position asked for.
    expect(pair.statements).toEqual(['BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY', WHO, 'COMMIT'])
  })

  test('blocks nested in a readOnly block stay in its transaction on the replica', async () => {
    const seen = await db.atomic({ readOnly: true }, async () => {
      const outer = await who((sql) => db.query(sql))
      const inner = await db.atomic({ readOnly: true }, () => who((sql) => db.query(sql)))
      const plain = await db.atomic(() => who((sql) => db.query(sql)))
      return { outer, inner, plain, depth: db.currentTransaction()?.depth }
    })
    expect(seen).toEqual({ outer: replica, inner: replica, plain: replica, depth: 1 })
    expect(pair.statements).toEqual([])
  })

  test('blocks nested in a read-write block stay on the primary; a nested readOnly one is refused', async () => {
    const seen = await db.atomic(async () => {
      const inner = await db.atomic(() => who((sql) => db.query(sql)))
      const refused = await rejection(db.atomic({ readOnly: true }, () => db.query('select 1')))
      const explicit = await who((sql) => db.replica.query(sql))
      return { inner, refused, explicit }
    })
    expect(seen.inner).toEqual(primary)
    expect(seen.explicit).toEqual(primary)
    expect(seen.refused).toBeInstanceOf(TransactionManagementError)
    expect((seen.refused as Error).message).toBe(
      'readOnly can only be chosen by the outermost atomic() block: this block is nested in a transaction ' +
        "whose readOnly is the server's default, not true. Set it on the outermost block, or make this " +
        'block durable so that it must be outermost.',
    )
    expect(pair.statements).toEqual([
      'BEGIN',
      'SAVEPOINT "pga_1"',
      WHO,
      // The RELEASE was deferred, then dropped by COMMIT (it had nothing to ride with before).
      WHO,
      LSN_AFTER_COMMIT,
    ])
  })

  test('db.replica.query and db.replica.cursor outside blocks read on the replica', async () => {
    expect(await who((sql) => db.replica.query(sql))).toEqual(replica)
    expect((await db.replica.query({ text: 'select name from items where id = $1', values: [1] })).rows).toEqual([
      { name: 'one' },
    ])
    const rows: unknown[] = []
    for await (const row of db.replica.cursor<{ id: number; standby: boolean }>(
      'select id, pg_is_in_recovery() as standby from items order by id',
      [],
      { batchSize: 1 },
    ))
      rows.push(row)
    expect(rows).toEqual([{ id: 1, standby: true }])
    expect(pair.statements).toEqual([])
  })

  test('db.replica outside blocks is read-only on the primary too: a write fails with 25006 anywhere', async () => {
    // On the replica: refused by the standby.
    await expect(db.replica.query("insert into items values (40, 'forty')")).rejects.toMatchObject({ code: '25006' })
    await db.close()
    // No replica usable (nothing listens on port 1): the primary serves, in a read-only transaction.
    db = createDatabase({
      alias: 'routing',
      pool: pair.primaryPool,
      replicas: ['postgres://postgres@127.0.0.1:1/postgres'],
    })
    pair.reset()
    const readOnly = 'select current_setting($1) as r'
    expect((await db.replica.query(readOnly, ['transaction_read_only'])).rows).toEqual([{ r: 'on' }])
    await expect(db.replica.query("insert into items values (41, 'forty-one')")).rejects.toMatchObject({
      code: '25006',
    })
    await expect(
      db.replica.query({ text: 'insert into items values ($1, $2)', values: [42, 'x'] }),
    ).rejects.toMatchObject({ code: '25006' })
    // The statement cannot switch its transaction back to read-write: the snapshot is taken.
    await expect(db.replica.query('set transaction_read_only = off')).rejects.toMatchObject({ code: '25001' })
    // Several statements in one string (no pipelining): an explicit read-only transaction.
    await expect(db.replica.query("select 1; insert into items values (44, 'forty-four')")).rejects.toMatchObject({
      code: '25006',
    })
    const multi = await db.replica.query('select 1 as a; select 2 as b')
    expect((multi as unknown as pg.QueryResult[]).map((r) => r.rows)).toEqual([[{ a: 1 }], [{ b: 2 }]])
    const rs = "select set_config('transaction_read_only', 'on', true)"
    expect(pair.statements).toEqual([
      rs,
      readOnly,
      rs,
      "insert into items values (41, 'forty-one')",
      rs,
      'insert into items values ($1, $2)',
      rs,
      'set transaction_read_only = off',
      `BEGIN READ ONLY; ${rs}`,
      "select 1; insert into items values (44, 'forty-four')",
      'ROLLBACK',
      `BEGIN READ ONLY; ${rs}`,
      'select 1 as a; select 2 as b',
      'COMMIT',
    ])
    // db.replica.cursor the same.
    pair.reset()
    const read: unknown[] = []
    for await (const row of db.replica.cursor(readOnly, ['transaction_read_only'])) read.push(row)
    expect(read).toEqual([{ r: 'on' }])
    const write = async (): Promise<void> => {
      for await (const row of db.replica.cursor("insert into items values (45, 'x') returning id")) read.push(row)
    }
    await expect(write()).rejects.toMatchObject({ code: '25006' })
    expect(pair.statements).toEqual([
      `BEGIN READ ONLY; ${rs}`,
      readOnly,
      'COMMIT',
      `BEGIN READ ONLY; ${rs}`,
      "insert into items values (45, 'x') returning id",
    ])
    const { rows } = await pair.admin.query('select id from items where id >= 40')
    expect(rows).toEqual([])
  })

  test('a requiresNew readOnly block the primary serves (no replica usable) gets the self-deadlock watch', async () => {
    await db.close()
    db = createDatabase({
      alias: 'routing',
      connectionString: pair.primaryUrl,
      max: 3,
      replicas: ['postgres://postgres@127.0.0.1:1/postgres'],
    })
    const pidOf = async (): Promise<number> =>
      (await db.query<{ pid: number }>('select pg_backend_pid() as pid')).rows[0]?.pid as number
    let outerPid = 0
    let innerPid = 0
    const started = Date.now()
    const error = await rejection(
      db.atomic(async () => {
        outerPid = await pidOf()
        await db.query('lock table items in access exclusive mode')
        await db.atomic({ propagation: 'requiresNew', readOnly: true }, async () => {
          innerPid = await pidOf()
          await db.query('select count(*) from items')
        })
      }),
    )
    expect(error).toBeInstanceOf(SuspendedTransactionDeadlockError)
    expect(error).toMatchObject({ innerPid, outerPid, cause: expect.objectContaining({ code: '57014' }) })
    expect(innerPid).not.toBe(outerPid)
    // Found within the watchdog's period (1 s), not after a timeout.
    expect(Date.now() - started).toBeLessThan(5000)
  }, 30_000)

  test("db.close() at its deadline cancels a replica block's statement on the replica", async () => {
    const running = "select pid from pg_stat_activity where query like '%rf-cancel-marker%' and pid <> pg_backend_pid()"
    const block = rejection(db.atomic({ readOnly: true }, () => db.query('select pg_sleep(30) /* rf-cancel-marker */')))
    await waitUntil(async () => (await pair.standbyAdmin.query(running)).rowCount === 1, 'the sleep on the standby')
    await db.close({ timeoutMs: 100 })
    expect(await block).toBeInstanceOf(ConnectionLostError)
    // The cancel request went to the replica (with the replica session's key): the sleep ended at once.
    await waitUntil(async () => (await pair.standbyAdmin.query(running)).rowCount === 0, 'the sleep to end', 3_000)
  }, 30_000)

  test('db.replica inside a read-write block reads in the block: it sees the uncommitted row', async () => {
    const seen = await db.atomic(async () => {
      await db.query("insert into items values (3, 'three')")
      const { rows } = await db.replica.query('select id, pg_is_in_recovery() as standby from items order by id')
      await db.query('delete from items where id = 3')
      return rows
    })
    expect(seen).toEqual([
      { id: 1, standby: false },
      { id: 3, standby: false },
    ])
  })

  test('@Atomic({ readOnly: true }) runs on the replica; @Atomic() on the primary', async () => {
    class Reports {
      @Atomic({ readOnly: true, using: 'routing' })
      async count(): Promise<{ server: ServerIdentity; n: number }> {
        const server = await who((sql) => db.query(sql))
        const { rows } = await db.query<{ n: number }>('select count(*)::int as n from items')
        return { server, n: rows[0]?.n as number }
      }

      @Atomic({ using: 'routing' })
      async write(): Promise<ServerIdentity> {
        return who((sql) => db.query(sql))
      }
    }
    const reports = new Reports()
    expect(await reports.count()).toEqual({ server: replica, n: 1 })
    expect(await reports.write()).toEqual(primary)
  })

  test('without replicas everything, db.replica included, runs on the primary', async () => {
    const plain = createDatabase({ alias: 'no-replicas', connectionString: pair.primaryUrl, max: 2 })
    try {
      expect(await who((sql) => plain.replica.query(sql))).toEqual(primary)
      expect(await plain.atomic({ readOnly: true }, () => who((sql) => plain.query(sql)))).toEqual(primary)
      expect(plain.replica.lastCommitLsn()).toBeUndefined()
    } finally {
      await plain.close()
    }
  })

  test('a replica as a pg.Pool or as PoolConfig fields; a pool pg-atomic did not create is not ended', async () => {
    const url = new URL(pair.replicaUrl)
    const replicaPool = new pg.Pool({ connectionString: pair.replicaUrl, max: 2 })
    const byPool = createDatabase({ alias: 'by-pool', connectionString: pair.primaryUrl, replicas: [replicaPool] })
    const byConfig = createDatabase({
      alias: 'by-config',
      connectionString: pair.primaryUrl,
      replicas: [{ host: url.hostname, port: Number(url.port), user: 'postgres', database: url.pathname.slice(1) }],
    })
    try {
      expect(await who((sql) => byPool.replica.query(sql))).toEqual(replica)
      expect(await who((sql) => byConfig.replica.query(sql))).toEqual(replica)
    } finally {
      await byPool.close()
      await byConfig.close()
    }
    expect((await replicaPool.query<{ one: number }>('select 1 as one')).rows).toEqual([{ one: 1 }])
    await replicaPool.end()
  })
})

describe('read replicas: configuration is validated before anything connects', () => {
  const cases: Array<[string, DatabaseConfig, string, string]> = [
    [
      'not a list',
      { replicas: 'postgres://x' as unknown as string[] },
      'replicas',
      'Invalid option "replicas" for createDatabase(): it must be a list of replicas, each a connection string, ' +
        'an object of pg PoolConfig fields, or a pg.Pool (an object with connect() and query() methods).',
    ],
    [
      'a number',
      { replicas: ['postgres://ok', 42 as unknown as string] },
      'replicas[1]',
      'Invalid option "replicas[1]" for createDatabase(): each replica must be a connection string such as ' +
        'postgres://user@replica-host:5432/database, an object of pg PoolConfig fields, or a pg.Pool.',
    ],
    [
      'an empty string',
      { replicas: [''] },
      'replicas[0]',
      'Invalid option "replicas[0]" for createDatabase(): each replica must be a connection string such as ' +
        'postgres://user@replica-host:5432/database, an object of pg PoolConfig fields, or a pg.Pool.',
    ],
    [
      'a bad port',
      { replicas: [{ host: 'replica', port: 'x' as unknown as number }] },
      'replicas[0].port',
      'Invalid option "port" for createDatabase() replicas[0]: it must be a whole number from 1 to 65535.',
    ],
    [
      'a refused pool field',
      { replicas: [{ host: 'replica', statement_timeout: 5 } as never] },
      'replicas[0].statement_timeout',
      'Option "statement_timeout" is not accepted by createDatabase() replicas[0]. Use the statementTimeout ' +
        'option instead: pg sends statement_timeout as a startup parameter, which PgBouncer rejects; pg-atomic ' +
        'applies it with SET LOCAL in each transaction.',
    ],
    [
      'a negative maxLagMs',
      { replicas: ['postgres://r'], replicaOptions: { maxLagMs: -1 } },
      'replicaOptions.maxLagMs',
      'Invalid option "replicaOptions.maxLagMs" for createDatabase(): it must be a whole number of milliseconds ' +
        'of at least 0.',
    ],
    [
      'an unknown whenUnavailable',
      { replicas: ['postgres://r'], replicaOptions: { whenUnavailable: 'wait' as 'fail' } },
      'replicaOptions.whenUnavailable',
      "Invalid option \"replicaOptions.whenUnavailable\" for createDatabase(): it must be 'primary' or 'fail'.",
    ],
    [
      'an unknown replica option',
      { replicas: ['postgres://r'], replicaOptions: { maxLag: 5 } as never },
      'replicaOptions.maxLag',
      'Unknown option "replicaOptions.maxLag" for createDatabase(): "replicaOptions" must be an object ' +
        '{ maxLagMs, checkIntervalMs, waitForReplayMs, whenUnavailable }.',
    ],
  ]
  test.each(cases)('%s', (_label, config, field, message) => {
    const error = thrown(() => createDatabase({ alias: 'invalid', connectionString: 'postgres://nowhere', ...config }))
    expect(error).toBeInstanceOf(InvalidOptionError)
    expect(error).toMatchObject({ name: 'InvalidOptionError', field, message })
  })
})
