/**
 * Every statement the workloads run, one text for all contestants. The contestants that build SQL
 * with a tag (Kysely's `sql`, postgres.js) write templates that produce exactly these texts; the
 * round-trip phase checks it on the wire. pg-promise formats values into the text on the client
 * (its documented default), so it sends the same statements with literals instead of `$n`.
 *
 * @module
 */

export const SELECT_1 = 'select 1 as one'

/** pgbench's built-in TPC-B-like script, as `pgbench -b tpcb-like` runs it. */
export const TPCB = {
  updateAccount: 'update pgbench_accounts set abalance = abalance + $1 where aid = $2',
  selectBalance: 'select abalance from pgbench_accounts where aid = $1',
  updateTeller: 'update pgbench_tellers set tbalance = tbalance + $1 where tid = $2',
  updateBranch: 'update pgbench_branches set bbalance = bbalance + $1 where bid = $2',
  insertHistory: 'insert into pgbench_history (tid, bid, aid, delta, mtime) values ($1, $2, $3, $4, current_timestamp)',
} as const

export const NESTED_INSERT = 'insert into bench_nested (contestant, part) values ($1, $2)'

/** A read-compute-write transfer: only correct under serializable isolation (or with row locks). */
export const TRANSFER = {
  selectBalance: 'select balance from bench_accounts where id = $1',
  setBalance: 'update bench_accounts set balance = $1 where id = $2',
  addBalance: 'update bench_accounts set balance = balance + $1 where id = $2',
} as const

/** The user statements of each workload (for the same-SQL check). */
export const WORKLOAD_STATEMENTS: Readonly<Record<string, readonly string[]>> = {
  select1: [SELECT_1],
  tpcb: Object.values(TPCB),
  nested: [NESTED_INSERT],
  transfer: Object.values(TRANSFER),
  contention: Object.values(TRANSFER),
}

/** Transaction control, whoever sends it. */
export const CONTROL_STATEMENT =
  /^(begin|start transaction|commit|end|rollback|savepoint|release|set\s+(local|transaction))\b/i

/** A statement text with parameters and literals replaced by `?`, to compare pg-promise's with the others'. */
export function statementShape(text: string): string {
  return text
    .replace(/\$\d+/g, '?')
    .replace(/'(?:[^']|'')*'/g, '?')
    .replace(/(?<![\w$])-?\d+(\.\d+)?(?![\w])/g, '?')
    .replace(/\s+/g, ' ')
    .trim()
    .toLowerCase()
}
