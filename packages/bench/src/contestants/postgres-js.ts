/**
 * postgres.js (the npm package `postgres`): `sql.begin()` for a transaction, `sql.savepoint()`
 * inside it, `sql.begin('isolation level serializable', …)`; tagged templates that produce the same
 * texts as workloads/sql.ts, sent as named prepared statements (its default). No retry: a plain
 * loop (retry.ts).
 *
 * postgres 4 is an ES module: it is loaded with `import()` from this CommonJS package.
 *
 * @module
 */
import type { Sql, TransactionSql } from 'postgres' with { 'resolution-mode': 'import' }
import { retryLoop } from './retry'
import { PlannedFailure } from './types'
import type { ConnectOptions, Contestant, TpcbParams, TransferParams } from './types'

export async function createPostgresJs(options: ConnectOptions): Promise<Contestant> {
  const { default: postgres } = await import('postgres')
  const sql: Sql = postgres(options.url, { max: options.poolSize, idle_timeout: 0, max_lifetime: 0, onnotice: false })

  const insert = (tx: TransactionSql, part: number) =>
    tx`insert into bench_nested (contestant, part) values (${'postgres.js'}, ${part})`

  return {
    id: 'postgres.js',
    select1: () => sql.begin(async (tx) => (await tx<{ one: number }[]>`select 1 as one`)[0]?.one ?? 0),
    tpcb: (p: TpcbParams) =>
      sql
        .begin(async (tx) => {
          await tx`update pgbench_accounts set abalance = abalance + ${p.delta} where aid = ${p.aid}`
          await tx`select abalance from pgbench_accounts where aid = ${p.aid}`
          await tx`update pgbench_tellers set tbalance = tbalance + ${p.delta} where tid = ${p.tid}`
          await tx`update pgbench_branches set bbalance = bbalance + ${p.delta} where bid = ${p.bid}`
          const history = tx`insert into pgbench_history (tid, bid, aid, delta, mtime)`
          await tx`${history} values (${p.tid}, ${p.bid}, ${p.aid}, ${p.delta}, current_timestamp)`
        })
        .then(() => undefined),
    nested: () =>
      sql
        .begin(async (tx) => {
          await insert(tx, 0)
          for (let part = 1; part <= 3; part++) {
            try {
              await tx.savepoint(async (sp) => {
                await insert(sp, part)
                if (part === 3) throw new PlannedFailure()
              })
            } catch (error) {
              if (!(error instanceof PlannedFailure)) throw error
            }
          }
        })
        .then(() => undefined),
    transfer: (p: TransferParams, onAttempt: () => void) =>
      retryLoop(() =>
        sql
          .begin('isolation level serializable', async (tx) => {
            onAttempt()
            const [row] = await tx<{ balance: number }[]>`select balance from bench_accounts where id = ${p.from}`
            const balance = (row?.balance ?? 0) - p.amount
            if (p.from < p.to) {
              await tx`update bench_accounts set balance = ${balance} where id = ${p.from}`
              await tx`update bench_accounts set balance = balance + ${p.amount} where id = ${p.to}`
            } else {
              await tx`update bench_accounts set balance = balance + ${p.amount} where id = ${p.to}`
              await tx`update bench_accounts set balance = ${balance} where id = ${p.from}`
            }
          })
          .then(() => undefined),
      ),
    close: () => sql.end({ timeout: 5 }),
  }
}
