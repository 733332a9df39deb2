/**
 * The five workloads of issue 8 §3, as lists of planned operations: a round's operations are drawn
 * from one seed, so every contestant runs the same ones. Each operation records what it committed
 * in the {@link Ledger}, which the checks compare with the database afterwards.
 *
 * @module
 */
import type { Contestant, ContestantId, TpcbParams, TransferParams } from '../contestants'
import { Random } from '../stats'
import { TRANSFER_ACCOUNTS } from './schema'

export const WORKLOAD_IDS = ['select1', 'tpcb', 'nested', 'transfer', 'contention'] as const
export type WorkloadId = (typeof WORKLOAD_IDS)[number]

export interface WorkloadInfo {
  readonly id: WorkloadId
  /** The letter of the brief: (a) … (e). */
  readonly letter: string
  readonly title: string
  /** A name for table rows. */
  readonly short: string
  /** Run one at a time (latency) and by N workers (throughput), or only contended by N workers. */
  readonly modes: readonly ('sequential' | 'concurrent')[]
}

export const WORKLOADS: Readonly<Record<WorkloadId, WorkloadInfo>> = {
  select1: {
    id: 'select1',
    letter: 'a',
    title: 'one SELECT 1 in a transaction',
    short: 'SELECT 1',
    modes: ['sequential', 'concurrent'],
  },
  tpcb: {
    id: 'tpcb',
    letter: 'b',
    title: 'pgbench TPC-B (5 statements)',
    short: 'TPC-B',
    modes: ['sequential', 'concurrent'],
  },
  nested: {
    id: 'nested',
    letter: 'c',
    title: '1 insert + 3 nested blocks of 1 insert, the 3rd fails and is caught',
    short: 'nested blocks',
    modes: ['sequential', 'concurrent'],
  },
  transfer: {
    id: 'transfer',
    letter: 'd',
    title: 'serializable transfer (select + 2 updates)',
    short: 'serializable transfer',
    modes: ['sequential', 'concurrent'],
  },
  contention: {
    id: 'contention',
    letter: 'e',
    title: 'serializable transfer under contention, with retries',
    short: 'contended transfer',
    modes: ['concurrent'],
  },
}

/** What the committed operations should have left in the database. */
export class Ledger {
  tpcbCommits = 0
  tpcbDeltaSum = 0
  readonly nestedCommits = new Map<ContestantId, number>()
  /** Expected balance changes of bench_accounts by id. */
  readonly transferDeltas = new Map<number, number>()

  tpcb(p: TpcbParams): void {
    this.tpcbCommits++
    this.tpcbDeltaSum += p.delta
  }

  nested(id: ContestantId): void {
    this.nestedCommits.set(id, (this.nestedCommits.get(id) ?? 0) + 1)
  }

  transfer(p: TransferParams): void {
    this.transferDeltas.set(p.from, (this.transferDeltas.get(p.from) ?? 0) - p.amount)
    this.transferDeltas.set(p.to, (this.transferDeltas.get(p.to) ?? 0) + p.amount)
  }
}

/** Everything an operation may need besides its contestant. */
export interface PlanContext {
  readonly ledger: Ledger
  readonly scale: number
  /** Accounts 1..hotAccounts are the contended ones. */
  readonly hotAccounts: number
}

/** One planned operation; `onAttempt` counts transaction attempts (retries are attempts − 1). */
export type Operation = (c: Contestant, onAttempt: () => void) => Promise<void>

/** `count` operations of `workload` drawn from `seed`. */
export function planOperations(workload: WorkloadId, seed: number, count: number, ctx: PlanContext): Operation[] {
  const random = new Random(seed)
  const ops: Operation[] = []
  for (let i = 0; i < count; i++) ops.push(plan(workload, random, ctx))
  return ops
}

function plan(workload: WorkloadId, random: Random, ctx: PlanContext): Operation {
  switch (workload) {
    case 'select1':
      return async (c, onAttempt) => {
        onAttempt()
        const one = await c.select1()
        if (one !== 1) throw new Error(`select 1 returned ${String(one)}.`)
      }
    case 'tpcb': {
      // pgbench's tpcb-like: random aid, bid, tid over the scale, delta in [-5000, 5000].
      const p: TpcbParams = {
        aid: random.int(1, 100_000 * ctx.scale),
        bid: random.int(1, ctx.scale),
        tid: random.int(1, 10 * ctx.scale),
        delta: random.int(-5000, 5000),
      }
      return async (c, onAttempt) => {
        onAttempt()
        await c.tpcb(p)
        ctx.ledger.tpcb(p)
      }
    }
    case 'nested':
      return async (c, onAttempt) => {
        onAttempt()
        await c.nested()
        ctx.ledger.nested(c.id)
      }
    case 'transfer':
    case 'contention': {
      const [low, high] = workload === 'contention' ? [1, ctx.hotAccounts] : [ctx.hotAccounts + 1, TRANSFER_ACCOUNTS]
      const from = random.int(low, high)
      let to = random.int(low, high - 1)
      if (to >= from) to++
      const p: TransferParams = { from, to, amount: random.int(1, 100) }
      return async (c, onAttempt) => {
        await c.transfer(p, onAttempt)
        ctx.ledger.transfer(p)
      }
    }
  }
}
