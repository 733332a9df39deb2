/**
 * Hand-written node-postgres: BEGIN, COMMIT, SAVEPOINT, RELEASE and ROLLBACK TO sent by hand on a
 * checked-out client, as the node-postgres docs show it. The baseline every ratio is taken against.
 *
 * @module
 */
import pg from 'pg'
import { NESTED_INSERT, SELECT_1, TPCB, TRANSFER } from '../workloads/sql'
import { retryLoop } from './retry'
import { PlannedFailure } from './types'
import type { ConnectOptions, Contestant, TpcbParams, TransferParams } from './types'

export function createPg(options: ConnectOptions): Contestant {
  const pool = new pg.Pool({ connectionString: options.url, max: options.poolSize, idleTimeoutMillis: 0 })
  pool.on('error', () => undefined)

  /** BEGIN … COMMIT on one client; ROLLBACK on failure; a client that fails to roll back is destroyed. */
  async function transaction<T>(begin: string, body: (client: pg.PoolClient) => Promise<T>): Promise<T> {
    const client = await pool.connect()
    try {
      await client.query(begin)
      const result = await body(client)
      await client.query('COMMIT')
      client.release()
      return result
    } catch (error) {
      try {
        await client.query('ROLLBACK')
        client.release()
      } catch (rollbackError) {
        client.release(rollbackError instanceof Error ? rollbackError : true)
      }
      throw error
    }
  }

  /** SAVEPOINT … RELEASE; ROLLBACK TO on failure, then the error goes on. */
  async function savepoint(client: pg.PoolClient, name: string, body: () => Promise<void>): Promise<void> {
    await client.query(`SAVEPOINT ${name}`)
    try {
      await body()
      await client.query(`RELEASE SAVEPOINT ${name}`)
    } catch (error) {
      await client.query(`ROLLBACK TO SAVEPOINT ${name}`)
      throw error
    }
  }

  return {
    id: 'pg',
    select1: () => transaction('BEGIN', async (c) => (await c.query<{ one: number }>(SELECT_1)).rows[0]?.one ?? 0),
    tpcb: (p: TpcbParams) =>
      transaction('BEGIN', async (c) => {
        await c.query(TPCB.updateAccount, [p.delta, p.aid])
        await c.query(TPCB.selectBalance, [p.aid])
        await c.query(TPCB.updateTeller, [p.delta, p.tid])
        await c.query(TPCB.updateBranch, [p.delta, p.bid])
        await c.query(TPCB.insertHistory, [p.tid, p.bid, p.aid, p.delta])
      }),
    nested: () =>
      transaction('BEGIN', async (c) => {
        await c.query(NESTED_INSERT, ['pg', 0])
        for (let part = 1; part <= 3; part++) {
          try {
            await savepoint(c, `s${part}`, async () => {
              await c.query(NESTED_INSERT, ['pg', part])
              if (part === 3) throw new PlannedFailure()
            })
          } catch (error) {
            if (!(error instanceof PlannedFailure)) throw error
          }
        }
      }),
    transfer: (p: TransferParams, onAttempt: () => void) =>
      retryLoop(() =>
        transaction('BEGIN ISOLATION LEVEL SERIALIZABLE', async (c) => {
          onAttempt()
          const { rows } = await c.query<{ balance: number }>(TRANSFER.selectBalance, [p.from])
          const balance = (rows[0]?.balance ?? 0) - p.amount
          if (p.from < p.to) {
            await c.query(TRANSFER.setBalance, [balance, p.from])
            await c.query(TRANSFER.addBalance, [p.amount, p.to])
          } else {
            await c.query(TRANSFER.addBalance, [p.amount, p.to])
            await c.query(TRANSFER.setBalance, [balance, p.from])
          }
        }),
      ),
    close: () => pool.end(),
  }
}
