/**
 * pg-atomic as its README shows it: `atomic()` blocks around `db.query`, nested blocks as
 * savepoints, `isolationLevel` and `retry` as options of the outermost block.
 *
 * One pg-atomic contestant exists at a time: it registers the default database.
 *
 * @module
 */
import { atomic, createDatabase } from 'pg-atomic'
import { NESTED_INSERT, SELECT_1, TPCB, TRANSFER } from '../workloads/sql'
import { MAX_ATTEMPTS, PlannedFailure } from './types'
import type { ConnectOptions, Contestant, TpcbParams, TransferParams } from './types'

export function createPgAtomic(options: ConnectOptions): Contestant {
  const db = createDatabase({ connectionString: options.url, max: options.poolSize, idleTimeoutMillis: 0 })

  return {
    id: 'pg-atomic',
    select1: () => atomic(async () => (await db.query<{ one: number }>(SELECT_1)).rows[0]?.one ?? 0),
    tpcb: (p: TpcbParams) =>
      atomic(async () => {
        await db.query(TPCB.updateAccount, [p.delta, p.aid])
        await db.query(TPCB.selectBalance, [p.aid])
        await db.query(TPCB.updateTeller, [p.delta, p.tid])
        await db.query(TPCB.updateBranch, [p.delta, p.bid])
        await db.query(TPCB.insertHistory, [p.tid, p.bid, p.aid, p.delta])
      }),
    nested: () =>
      atomic(async () => {
        await db.query(NESTED_INSERT, ['pg-atomic', 0])
        for (let part = 1; part <= 3; part++) {
          try {
            await atomic(async () => {
              await db.query(NESTED_INSERT, ['pg-atomic', part])
              if (part === 3) throw new PlannedFailure()
            })
          } catch (error) {
            if (!(error instanceof PlannedFailure)) throw error
          }
        }
      }),
    transfer: (p: TransferParams, onAttempt: () => void) =>
      atomic({ isolationLevel: 'serializable', retry: { maxAttempts: MAX_ATTEMPTS } }, async () => {
        onAttempt()
        const { rows } = await db.query<{ balance: number }>(TRANSFER.selectBalance, [p.from])
        const balance = (rows[0]?.balance ?? 0) - p.amount
        if (p.from < p.to) {
          await db.query(TRANSFER.setBalance, [balance, p.from])
          await db.query(TRANSFER.addBalance, [p.amount, p.to])
        } else {
          await db.query(TRANSFER.addBalance, [p.amount, p.to])
          await db.query(TRANSFER.setBalance, [balance, p.from])
        }
      }),
    close: () => db.close(),
  }
}
