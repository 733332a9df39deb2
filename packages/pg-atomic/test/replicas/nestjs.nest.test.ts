/**
 * Read replicas with pg-atomic/nestjs (issue 12 §2): a real NestJS 12 application on the Express
 * and on the Fastify platform, real HTTP, a real standby with delayed replay. `@NonAtomic()`
 * handlers are request contexts too: the one that committed reads its row on the primary, another
 * request reads the replica; an `@AtomicRoute({ readOnly: true })` request runs on the replica.
 */
import 'reflect-metadata'
import { Controller, Get, Module, Param, Post } from '@nestjs/common'
import type { INestApplication } from '@nestjs/common'
import { NestFactory } from '@nestjs/core'
import { ExpressAdapter } from '@nestjs/platform-express'
import { FastifyAdapter } from '@nestjs/platform-fastify'
import { createDatabase } from 'pg-atomic'
import type { Database } from 'pg-atomic'
import { AtomicRoute, NonAtomic, PgAtomicModule } from 'pg-atomic/nestjs'
import { ITEMS_READ, describeWithReplica, setupItemsPair } from '../support/replica'
import type { ItemsRead, ReplicaPair } from '../support/replica'

const APPLY_DELAY_MS = 2_000
let pair: ReplicaPair
let db: Database

@Controller()
class ItemsController {
  @Post('items/:id')
  @NonAtomic()
  async create(@Param('id') id: string): Promise<ItemsRead> {
    await db.atomic(() => db.query('insert into items values ($1)', [Number(id)]))
    return (await db.replica.query<ItemsRead>(ITEMS_READ)).rows[0] as ItemsRead
  }

  @Get('items')
  @NonAtomic()
  async list(): Promise<ItemsRead> {
    return (await db.replica.query<ItemsRead>(ITEMS_READ)).rows[0] as ItemsRead
  }

  @Get('report')
  @AtomicRoute({ readOnly: true })
  async report(): Promise<ItemsRead> {
    return (await db.query<ItemsRead>(ITEMS_READ)).rows[0] as ItemsRead
  }
}

const platforms = [
  ['Express', () => new ExpressAdapter()],
  ['Fastify', () => new FastifyAdapter()],
] as const

describeWithReplica('read replicas: NestJS request contexts', () => {
  beforeAll(async () => {
    pair = await setupItemsPair('nestjs')
  }, 120_000)
  afterAll(async () => {
    await pair?.close()
  }, 60_000)

  describe.each(platforms)('on %s', (_platform, adapter) => {
    let app: INestApplication | undefined
    let url: string

    beforeEach(async () => {
      await pair.setApplyDelay(0)
      await pair.admin.query('truncate items')
      await pair.waitForReplay()
      db = createDatabase({
        pool: pair.primaryPool,
        replicas: [pair.replicaUrl],
        replicaOptions: { maxLagMs: 600_000, checkIntervalMs: 0 },
      })
      @Module({ imports: [PgAtomicModule.forRoot({ databases: [db] })], controllers: [ItemsController] })
      class AppModule {}
      app = await NestFactory.create(AppModule, adapter(), { logger: false, abortOnError: false })
      await app.listen(0, '127.0.0.1')
      url = (await app.getUrl()).replace('[::1]', '127.0.0.1')
    })
    afterEach(async () => {
      await app?.close()
      app = undefined
      await db.close()
    })

    async function call(method: 'GET' | 'POST', path: string): Promise<{ status: number; body: ItemsRead }> {
      const response = await fetch(`${url}${path}`, { method })
      return { status: response.status, body: (await response.json()) as ItemsRead }
    }

    test('a @NonAtomic() request that committed reads its row on the primary; others read the replica', async () => {
      await pair.setApplyDelay(APPLY_DELAY_MS)
      expect(await call('POST', '/items/1')).toEqual({ status: 201, body: { ids: [1], standby: false } })
      expect(await call('GET', '/items')).toEqual({ status: 200, body: { ids: [], standby: true } })
      expect(await call('GET', '/report')).toEqual({ status: 200, body: { ids: [], standby: true } })
    }, 30_000)
  })
})
