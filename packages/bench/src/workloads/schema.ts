/**
 * The benchmark's tables, created in a database of their own: pgbench's four tables at a scale
 * (100 000 accounts, 10 tellers and 1 branch per unit, as `pgbench -i -s <scale>` makes them),
 * `bench_nested` for the nested workload and `bench_accounts` for the transfers.
 *
 * @module
 */
import type pg from 'pg'

/** Accounts of the transfer table; ids 1..hot are the contended ones of workload (e). */
export const TRANSFER_ACCOUNTS = 10_000
export const INITIAL_BALANCE = 1_000_000

export interface SchemaOptions {
  /** pgbench scale factor. */
  readonly scale: number
}

export async function createSchema(client: pg.Client, options: SchemaOptions): Promise<void> {
  const s = options.scale
  const statements = [
    'drop table if exists pgbench_history, pgbench_tellers, pgbench_accounts, pgbench_branches, ' +
      'bench_nested, bench_accounts',
    // pgbench -i: the same columns and types, primary keys added after the load.
    'create table pgbench_history (tid int, bid int, aid int, delta int, mtime timestamp, filler char(22))',
    'create table pgbench_tellers (tid int not null, bid int, tbalance int, filler char(84))',
    'create table pgbench_accounts (aid int not null, bid int, abalance int, filler char(84))',
    'create table pgbench_branches (bid int not null, bbalance int, filler char(88))',
    `insert into pgbench_branches (bid, bbalance) select g, 0 from generate_series(1, ${s}) g`,
    'insert into pgbench_tellers (tid, bid, tbalance) ' +
      `select g, (g - 1) / 10 + 1, 0 from generate_series(1, ${10 * s}) g`,
    'insert into pgbench_accounts (aid, bid, abalance, filler) ' +
      `select g, (g - 1) / 100000 + 1, 0, '' from generate_series(1, ${100_000 * s}) g`,
    'alter table pgbench_branches add primary key (bid)',
    'alter table pgbench_tellers add primary key (tid)',
    'alter table pgbench_accounts add primary key (aid)',
    'create table bench_nested ' +
      '(id bigint generated always as identity primary key, contestant text not null, part int not null)',
    'create table bench_accounts (id int primary key, balance int not null)',
    `insert into bench_accounts select g, ${INITIAL_BALANCE} from generate_series(1, ${TRANSFER_ACCOUNTS}) g`,
    'vacuum analyze pgbench_history, pgbench_tellers, pgbench_accounts, pgbench_branches, bench_nested, bench_accounts',
  ]
  for (const statement of statements) await client.query(statement)
}
