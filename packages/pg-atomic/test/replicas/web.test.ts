/**
 * Read replicas with the per-request integrations (issue 12 §2): real Express 5 and Fastify 5 apps
 * over real HTTP, a real standby with delayed replay. Each request is a read-your-writes context of its own:
 * a request that committed reads its row (on the primary), while another request reads the
 * replica's older state; a request whose whole transaction is readOnly runs on the replica.
 */
import express from 'express'
import type { Express } from 'express'
import Fastify from 'fastify'
import type { FastifyInstance } from 'fastify'
import { createDatabase } from 'pg-atomic'
import type { Database } from 'pg-atomic'
import { atomicRequests, atomicRoute, nonAtomic } from 'pg-atomic/express'
import { atomicRequests as atomicRequestsPlugin } from 'pg-atomic/fastify'
import { ITEMS_READ, describeWithReplica, setupItemsPair } from '../support/replica'
import type { ItemsRead, ReplicaPair } from '../support/replica'
import { serve } from '../web/server'
import type { Served } from '../web/server'

const APPLY_DELAY_MS = 2_000
let pair: ReplicaPair
let db: Database
let served: Served | undefined

function app(): Express {
  const a = express()
  a.use(atomicRequests())
  // Autocommit routes that manage their own blocks: the request is still a read-your-writes context.
  a.post('/items/:id', nonAtomic(), async (req, res) => {
    await db.atomic(() => db.query('insert into items values ($1)', [Number(req.params['id'])]))
    res.json((await db.replica.query<ItemsRead>(ITEMS_READ)).rows[0])
  })
  a.get('/items', nonAtomic(), async (_req, res) => {
    res.json((await db.replica.query<ItemsRead>(ITEMS_READ)).rows[0])
  })
  // The request's own transaction, read-only: it runs on the replica.
  a.get('/report', atomicRoute({ readOnly: true }), async (_req, res) => {
    res.json((await db.query<ItemsRead>(ITEMS_READ)).rows[0])
  })
  // A read-write request transaction: db.replica inside it reads in it, on the primary.
  a.post('/atomic/:id', async (req, res) => {
    await db.query('insert into items values ($1)', [Number(req.params['id'])])
    res.json((await db.replica.query<ItemsRead>(ITEMS_READ)).rows[0])
  })
  return a
}

/** The same routes on Fastify: `config: { atomic: false }` for the autocommit ones. */
async function fastifyApp(): Promise<{ app: FastifyInstance; url: string }> {
  const app = Fastify({ logger: false, forceCloseConnections: true })
  await app.register(atomicRequestsPlugin)
  app.post<{ Params: { id: string } }>('/items/:id', { config: { atomic: false } }, async (req) => {
    await db.atomic(() => db.query('insert into items values ($1)', [Number(req.params.id)]))
    return (await db.replica.query<ItemsRead>(ITEMS_READ)).rows[0]
  })
  app.get('/items', { config: { atomic: false } }, async () => (await db.replica.query<ItemsRead>(ITEMS_READ)).rows[0])
  app.get(
    '/report',
    { config: { atomic: { readOnly: true } } },
    async () => (await db.query<ItemsRead>(ITEMS_READ)).rows[0],
  )
  const url = await app.listen({ port: 0, host: '127.0.0.1' })
  return { app, url }
}

let baseUrl: string | undefined

async function call(method: 'GET' | 'POST', path: string): Promise<{ status: number; body: ItemsRead }> {
  const response = await fetch(`${baseUrl ?? (served as Served).url}${path}`, { method })
  return { status: response.status, body: (await response.json()) as ItemsRead }
}

describeWithReplica('read replicas: per-request read your writes (Express, real HTTP)', () => {
  beforeAll(async () => {
    pair = await setupItemsPair('web')
  }, 120_000)
  afterAll(async () => {
    await pair?.close()
  }, 60_000)
  beforeEach(async () => {
    await pair.setApplyDelay(0)
    await pair.admin.query('truncate items')
    await pair.waitForReplay()
    db = createDatabase({
      pool: pair.primaryPool,
      replicas: [pair.replicaUrl],
      replicaOptions: { maxLagMs: 600_000, checkIntervalMs: 0 },
    })
    served = await serve(app())
  })
  afterEach(async () => {
    await served?.close()
    served = undefined
    await db.close()
  })

  test('a request that committed reads its row on the primary; other requests read the older replica', async () => {
    expect(await call('GET', '/items')).toEqual({ status: 200, body: { ids: [], standby: true } })
    await pair.setApplyDelay(APPLY_DELAY_MS)

    expect(await call('POST', '/items/1')).toEqual({ status: 200, body: { ids: [1], standby: false } })
    // Another request committed nothing: the replica, which has not replayed the insert yet.
    expect(await call('GET', '/items')).toEqual({ status: 200, body: { ids: [], standby: true } })
    expect(await call('GET', '/report')).toEqual({ status: 200, body: { ids: [], standby: true } })

    // Once replayed, every request reads the row on the replica.
    await pair.waitForReplay(APPLY_DELAY_MS * 5)
    expect(await call('GET', '/items')).toEqual({ status: 200, body: { ids: [1], standby: true } })
    expect(await call('GET', '/report')).toEqual({ status: 200, body: { ids: [1], standby: true } })
  }, 30_000)

  test('two requests at once: only the one that wrote is sent to the primary', async () => {
    await pair.setApplyDelay(APPLY_DELAY_MS)
    const [writer, reader] = await Promise.all([call('POST', '/items/2'), call('GET', '/items')])
    expect(writer).toEqual({ status: 200, body: { ids: [2], standby: false } })
    expect(reader.body.standby).toBe(true)
    expect(reader.body.ids).toEqual([])
  }, 30_000)

  test('in a read-write request transaction, db.replica reads in the transaction on the primary', async () => {
    await pair.setApplyDelay(APPLY_DELAY_MS)
    expect(await call('POST', '/atomic/3')).toEqual({ status: 200, body: { ids: [3], standby: false } })
    expect(await call('GET', '/items')).toEqual({ status: 200, body: { ids: [], standby: true } })
  }, 30_000)

  test('Fastify: a request that committed reads its row on the primary; other requests read the replica', async () => {
    await served?.close()
    served = undefined
    const { app, url } = await fastifyApp()
    baseUrl = url
    try {
      await pair.setApplyDelay(APPLY_DELAY_MS)
      expect(await call('POST', '/items/4')).toEqual({ status: 200, body: { ids: [4], standby: false } })
      expect(await call('GET', '/items')).toEqual({ status: 200, body: { ids: [], standby: true } })
      expect(await call('GET', '/report')).toEqual({ status: 200, body: { ids: [], standby: true } })
    } finally {
      baseUrl = undefined
      await app.close()
    }
  }, 30_000)
})
