/**
 * Read your writes by WAL position (issue 12 §2), on a real standby whose replay is deliberately
 * delayed (`recovery_min_apply_delay`): after a context commits, its reads go to the primary (or
 * wait for replay) and see the row, while another context still reads the replica's older state;
 * once the standby has replayed the commit, the context reads on the replica again.
 */
import { AsyncResource } from 'node:async_hooks'
import diagnostics_channel from 'node:diagnostics_channel'
import { Kysely, PostgresDialect } from 'kysely'
import { REPLICA_CHANNEL, createDatabase, withReadYourWrites } from 'pg-atomic'
import type { Database, ReplicaEvent } from 'pg-atomic'
import { ITEMS_READ, WHO, describeWithReplica, setupItemsPair } from '../support/replica'
import type { ItemsRead, ReplicaPair, ServerIdentity } from '../support/replica'

const APPLY_DELAY_MS = 2_000
let pair: ReplicaPair
let db: Database

const readReplica = async (): Promise<ItemsRead> => (await db.replica.query<ItemsRead>(ITEMS_READ)).rows[0] as ItemsRead
const readInReadOnlyBlock = (): Promise<ItemsRead> =>
  db.atomic({ readOnly: true }, async () => (await db.query<ItemsRead>(ITEMS_READ)).rows[0] as ItemsRead)

/**
 * A read-your-writes context of its own (not nested in the caller's), to run code in later:
 * `context().runInAsyncScope(fn)`. Two of them are what two requests are.
 */
const context = (): AsyncResource => withReadYourWrites(() => new AsyncResource('pg-atomic-test-context'))

