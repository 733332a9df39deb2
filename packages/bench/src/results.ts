/**
 * The shape of bench-results.json, and how a batch and a series of rounds are summarised.
 *
 * @module
 */
import type { Check } from './checks'
import type { ContestantId } from './contestants'
import type { MachineInfo } from './machine'
import type { Batch } from './measure'
import type { BenchOptions } from './options'
import type { ProxyStats } from './proxy/protocol'
import { quantile, spread } from './stats'
import type { Spread } from './stats'
import type { WorkloadId } from './workloads'

export type Mode = 'sequential' | 'concurrent'

/** What a proxy saw during one batch (delay setting only). */
export interface WireFigures {
  readonly transactions: number
  /** ReadyForQuery messages of all transactions, committed or rolled back. */
  readonly z: number
  readonly roundTripsPerTransaction: number
  readonly flightsPerTransaction: number
}

/** One batch, without its latencies. */
export interface BatchFigures {
  readonly ops: number
  readonly errors: number
  /** Of which gave up after their last attempt on a serialization failure or deadlock. */
  readonly retriesExhausted: number
  readonly firstError?: string
  readonly attempts: number
  readonly wallMs: number
  readonly opsPerSec: number
  readonly p50Ms?: number
  readonly p99Ms?: number
  /** Main thread CPU µs per operation. */
  readonly cpuUsPerOp: number
  /** Whole-process CPU µs per operation (GC and compiler threads included). */
  readonly processCpuUsPerOp: number
  readonly bytesPerOp: number
  readonly gcs: number
  readonly wire?: WireFigures
}

export function batchFigures(batch: Batch, wire?: ProxyStats): BatchFigures {
  const ok = batch.ops - batch.errors
  return {
    ops: batch.ops,
    errors: batch.errors,
    retriesExhausted: batch.retriesExhausted,
    ...(batch.firstError === undefined ? {} : { firstError: batch.firstError }),
    attempts: batch.attempts,
    wallMs: round(batch.wallMs, 1),
    opsPerSec: round((ok * 1000) / batch.wallMs, 1),
    ...(batch.latenciesMs === undefined
      ? {}
      : { p50Ms: round(quantile(batch.latenciesMs, 0.5), 3), p99Ms: round(quantile(batch.latenciesMs, 0.99), 3) }),
    cpuUsPerOp: round(batch.mainCpuUs / batch.ops, 1),
    processCpuUsPerOp: round(batch.cpuUs / batch.ops, 1),
    bytesPerOp: Math.round(batch.allocatedBytes / batch.ops),
    gcs: batch.gcs,
    ...(wire === undefined || wire.transactions === 0
      ? {}
      : {
          wire: {
            transactions: wire.transactions,
            z: wire.z,
            roundTripsPerTransaction: round(wire.z / wire.transactions, 2),
            flightsPerTransaction: round(wire.flights / wire.transactions, 2),
          },
        }),
  }
}

/** A contestant's figures for one workload, mode and setting, over the rounds. */
export interface ContestantSummary {
  readonly rounds: number
  readonly ops: number
  readonly errors: number
  readonly retriesExhausted: number
  /** Sequential: p50 latency per round. */
  readonly p50Ms?: Spread
  /** Sequential: p99 over every operation of every round. */
  readonly p99Ms?: number
  /** Operations per second (goodput: committed operations) per round. */
  readonly opsPerSec: Spread
  /**
   * Per round, this contestant's figure over hand-written pg's in the same round: p50 latency for
   * sequential batches (lower is better), throughput for concurrent ones (higher is better).
   */
  readonly ratio: Spread
  /** Main-thread CPU µs per operation. */
  readonly cpuUsPerOp: Spread
  /** Main-thread CPU per operation minus pg's, per round. */
  readonly cpuDeltaUs: Spread
  /** Whole-process CPU µs per operation (GC and compiler threads included). */
  readonly processCpuUsPerOp: Spread
  /** Whole-process CPU per operation minus pg's, per round. */
  readonly processCpuDeltaUs: Spread
  readonly bytesPerOp: Spread
  /** (attempts − committed operations) / committed operations, over all rounds. */
  readonly retriesPerCommit: number
  /** Round trips per transaction seen by the delay proxy (delay setting only). */
  readonly roundTripsPerTransaction?: number
  /** Round trips per committed operation, failed attempts included (delay setting only). */
  readonly roundTripsPerCommit?: number
}

export interface RoundRecord {
  readonly round: number
  readonly order: readonly ContestantId[]
  readonly batches: Partial<Record<Mode, Partial<Record<ContestantId, BatchFigures>>>>
}

export interface WorkloadResult {
  readonly workload: WorkloadId
  readonly summary: Partial<Record<Mode, Partial<Record<ContestantId, ContestantSummary>>>>
  readonly rounds: readonly RoundRecord[]
  readonly checks: readonly Check[]
}

export interface SettingResult {
  readonly name: string
  readonly delayMs: number
  /** Latency of an autocommit `select 1` with plain pg in this setting (the network's round trip). */
  readonly pingMs: { readonly p50: number; readonly p99: number }
  /** The delay the proxy actually added per chunk and direction. */
  readonly proxyDelay?: ProxyStats['delay']
  readonly workloads: readonly WorkloadResult[]
}

