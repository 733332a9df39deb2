/**
 * Replica health (issue 12 §2): a standby that is stopped, or whose replay lags more than
 * `maxLagMs`, is skipped with an event on the replica channel and the primary serves the read —
 * or, with `whenUnavailable: 'fail'`, the read fails with `ReplicaUnavailableError` before
 * anything is sent.
 */
import diagnostics_channel from 'node:diagnostics_channel'
import { AsyncResource } from 'node:async_hooks'
import { createServer } from 'node:net'
import type { AddressInfo, Socket } from 'node:net'
import { REPLICA_CHANNEL, ReplicaUnavailableError, createDatabase, withReadYourWrites } from 'pg-atomic'
import type { Database, DatabaseConfig, ReplicaEvent } from 'pg-atomic'
import { rejection } from '../support/errors'
import { WHO, describeWithReplica, setupReplicaPair } from '../support/replica'
import type { ReplicaPair, ServerIdentity } from '../support/replica'
import { sleep, waitUntil } from '../support/wait'

let pair: ReplicaPair
const events: ReplicaEvent[] = []
const onEvent = (message: unknown): void => {
  events.push(message as ReplicaEvent)
}
const databases: Database[] = []
/** What the databases logged: a replica's idle connections fail when it stops. */
const logged: string[] = []

function database(options: DatabaseConfig['replicaOptions']): Database {
  const db = createDatabase({
    alias: `health-${databases.length}`,
    pool: pair.primaryPool,
    replicas: [pair.replicaUrl],
    replicaOptions: options,
    logger: { error: (message: string) => void logged.push(message) },
  })
  databases.push(db)
  return db
}

const readOnlyWho = (db: Database): Promise<ServerIdentity> =>
  db.atomic({ readOnly: true }, async () => (await db.query<ServerIdentity>(WHO)).rows[0] as ServerIdentity)

/** Runs `fn` in a read-your-writes context of its own (nothing committed in it). */
const fresh = <T>(fn: () => Promise<T>): Promise<T> =>
  withReadYourWrites(() => new AsyncResource('pg-atomic-test-context')).runInAsyncScope(fn)

