/**
 * Correctness checks against the database, after each workload: what committed is exactly what the
 * {@link Ledger} recorded, invariants hold, and no session is left idle in transaction.
 *
 * @module
 */
import type pg from 'pg'
import { CONTESTANT_IDS } from './contestants'
import type { Ledger, WorkloadId } from './workloads'
import { INITIAL_BALANCE, TRANSFER_ACCOUNTS } from './workloads/schema'

export interface Check {
  readonly name: string
  readonly ok: boolean
  readonly detail: string
}

function check(name: string, ok: boolean, detail: string): Check {
  return { name, ok, detail }
}

async function one<T>(client: pg.Client, text: string): Promise<T> {
  return (await client.query(text)).rows[0] as T
}

async function tpcbChecks(client: pg.Client, ledger: Ledger): Promise<Check[]> {
  const sums = await one<Record<'a' | 't' | 'b' | 'h' | 'n', string>>(
    client,
    `select (select coalesce(sum(abalance), 0) from pgbench_accounts) as a,
            (select coalesce(sum(tbalance), 0) from pgbench_tellers) as t,
            (select coalesce(sum(bbalance), 0) from pgbench_branches) as b,
            (select coalesce(sum(delta), 0) from pgbench_history) as h,
            (select count(*) from pgbench_history) as n`,
  )
  const expected = String(ledger.tpcbDeltaSum)
  return [
    check(
      'tpcb: sums of accounts, tellers, branches and history deltas equal the committed deltas',
      [sums.a, sums.t, sums.b, sums.h].every((s) => s === expected),
      `accounts ${sums.a}, tellers ${sums.t}, branches ${sums.b}, history ${sums.h}; committed ${expected}`,
    ),
    check(
      'tpcb: one history row per committed transaction',
      Number(sums.n) === ledger.tpcbCommits,
      `${sums.n} rows, ${ledger.tpcbCommits} commits`,
    ),
  ]
}

async function nestedChecks(client: pg.Client, ledger: Ledger): Promise<Check[]> {
  const { rows } = await client.query<{ contestant: string; part: number; n: string }>(
    'select contestant, part, count(*) as n from bench_nested group by 1, 2',
  )
  const count = (id: string, part: number): number =>
    Number(rows.find((r) => r.contestant === id && r.part === part)?.n ?? 0)
  const wrong: string[] = []
  for (const id of CONTESTANT_IDS) {
    const commits = ledger.nestedCommits.get(id) ?? 0
    const parts = [0, 1, 2, 3].map((part) => count(id, part))
    if (parts[0] !== commits || parts[1] !== commits || parts[2] !== commits || parts[3] !== 0) {
      wrong.push(`${id}: parts 0–3 = ${parts.join('/')}, commits ${commits}`)
    }
  }
  return [
    check(
      'nested: per contestant, parts 0–2 once per commit and the failed block (part 3) never',
      wrong.length === 0,
      wrong.length === 0
        ? `${[...ledger.nestedCommits.values()].reduce((a, b) => a + b, 0)} transactions checked`
        : wrong.join('; '),
    ),
  ]
}

async function transferChecks(client: pg.Client, ledger: Ledger): Promise<Check[]> {
  const { rows } = await client.query<{ id: number; balance: number }>(
    'select id, balance from bench_accounts order by id',
  )
  let sum = 0
  const wrong: string[] = []
  for (const row of rows) {
    sum += row.balance
    const expected = INITIAL_BALANCE + (ledger.transferDeltas.get(row.id) ?? 0)
    if (row.balance !== expected && wrong.length < 5)
      wrong.push(`account ${row.id}: ${row.balance}, expected ${expected}`)
  }
  return [
    check(
      'transfer: the sum of balances is unchanged',
      sum === INITIAL_BALANCE * TRANSFER_ACCOUNTS && rows.length === TRANSFER_ACCOUNTS,
      `${rows.length} accounts, sum ${sum}`,
    ),
    check(
      'transfer: every balance is its initial one plus the committed transfers (no lost or doubled update)',
      wrong.length === 0,
      wrong.length === 0 ? `${rows.length} balances checked` : wrong.join('; '),
    ),
  ]
}

/** The checks after `workload` ran. */
export async function checkWorkload(client: pg.Client, workload: WorkloadId, ledger: Ledger): Promise<Check[]> {
  const checks: Check[] = []
  if (workload === 'tpcb') checks.push(...(await tpcbChecks(client, ledger)))
  if (workload === 'nested') checks.push(...(await nestedChecks(client, ledger)))
  if (workload === 'transfer' || workload === 'contention') checks.push(...(await transferChecks(client, ledger)))
  const idle = await one<{ n: string }>(
    client,
    'select count(*) as n from pg_stat_activity ' +
      `where datname = current_database() and state like 'idle in transaction%'`,
  )
  checks.push(check('no session idle in transaction', idle.n === '0', `${idle.n} sessions`))
  return checks
}
