/**
 * Kysely 0.28 on node-postgres: `db.transaction().execute()` with statements built by its `sql`
 * tag (which produces the same texts as workloads/sql.ts). Kysely's `Transaction` has no nested
 * transactions; savepoints exist only on a controlled transaction (`db.startTransaction()`, then
 * `trx.savepoint(name)`, `releaseSavepoint`, `rollbackToSavepoint`, `commit`, `rollback`), so the
 * nested workload uses that, with the try/catch a user has to write around it. No retry: a plain
 * loop (retry.ts). Kysely 0.29 requires Node 22; 0.28 is the line that runs on Node 20.
 *
 * @module
 */
import { Kysely, PostgresDialect, sql } from 'kysely'
import type { ControlledTransaction, Transaction } from 'kysely'
import pg from 'pg'
import { retryLoop } from './retry'
import { PlannedFailure } from './types'
import type { ConnectOptions, Contestant, TpcbParams, TransferParams } from './types'

/** The head of TPC-B's insert (a fragment: the line would be too long). */
const HISTORY = sql.raw('insert into pgbench_history (tid, bid, aid, delta, mtime)')

/** The benchmark's tables are used through raw `sql` only. */
type Schema = Record<string, never>

export function createKysely(options: ConnectOptions): Contestant {
  const pool = new pg.Pool({ connectionString: options.url, max: options.poolSize, idleTimeoutMillis: 0 })
  pool.on('error', () => undefined)
  const db = new Kysely<Schema>({ dialect: new PostgresDialect({ pool }) })

  const insert = (trx: Transaction<Schema>, part: number) =>
    sql`insert into bench_nested (contestant, part) values (${'kysely'}, ${part})`.execute(trx)

  /** A savepoint around `body`: released on success, rolled back to (and the error rethrown) on failure. */
  async function savepoint(trx: ControlledTransaction<Schema>, name: string, body: () => Promise<void>): Promise<void> {
    const inner = await trx.savepoint(name).execute()
    try {
      await body()
      await inner.releaseSavepoint(name).execute()
    } catch (error) {
      await inner.rollbackToSavepoint(name).execute()
      throw error
    }
  }

  return {
    id: 'kysely',
    select1: () =>
      db
        .transaction()
        .execute(async (trx) => (await sql<{ one: number }>`select 1 as one`.execute(trx)).rows[0]?.one ?? 0),
    tpcb: (p: TpcbParams) =>
      db.transaction().execute(async (trx) => {
        await sql`update pgbench_accounts set abalance = abalance + ${p.delta} where aid = ${p.aid}`.execute(trx)
        await sql`select abalance from pgbench_accounts where aid = ${p.aid}`.execute(trx)
        await sql`update pgbench_tellers set tbalance = tbalance + ${p.delta} where tid = ${p.tid}`.execute(trx)
        await sql`update pgbench_branches set bbalance = bbalance + ${p.delta} where bid = ${p.bid}`.execute(trx)
        await sql`${HISTORY} values (${p.tid}, ${p.bid}, ${p.aid}, ${p.delta}, current_timestamp)`.execute(trx)
      }),
    nested: async () => {
      const trx = await db.startTransaction().execute()
      try {
        await insert(trx, 0)
        for (let part = 1; part <= 3; part++) {
          try {
            await savepoint(trx, `s${part}`, async () => {
              await insert(trx, part)
              if (part === 3) throw new PlannedFailure()
            })
          } catch (error) {
            if (!(error instanceof PlannedFailure)) throw error
          }
        }
        await trx.commit().execute()
      } catch (error) {
        await trx.rollback().execute()
        throw error
      }
    },
    transfer: (p: TransferParams, onAttempt: () => void) =>
      retryLoop(() =>
        db
          .transaction()
          .setIsolationLevel('serializable')
          .execute(async (trx) => {
            onAttempt()
            const { rows } = await sql<{
              balance: number
            }>`select balance from bench_accounts where id = ${p.from}`.execute(trx)
            const balance = (rows[0]?.balance ?? 0) - p.amount
            const set = sql`update bench_accounts set balance = ${balance} where id = ${p.from}`
            const add = sql`update bench_accounts set balance = balance + ${p.amount} where id = ${p.to}`
            if (p.from < p.to) {
              await set.execute(trx)
              await add.execute(trx)
            } else {
              await add.execute(trx)
              await set.execute(trx)
            }
          }),
      ),
    close: () => db.destroy(),
  }
}