describeWithReplica('read replicas: health', () => {
  let label: string
  let primary: ServerIdentity
  let replica: ServerIdentity

  beforeAll(async () => {
    pair = await setupReplicaPair('health')
    await pair.admin.query('create table items (id int primary key)')
    await pair.waitForReplay()
    const url = new URL(pair.replicaUrl)
    label = `${url.hostname}:${url.port}${url.pathname}`
    primary = { port: pair.primaryPort, standby: false }
    replica = { port: pair.replicaPort, standby: true }
    diagnostics_channel.subscribe(REPLICA_CHANNEL, onEvent)
  }, 120_000)
  afterAll(async () => {
    diagnostics_channel.unsubscribe(REPLICA_CHANNEL, onEvent)
    await pair?.close()
  }, 60_000)
  beforeEach(() => {
    events.length = 0
    logged.length = 0
    pair.reset()
  })
  afterEach(async () => {
    for (const db of databases.splice(0)) await db.close()
  })

  test('a replica that refuses connections among several is skipped with an event; the next one serves', async () => {
    // Port 1 on loopback: nothing listens, the connection is refused at once.
    const db = createDatabase({
      alias: 'health-several',
      pool: pair.primaryPool,
      replicas: ['postgres://postgres@127.0.0.1:1/nowhere', pair.replicaUrl],
      replicaOptions: { checkIntervalMs: 60_000 },
    })
    databases.push(db)
    const seen = [await who(db), await who(db), await readOnlyWho(db)]
    expect(seen).toEqual([replica, replica, replica])
    // Round robin: the 1st read tries the dead one first (refused), the 2nd starts at the live one, the 3rd
    // starts at the dead one again and skips it without trying (it failed less than checkIntervalMs ago).
    expect(events.map((e) => [e.kind, e.reason, e.replica, (e.error as { code?: string } | undefined)?.code])).toEqual([
      ['skipped', 'down', '127.0.0.1:1/nowhere', 'ECONNREFUSED'],
      ['skipped', 'down', '127.0.0.1:1/nowhere', undefined],
    ])
    expect(pair.statements).toEqual([])
  })

  describe('a replica that is down', () => {
    afterEach(async () => {
      await pair.startStandby()
    }, 60_000)

    test('is skipped with an event, and the primary serves; it is not tried again within checkIntervalMs', async () => {
      const db = database({ checkIntervalMs: 60_000 })
      expect(await readOnlyWho(db)).toEqual(replica)
      expect(events).toEqual([])
      await pair.stopStandby()

      // The replica was checked less than checkIntervalMs ago: the read connects, and finds it down.
      expect(await readOnlyWho(db)).toEqual(primary)
      expect(events).toEqual([
        {
          kind: 'skipped',
          reason: 'down',
          database: 'health-0',
          replica: label,
          lagMs: 0,
          error: expect.objectContaining({ code: 'ECONNREFUSED' }),
        },
        {
          kind: 'fallback',
          reason: 'no-replica',
          database: 'health-0',
          replica: undefined,
          lagMs: undefined,
          error: undefined,
        },
      ])
      expect(pair.statements).toEqual(['BEGIN READ ONLY', WHO, 'COMMIT'])
      // The idle connection of the first read was terminated by the shutdown (57P01), and said so.
      expect(logged).toEqual([
        `An idle connection to replica ${label} of database 'health-0' failed and was removed from its pool; ` +
          'the error is attached.',
      ])

      // Within checkIntervalMs it is skipped without trying it (no error to report this time).
      events.length = 0
      expect(await who(db)).toEqual(primary)
      expect(events.map((e) => [e.kind, e.reason, e.error])).toEqual([
        ['skipped', 'down', undefined],
        ['fallback', 'no-replica', undefined],
      ])
    }, 60_000)

    test('is used again once it is back and checkIntervalMs has passed', async () => {
      const db = database({ checkIntervalMs: 200 })
      await pair.stopStandby()
      expect(await who(db)).toEqual(primary)
      await pair.startStandby()
      await sleep(250)
      events.length = 0
      expect(await who(db)).toEqual(replica)
      expect(events).toEqual([])
    }, 60_000)

    test("with whenUnavailable: 'fail' the read fails with ReplicaUnavailableError; nothing is sent", async () => {
      const db = database({ whenUnavailable: 'fail' })
      await pair.stopStandby()
      const error = await rejection(readOnlyWho(db))
      expect(error).toBeInstanceOf(ReplicaUnavailableError)
      expect(error).toMatchObject({
        name: 'ReplicaUnavailableError',
        database: 'health-0',
        skipped: { [label]: 'down' },
        cause: expect.objectContaining({ code: 'ECONNREFUSED' }),
        message:
          `No replica of database 'health-0' can serve this read (${label}: down), and ` +
          "replicaOptions.whenUnavailable is 'fail'. Nothing was sent. Bring a replica back, raise maxLagMs, " +
          "or let the primary serve such reads with whenUnavailable: 'primary'.",
      })
      expect(pair.statements).toEqual([])
      // db.replica reads fail the same way; a read-write block still runs on the primary.
      expect(await rejection(db.replica.query('select 1'))).toBeInstanceOf(ReplicaUnavailableError)
      expect(await db.atomic(async () => (await db.query<ServerIdentity>(WHO)).rows[0])).toEqual(primary)
      expect(events.map((e) => [e.kind, e.reason])).toEqual([
        ['skipped', 'down'],
        ['skipped', 'down'],
      ])
    }, 60_000)
  })

  test('a standby whose replication link is broken (lag would read 0) is skipped as not-streaming', async () => {
    const { rows } = await pair.standbyAdmin.query<{ c: string }>("select current_setting('primary_conninfo') as c")
    const conninfo = rows[0]?.c as string
    const db = database({ checkIntervalMs: 0 })
    expect(await who(db)).toEqual(replica)
    try {
      // Nothing listens on port 1: the WAL receiver stops and cannot reconnect.
      await pair.standbyAdmin.query("alter system set primary_conninfo = 'host=127.0.0.1 port=1 user=postgres'")
      await pair.standbyAdmin.query('select pg_reload_conf()')
      await waitUntil(async () => {
        const r = await pair.standbyAdmin.query("select from pg_stat_wal_receiver where status = 'streaming'")
        return r.rowCount === 0
      }, 'the standby to stop streaming')
      await pair.admin.query('insert into items values (3)')
      events.length = 0
      expect(await fresh(() => who(db))).toEqual(primary)
      expect(await fresh(() => readOnlyWho(db))).toEqual(primary)
      expect(events.map((e) => [e.kind, e.reason, e.replica, e.lagMs])).toEqual([
        ['skipped', 'not-streaming', label, 0],
        ['fallback', 'no-replica', undefined, undefined],
        ['skipped', 'not-streaming', label, 0],
        ['fallback', 'no-replica', undefined, undefined],
      ])
    } finally {
      await pair.standbyAdmin.query(`alter system set primary_conninfo = ${pgLiteral(conninfo)}`)
      await pair.standbyAdmin.query('select pg_reload_conf()')
      await waitUntil(async () => {
        const r = await pair.standbyAdmin.query("select from pg_stat_wal_receiver where status = 'streaming'")
        return r.rowCount === 1
      }, 'the standby to stream again')
      await pair.admin.query('delete from items where id = 3')
      await pair.waitForReplay()
    }
    events.length = 0
    expect(await fresh(() => who(db))).toEqual(replica)
    expect(events).toEqual([])
  }, 60_000)

  test('a down replica is tried again by one read at a time: the others skip it while that one waits', async () => {
    // A host that accepts connections and never answers (as one that drops packets): each connect
    // waits connectionTimeoutMillis.
    const sockets: Socket[] = []
    const server = createServer((socket) => void sockets.push(socket))
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
    const port = (server.address() as AddressInfo).port
    const db = createDatabase({
      alias: 'health-silent',
      pool: pair.primaryPool,
      replicas: [{ host: '127.0.0.1', port, user: 'postgres', database: 'postgres', connectionTimeoutMillis: 1_000 }],
      replicaOptions: { checkIntervalMs: 300 },
    })
    databases.push(db)
    try {
      expect(await who(db)).toEqual(primary)
      expect(sockets.length).toBe(1)
      await sleep(350)
      events.length = 0
      // The backoff has passed: five reads at once, one of which tries the replica again.
      const timed = async (): Promise<number> => {
        const start = Date.now()
        expect(await who(db)).toEqual(primary)
        return Date.now() - start
      }
      const took = await Promise.all([timed(), timed(), timed(), timed(), timed()])
      expect(sockets.length).toBe(2)
      expect(took.filter((ms) => ms >= 900)).toHaveLength(1)
      expect(took.filter((ms) => ms < 500)).toHaveLength(4)
      const skips = events.filter((e) => e.kind === 'skipped')
      expect(skips.map((e) => [e.reason, e.error === undefined])).toEqual([
        ['down', true],
        ['down', true],
        ['down', true],
        ['down', true],
        ['down', false],
      ])
    } finally {
      for (const socket of sockets) socket.destroy()
      await new Promise<void>((resolve) => server.close(() => resolve()))
    }
  }, 30_000)

  describe('a replica that lags', () => {
    afterEach(async () => {
      await pair.setApplyDelay(0)
      await pair.waitForReplay()
    }, 60_000)

    test('more than maxLagMs is skipped with an event and its lag; within the bound it serves', async () => {
      const strict = database({ maxLagMs: 500, checkIntervalMs: 0 })
      const lenient = database({ maxLagMs: 600_000, checkIntervalMs: 0 })
      await pair.setApplyDelay(5_000)
      // WAL the standby receives but holds back: it now lags behind the primary.
      await pair.admin.query('insert into items values (1)')
      await sleep(1_000)

      expect(await fresh(() => readOnlyWho(strict))).toEqual(primary)
      expect(events).toHaveLength(2)
      expect(events[0]).toMatchObject({ kind: 'skipped', reason: 'lagging', database: 'health-0', replica: label })
      expect(events[0]?.lagMs).toBeGreaterThan(500)
      expect(events[1]).toMatchObject({ kind: 'fallback', reason: 'no-replica' })

      // The same replica, with a bound it is within, serves the read: the older state (no row yet).
      events.length = 0
      const seen = await fresh(() =>
        lenient.atomic({ readOnly: true }, async () => ({
          ids: (await lenient.query<{ id: number }>('select id from items')).rows,
          standby: (await lenient.query<{ s: boolean }>('select pg_is_in_recovery() as s')).rows[0]?.s,
        })),
      )
      expect(seen).toEqual({ ids: [], standby: true })
      expect(events).toEqual([])
    }, 60_000)

    test("more than maxLagMs with whenUnavailable: 'fail': ReplicaUnavailableError naming the lag", async () => {
      const db = database({ maxLagMs: 500, checkIntervalMs: 0, whenUnavailable: 'fail' })
      await pair.setApplyDelay(5_000)
      await pair.admin.query('insert into items values (2)')
      await sleep(1_000)
      const error = await rejection(fresh(() => db.replica.query('select 1')))
      expect(error).toMatchObject({ name: 'ReplicaUnavailableError', skipped: { [label]: 'lagging' } })
      expect((error as Error).cause).toBeUndefined()
    }, 60_000)
  })
})

function pgLiteral(text: string): string {
  return `'${text.replace(/'/g, "''")}'`
}

async function who(db: Database): Promise<ServerIdentity> {
  return (await db.replica.query<ServerIdentity>(WHO)).rows[0] as ServerIdentity
}
