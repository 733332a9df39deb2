/**
 * What each contestant implements: the workloads written the way a user of that library writes
 * them, with the library's own transaction and savepoint API and the statements of workloads/sql.ts.
 *
 * @module
 */

/** The contestants, in the order tables show them; `pg` (hand-written) is the baseline. */
export const CONTESTANT_IDS = ['pg', 'pg-atomic', 'kysely', 'pg-promise', 'postgres.js'] as const
export type ContestantId = (typeof CONTESTANT_IDS)[number]

/** One TPC-B transaction's random inputs (pgbench's `:aid`, `:bid`, `:tid`, `:delta`). */
export interface TpcbParams {
  readonly aid: number
  readonly bid: number
  readonly tid: number
  readonly delta: number
}

/** One transfer: `amount` from account `from` to account `to`. */
export interface TransferParams {
  readonly from: number
  readonly to: number
  readonly amount: number
}

/** Attempts in all (the first included) of a transfer before it gives up, for every contestant. */
export const MAX_ATTEMPTS = 50

/** The error the third nested block throws, and the only one the workload catches. */
export class PlannedFailure extends Error {
  override readonly name = 'PlannedFailure'

  constructor() {
    super('The third nested block fails on purpose.')
  }
}

/** A library under test, connected to one server address. */
export interface Contestant {
  readonly id: ContestantId
  /** (a) `select 1` in a transaction; resolves with the value read. */
  select1(): Promise<number>
  /** (b) pgbench's TPC-B: 3 updates, a select and an insert in a transaction. */
  tpcb(p: TpcbParams): Promise<void>
  /**
   * (c) an insert (part 0), then three nested blocks of one insert each (parts 1–3) run one after
   * the other; the third throws {@link PlannedFailure} after its insert and the caller catches it,
   * so its savepoint is rolled back and the transaction commits parts 0–2.
   */
  nested(): Promise<void>
  /**
   * (d, e) a serializable read-compute-write transfer (a select, then the two updates in id order,
   * which rules out deadlocks), retried on serialization failures and deadlocks up to
   * {@link MAX_ATTEMPTS} attempts by the library's own retry, or by a plain loop where it has none.
   * `onAttempt` is called at the start of every attempt.
   */
  transfer(p: TransferParams, onAttempt: () => void): Promise<void>
  /** Ends the contestant's pool. */
  close(): Promise<void>
}

/** Where and how a contestant connects. */
export interface ConnectOptions {
  readonly url: string
  /** Connections in the contestant's pool (the concurrent workers). */
  readonly poolSize: number
}
