/**
 * pg-promise 12: `db.tx()` for a transaction, `t.tx()` inside it for a savepoint (pg-promise names
 * them `level_1`, … and releases or rolls back to them itself), `txMode.TransactionMode` for the
 * isolation level. Values are formatted into the query text on the client, pg-promise's documented
 * default, so its statements reach the server as simple queries with literals. No retry: a plain
 * loop (retry.ts). pg-promise depends on its own, pinned node-postgres.
 *
 * @module
 */
import pgPromise from 'pg-promise'
import { NESTED_INSERT, SELECT_1, TPCB, TRANSFER } from '../workloads/sql'
import { retryLoop } from './retry'
import { PlannedFailure } from './types'
import type { ConnectOptions, Contestant, TpcbParams, TransferParams } from './types'

export function createPgPromise(options: ConnectOptions): Contestant {
  const pgp = pgPromise({ noWarnings: true })
  const db = pgp({ connectionString: options.url, max: options.poolSize, idleTimeoutMillis: 0 })
  const serializable = new pgp.txMode.TransactionMode({ tiLevel: pgp.txMode.isolationLevel.serializable })

  return {
    id: 'pg-promise',
    select1: () => db.tx(async (t) => (await t.one<{ one: number }>(SELECT_1)).one),
    tpcb: (p: TpcbParams) =>
      db.tx(async (t) => {
        await t.none(TPCB.updateAccount, [p.delta, p.aid])
        await t.one(TPCB.selectBalance, [p.aid])
        await t.none(TPCB.updateTeller, [p.delta, p.tid])
        await t.none(TPCB.updateBranch, [p.delta, p.bid])
        await t.none(TPCB.insertHistory, [p.tid, p.bid, p.aid, p.delta])
      }),
    nested: () =>
      db.tx(async (t) => {
        await t.none(NESTED_INSERT, ['pg-promise', 0])
        for (let part = 1; part <= 3; part++) {
          try {
            await t.tx(async (t2) => {
              await t2.none(NESTED_INSERT, ['pg-promise', part])
              if (part === 3) throw new PlannedFailure()
            })
          } catch (error) {
            if (!(error instanceof PlannedFailure)) throw error
          }
        }
      }),
    transfer: (p: TransferParams, onAttempt: () => void) =>
      retryLoop(() =>
        db.tx({ mode: serializable }, async (t) => {
          onAttempt()
          const { balance } = await t.one<{ balance: number }>(TRANSFER.selectBalance, [p.from])
          if (p.from < p.to) {
            await t.none(TRANSFER.setBalance, [balance - p.amount, p.from])
            await t.none(TRANSFER.addBalance, [p.amount, p.to])
          } else {
            await t.none(TRANSFER.addBalance, [p.amount, p.to])
            await t.none(TRANSFER.setBalance, [balance - p.amount, p.from])
          }
        }),
      ),
    close: () => db.$pool.end(),
  }
}