describeWithReplica('read replicas: read your writes', () => {
  beforeAll(async () => {
    pair = await setupItemsPair('ryw')
  }, 120_000)
  afterAll(async () => {
    await pair?.close()
  }, 60_000)
  beforeEach(async () => {
    await pair.setApplyDelay(0)
    await pair.admin.query('truncate items')
    await pair.waitForReplay()
    // Lag is not what these tests are about: a bound no delay here reaches.
    db = createDatabase({
      alias: 'ryw',
      pool: pair.primaryPool,
      replicas: [pair.replicaUrl],
      replicaOptions: { maxLagMs: 600_000, checkIntervalMs: 0 },
    })
    pair.reset()
  })
  afterEach(async () => {
    await db.close()
  })

  test('after its commit a context reads its row on the primary; another context reads the older replica', async () => {
    await pair.setApplyDelay(APPLY_DELAY_MS)
    const other = context()
    await context().runInAsyncScope(async () => {
      // Before writing, the context reads on the replica.
      expect(await readReplica()).toEqual({ ids: [], standby: true })
      await db.atomic(() => db.query('insert into items values (1)'))
      const lsn = db.replica.lastCommitLsn()
      expect(lsn).toMatch(/^[0-9A-F]+\/[0-9A-F]+$/)
      // The standby has received the commit but waits APPLY_DELAY_MS to replay it.
      const { rows } = await pair.standbyAdmin.query<{ replayed: boolean }>(
        'select pg_last_wal_replay_lsn() >= $1::pg_lsn as replayed',
        [lsn],
      )
      expect(rows).toEqual([{ replayed: false }])

      const [mine, mineInBlock, others, othersInBlock] = await Promise.all([
        readReplica(),
        readInReadOnlyBlock(),
        other.runInAsyncScope(readReplica),
        other.runInAsyncScope(readInReadOnlyBlock),
      ])
      expect(mine).toEqual({ ids: [1], standby: false })
      expect(mineInBlock).toEqual({ ids: [1], standby: false })
      // A context that committed nothing reads on the replica, which has not replayed the insert.
      expect(others).toEqual({ ids: [], standby: true })
      expect(othersInBlock).toEqual({ ids: [], standby: true })

      // Once the standby has replayed the commit, the context reads on the replica again.
      await pair.waitForReplay(APPLY_DELAY_MS * 5)
      expect(await readReplica()).toEqual({ ids: [1], standby: true })
      expect(await readInReadOnlyBlock()).toEqual({ ids: [1], standby: true })
    })
  }, 30_000)

  test('waitForReplayMs: the read waits for the replica to replay the commit, then reads there', async () => {
    await db.close()
    db = createDatabase({
      alias: 'ryw',
      pool: pair.primaryPool,
      replicas: [pair.replicaUrl],
      replicaOptions: { maxLagMs: 600_000, checkIntervalMs: 0, waitForReplayMs: APPLY_DELAY_MS * 5 },
    })
    await pair.setApplyDelay(APPLY_DELAY_MS)
    await withReadYourWrites(async () => {
      await db.atomic(() => db.query('insert into items values (2)'))
      const committed = Date.now()
      const read = await readReplica()
      const waited = Date.now() - committed
      expect(read).toEqual({ ids: [2], standby: true })
      // It waited for the replay delay (less whatever had already passed since the commit).
      expect(waited).toBeGreaterThanOrEqual(APPLY_DELAY_MS / 2)
    })
  }, 30_000)

  test('a waitForReplayMs shorter than the delay gives up and reads on the primary', async () => {
    await db.close()
    db = createDatabase({
      alias: 'ryw',
      pool: pair.primaryPool,
      replicas: [pair.replicaUrl],
      replicaOptions: { maxLagMs: 600_000, checkIntervalMs: 0, waitForReplayMs: 200 },
    })
    await pair.setApplyDelay(APPLY_DELAY_MS)
    await withReadYourWrites(async () => {
      await db.atomic(() => db.query('insert into items values (3)'))
      const start = Date.now()
      expect(await readReplica()).toEqual({ ids: [3], standby: false })
      expect(Date.now() - start).toBeGreaterThanOrEqual(200)
    })
  }, 30_000)

  test('an autocommit write outside blocks counts too: its WAL position is asked for right after it', async () => {
    await pair.setApplyDelay(APPLY_DELAY_MS)
    const other = context()
    await context().runInAsyncScope(async () => {
      await db.query('insert into items values (4)')
      expect(pair.statements).toEqual([
        'insert into items values (4)',
        'select case when pg_is_in_recovery() then null else pg_current_wal_insert_lsn()::text end as lsn',
      ])
      expect(await readReplica()).toEqual({ ids: [4], standby: false })
    })
    expect(await other.runInAsyncScope(readReplica)).toEqual({ ids: [], standby: true })
  }, 30_000)

  test('Kysely through db.pool outside blocks counts: its position is read before the client goes back', async () => {
    await pair.setApplyDelay(APPLY_DELAY_MS)
    const kysely = new Kysely<{ items: { id: number } }>({ dialect: new PostgresDialect({ pool: db.pool }) })
    const other = context()
    await context().runInAsyncScope(async () => {
      await kysely.insertInto('items').values({ id: 7 }).execute()
      // Released before execute() settled; the replica read waits for the position read on it.
      expect(await readReplica()).toEqual({ ids: [7], standby: false })
      expect(pair.statements.slice(0, 2)).toEqual([
        'insert into "items" ("id") values ($1)',
        'select case when pg_is_in_recovery() then null else pg_current_wal_insert_lsn()::text end as lsn',
      ])
    })
    expect(await other.runInAsyncScope(readReplica)).toEqual({ ids: [], standby: true })
  }, 30_000)

  test('a context nested in another sees the outer context commits, and its own count for the outer one', async () => {
    await pair.setApplyDelay(APPLY_DELAY_MS)
    await withReadYourWrites(async () => {
      await db.atomic(() => db.query('insert into items values (5)'))
      expect(await withReadYourWrites(readReplica)).toEqual({ ids: [5], standby: false })
    })
    await withReadYourWrites(async () => {
      await withReadYourWrites(() => db.atomic(() => db.query('insert into items values (6)')))
      expect(await readReplica()).toEqual({ ids: [5, 6], standby: false })
    })
  }, 30_000)

  test('outside any context the process is the context: a read after a commit of the process sees it', async () => {
    await pair.setApplyDelay(APPLY_DELAY_MS)
    const other = context()
    await db.atomic(() => db.query('insert into items values (7)'))
    expect(await readReplica()).toEqual({ ids: [7], standby: false })
    // A context of its own, which committed nothing, reads the replica's older state.
    expect(await other.runInAsyncScope(readReplica)).toEqual({ ids: [], standby: true })
  }, 30_000)

  test('a context opened after a commit of the process outside any context starts from it (middleware)', async () => {
    await pair.setApplyDelay(APPLY_DELAY_MS)
    // A hook or middleware that runs before the integration opens the request's context.
    await db.query('insert into items values (8)')
    const lsn = db.replica.lastCommitLsn()
    expect(lsn).toMatch(/^[0-9A-F]+\/[0-9A-F]+$/)
    await withReadYourWrites(async () => {
      expect(db.replica.lastCommitLsn()).toBe(lsn)
      expect(await readReplica()).toEqual({ ids: [8], standby: false })
      expect(await readInReadOnlyBlock()).toEqual({ ids: [8], standby: false })
    })
  }, 30_000)

  test('a commit whose WAL position cannot be read is committed, logged; its context reads the primary', async () => {
    const role = 'pga_ryw_no_lsn'
    await pair.admin.query(
      `do $$ begin if not exists (select from pg_roles where rolname = '${role}') ` +
        `then create role ${role} login; end if; end $$`,
    )
    await pair.admin.query(`grant all on items to ${role}`)
    // The statement after COMMIT fails with 42501 (insufficient privilege) once COMMIT has completed.
    await pair.admin.query('revoke execute on function pg_current_wal_insert_lsn() from public')
    const logged: unknown[][] = []
    const url = new URL(pair.primaryUrl)
    url.username = role
    const app = createDatabase({
      alias: 'ryw-no-lsn',
      connectionString: url.href,
      max: 2,
      replicas: [pair.replicaUrl],
      replicaOptions: { maxLagMs: 600_000, checkIntervalMs: 0 },
      logger: { error: (...args: unknown[]) => void logged.push(args) },
    })
    const message =
      "A transaction of database 'ryw-no-lsn' committed, but reading the primary's WAL position right after it " +
      "failed (SQLSTATE 42501): until a later commit's position is known, this context's replica reads go to the " +
      'primary.'
    try {
      await withReadYourWrites(async () => {
        await expect(app.atomic(() => app.query('insert into items values (20)'))).resolves.toMatchObject({
          rowCount: 1,
        })
        expect(logged).toEqual([[message]])
        expect(app.replica.lastCommitLsn()).toBe('FFFFFFFF/FFFFFFFF')
        expect((await app.replica.query<ItemsRead>(ITEMS_READ)).rows).toEqual([{ ids: [20], standby: false }])
        // A statement outside blocks: the same.
        await expect(app.query('insert into items values (21)')).resolves.toMatchObject({ rowCount: 1 })
        expect(logged).toEqual([[message], [message]])
        expect((await app.replica.query<ItemsRead>(ITEMS_READ)).rows).toEqual([{ ids: [20, 21], standby: false }])
      })
      const { rows } = await pair.admin.query<{ ids: number[] }>(
        'select array(select id from items order by id) as ids',
      )
      expect(rows).toEqual([{ ids: [20, 21] }])
    } finally {
      await pair.admin.query('grant execute on function pg_current_wal_insert_lsn() to public')
      await app.close()
    }
  }, 30_000)

  test('while a read waits for replay, a down replica is published once, not on every poll', async () => {
    await db.close()
    db = createDatabase({
      alias: 'ryw',
      pool: pair.primaryPool,
      replicas: ['postgres://postgres@127.0.0.1:1/nowhere', pair.replicaUrl],
      replicaOptions: { maxLagMs: 600_000, checkIntervalMs: 60_000, waitForReplayMs: APPLY_DELAY_MS * 5 },
    })
    await pair.setApplyDelay(APPLY_DELAY_MS)
    const events: ReplicaEvent[] = []
    const onEvent = (message: unknown): void => void events.push(message as ReplicaEvent)
    diagnostics_channel.subscribe(REPLICA_CHANNEL, onEvent)
    try {
      await withReadYourWrites(async () => {
        await db.atomic(() => db.query('insert into items values (30)'))
        // About APPLY_DELAY_MS of polls every 20 ms, each of which skips the dead replica.
        expect(await readReplica()).toEqual({ ids: [30], standby: true })
      })
    } finally {
      diagnostics_channel.unsubscribe(REPLICA_CHANNEL, onEvent)
    }
    expect(events.map((e) => [e.kind, e.reason, e.replica, (e.error as { code?: string } | undefined)?.code])).toEqual([
      ['skipped', 'down', '127.0.0.1:1/nowhere', 'ECONNREFUSED'],
    ])
  }, 30_000)

  test('a read-only block commits no WAL position: the context keeps reading on the replica', async () => {
    await withReadYourWrites(async () => {
      const server = await db.atomic({ readOnly: true }, async () => (await db.query<ServerIdentity>(WHO)).rows[0])
      expect(server).toEqual({ port: pair.replicaPort, standby: true })
      expect(db.replica.lastCommitLsn()).toBeUndefined()
    })
  })
})