/** Round trips per transaction counted on the wire, sequentially, through a proxy adding no delay. */
export interface RoundTripResult {
  readonly workload: WorkloadId
  readonly contestant: ContestantId
  readonly transactions: number
  /** ReadyForQuery messages per transaction (per commit for the contended workload). */
  readonly perTransaction: number
  readonly flightsPerTransaction: number
  readonly histogram: Readonly<Record<string, number>>
  /** Contended workload: retries per commit during the counted run. */
  readonly retriesPerCommit?: number
  /** Every user statement on the wire had the workload's text (pg-promise: with literals). */
  readonly sameSql: boolean
  readonly unexpectedStatements: readonly string[]
  /** The statements of one transaction; `│` marks where the client waited for the server. */
  readonly trace: readonly string[]
}

export interface Results {
  readonly benchmark: 'pg-atomic side by side'
  readonly command: string
  readonly machine: MachineInfo
  readonly options: Omit<BenchOptions, 'jsonPath' | 'reportFrom'>
  /** The harness's own cost per operation, included in every CPU and allocation figure. */
  readonly harness: { readonly cpuUsPerOp: number; readonly processCpuUsPerOp: number; readonly bytesPerOp: number }
  readonly roundTrips: readonly RoundTripResult[]
  readonly settings: readonly SettingResult[]
  readonly checks: readonly Check[]
  readonly noise: readonly string[]
  readonly durationS: number
}

export function round(value: number, digits: number): number {
  const f = 10 ** digits
  return Math.round(value * f) / f
}

/** Summarises the rounds of one contestant in one mode, against pg's batches of the same rounds. */
export function summarise(
  rounds: readonly RoundRecord[],
  mode: Mode,
  id: ContestantId,
  latenciesMs: readonly number[] = [],
): ContestantSummary | undefined {
  const mine: BatchFigures[] = []
  const base: BatchFigures[] = []
  for (const r of rounds) {
    const batch = r.batches[mode]?.[id]
    const pg = r.batches[mode]?.pg
    if (batch === undefined || pg === undefined) continue
    mine.push(batch)
    base.push(pg)
  }
  if (mine.length === 0) return undefined
  const ratios = mine.map((b, i) => {
    const p = base[i] as BatchFigures
    return mode === 'sequential' ? (b.p50Ms ?? NaN) / (p.p50Ms ?? NaN) : b.opsPerSec / p.opsPerSec
  })
  const committed = mine.reduce((s, b) => s + b.ops - b.errors, 0)
  const attempts = mine.reduce((s, b) => s + b.attempts, 0)
  const wire = mine.flatMap((b) => (b.wire === undefined ? [] : [{ ...b.wire, committed: b.ops - b.errors }]))
  const z = wire.reduce((sum, w) => sum + w.z, 0)
  return {
    rounds: mine.length,
    ops: mine.reduce((s, b) => s + b.ops, 0),
    errors: mine.reduce((s, b) => s + b.errors, 0),
    retriesExhausted: mine.reduce((s, b) => s + b.retriesExhausted, 0),
    ...(mode === 'sequential'
      ? { p50Ms: roundSpread(spread(mine.map((b) => b.p50Ms ?? NaN)), 3), p99Ms: round(quantile(latenciesMs, 0.99), 3) }
      : {}),
    opsPerSec: roundSpread(spread(mine.map((b) => b.opsPerSec)), 1),
    ratio: roundSpread(spread(ratios), 3),
    cpuUsPerOp: roundSpread(spread(mine.map((b) => b.cpuUsPerOp)), 1),
    cpuDeltaUs: roundSpread(spread(mine.map((b, i) => b.cpuUsPerOp - (base[i] as BatchFigures).cpuUsPerOp)), 1),
    processCpuUsPerOp: roundSpread(spread(mine.map((b) => b.processCpuUsPerOp)), 1),
    processCpuDeltaUs: roundSpread(
      spread(mine.map((b, i) => b.processCpuUsPerOp - (base[i] as BatchFigures).processCpuUsPerOp)),
      1,
    ),
    bytesPerOp: roundSpread(spread(mine.map((b) => b.bytesPerOp)), 0),
    retriesPerCommit: committed === 0 ? NaN : round((attempts - committed) / committed, 3),
    ...(wire.length === 0
      ? {}
      : {
          roundTripsPerTransaction: round(z / wire.reduce((sum, w) => sum + w.transactions, 0), 2),
          roundTripsPerCommit: round(z / wire.reduce((sum, w) => sum + w.committed, 0), 2),
        }),
  }
}

function roundSpread(s: Spread, digits: number): Spread {
  return { median: round(s.median, digits), min: round(s.min, digits), max: round(s.max, digits) }
}

/**
 * JSON with indentation, but any value whose one-line form fits in `width` on one line: readable,
 * and the diffs of a re-run stay small.
 */
export function formatJson(value: unknown, width = 300, indent = ''): string {
  const flat = JSON.stringify(value)
  if (flat === undefined) return 'null'
  if (value === null || typeof value !== 'object' || flat.length + indent.length <= width) return flat
  const inner = `${indent}  `
  if (Array.isArray(value)) {
    return `[\n${value.map((v) => inner + formatJson(v, width, inner)).join(',\n')}\n${indent}]`
  }
  const entries = Object.entries(value).filter(([, v]) => v !== undefined)
  const lines = entries.map(([k, v]) => `${inner}${JSON.stringify(k)}: ${formatJson(v, width, inner)}`)
  return `{\n${lines.join(',\n')}\n${indent}}`
}
