/**
 * One network setting: the contestants connect (directly, or through the delay proxy), then for
 * each workload: a warm-up, then the interleaved rounds — in round r the contestants run in the
 * order rotated by r, each its sequential batch, then each its concurrent batch, on the same planned
 * operations — then the correctness checks.
 *
 * @module
 */
import { performance } from 'node:perf_hooks'
import pg from 'pg'
import { checkWorkload } from './checks'
import type { Check } from './checks'
import { MAX_ATTEMPTS, closeContestants, connectContestants } from './contestants'
import type { Contestant, ContestantId } from './contestants'
import type { BenchDatabase } from './database'
import { concurrent, sequential } from './measure'
import type { Batch } from './measure'
import type { BenchOptions } from './options'
import type { Proxy } from './proxy/proxy'
import { startProxy } from './proxy/proxy'
import { batchFigures, round, summarise } from './results'
import type { BatchFigures, ContestantSummary, Mode, RoundRecord, SettingResult, WorkloadResult } from './results'
import { quantile } from './stats'
import { WORKLOADS, planOperations } from './workloads'
import type { Ledger, Operation, PlanContext, WorkloadId } from './workloads'

/** A seed per setting, workload and round: every contestant of a round runs the same operations. */
export function seedFor(base: number, ...parts: number[]): number {
  let h = base ^ 0x9e3779b9
  for (const p of parts) h = Math.imul(h ^ p, 0x85ebca6b) ^ (h >>> 13)
  return h >>> 0
}

/** Operations of one batch of `mode`. */
export function batchSize(options: BenchOptions, workload: WorkloadId, mode: Mode): number {
  if (mode === 'sequential' || workload === 'contention') return options.ops
  return Math.max(options.ops, Math.round((options.ops * options.workers) / 2))
}

/** Latency of an autocommit `select 1` with a plain pg client: the setting's round trip. */
async function ping(url: string): Promise<{ p50: number; p99: number }> {
  const client = new pg.Client({ connectionString: url })
  await client.connect()
  try {
    const times: number[] = []
    for (let i = 0; i < 220; i++) {
      const t = performance.now()
      await client.query('select 1')
      if (i >= 20) times.push(performance.now() - t)
    }
    return { p50: round(quantile(times, 0.5), 3), p99: round(quantile(times, 0.99), 3) }
  } finally {
    await client.end()
  }
}

export interface SettingContext {
  readonly db: BenchDatabase
  readonly options: BenchOptions
  readonly ledger: Ledger
  readonly checker: pg.Client
  readonly log: (line: string) => void
}

function settingName(delayMs: number): string {
  return delayMs === 0 ? 'loopback' : `${delayMs} ms each way`
}

export async function runSetting(ctx: SettingContext, delayMs: number, index: number): Promise<SettingResult> {
  const { db, options, log } = ctx
  const proxy = delayMs > 0 ? await startProxy(db.host, db.port, delayMs) : undefined
  const url = proxy === undefined ? db.url : db.through(proxy.port)
  const name = settingName(delayMs)
  try {
    const pingMs = await ping(url)
    log(`\n== ${name}: an autocommit select 1 takes ${pingMs.p50} ms (p50), ${pingMs.p99} ms (p99)`)
    const contestants = await connectContestants(options.contestants, url, options.workers)
    const workloads: WorkloadResult[] = []
    try {
      for (const [w, workload] of options.workloads.entries()) {
        workloads.push(await runWorkload(ctx, contestants, proxy, workload, seedFor(options.seed, index, w)))
      }
    } finally {
      await closeContestants(contestants)
    }
    const proxyDelay = proxy === undefined ? undefined : (await proxy.stats()).delay
    return { name, delayMs, pingMs, ...(proxyDelay === undefined ? {} : { proxyDelay }), workloads }
  } finally {
    await proxy?.stop()
  }
}

async function measureBatch(
  contestant: Contestant,
  ops: readonly Operation[],
  mode: Mode,
  workers: number,
  proxy: Proxy | undefined,
): Promise<{ batch: Batch; figures: BatchFigures }> {
  await proxy?.reset()
  const batch = mode === 'sequential' ? await sequential(contestant, ops) : await concurrent(contestant, ops, workers)
  const wire = proxy === undefined ? undefined : await proxy.stats()
  return { batch, figures: batchFigures(batch, wire) }
}

async function runWorkload(
  ctx: SettingContext,
  contestants: readonly Contestant[],
  proxy: Proxy | undefined,
  workload: WorkloadId,
  seed: number,
): Promise<WorkloadResult> {
  const { options, log } = ctx
  const info = WORKLOADS[workload]
  const plan: PlanContext = { ledger: ctx.ledger, scale: options.scale, hotAccounts: options.hotAccounts }
  log(`(${info.letter}) ${info.title}`)

  // Warm-up: JIT, prepared statement caches, and every pooled connection opened.
  const warmOps = Math.min(options.ops, 30)
  for (const c of contestants) {
    await sequential(c, planOperations(workload, seedFor(seed, 999), warmOps, plan))
    await concurrent(
      c,
      planOperations(workload, seedFor(seed, 998), Math.max(warmOps, options.workers * 2), plan),
      options.workers,
    )
  }

  const rounds: RoundRecord[] = []
  const latencies = new Map<ContestantId, number[]>()
  for (let r = 0; r < options.rounds; r++) {
    const order = contestants.map((_, i) => contestants[(i + r) % contestants.length] as Contestant)
    const batches: RoundRecord['batches'] = {}
    for (const mode of info.modes) {
      const ops = planOperations(
        workload,
        seedFor(seed, r, mode === 'sequential' ? 1 : 2),
        batchSize(options, workload, mode),
        plan,
      )
      const byContestant: Partial<Record<ContestantId, BatchFigures>> = {}
      for (const c of order) {
        const { batch, figures } = await measureBatch(c, ops, mode, options.workers, proxy)
        byContestant[c.id] = figures
        if (batch.latenciesMs !== undefined) latencies.set(c.id, [...(latencies.get(c.id) ?? []), ...batch.latenciesMs])
        if (figures.errors > 0)
          log(`   ${c.id} ${mode}: ${figures.errors} operations failed (${figures.firstError ?? ''})`)
      }
      batches[mode] = byContestant
    }
    rounds.push({ round: r + 1, order: order.map((c) => c.id), batches })
    log(`   round ${r + 1}/${options.rounds}: ${progress(batches)}`)
  }

  const summary: WorkloadResult['summary'] = {}
  for (const mode of info.modes) {
    const byContestant: Partial<Record<ContestantId, ContestantSummary>> = {}
    for (const c of contestants) {
      const s = summarise(rounds, mode, c.id, latencies.get(c.id))
      if (s !== undefined) byContestant[c.id] = s
    }
    summary[mode] = byContestant
  }
  const checks = [failureCheck(workload, summary), ...(await checkWorkload(ctx.checker, workload, ctx.ledger))]
  for (const failed of checks.filter((c) => !c.ok)) log(`   CHECK FAILED: ${failed.name}: ${failed.detail}`)
  return { workload, summary, rounds, checks }
}

/**
 * Every operation succeeded; under contention, an operation may give up after its last attempt (a
 * plain retry loop can starve a transaction), which is reported, not a correctness failure.
 */
function failureCheck(workload: WorkloadId, summary: WorkloadResult['summary']): Check {
  const failed: string[] = []
  let ok = true
  for (const [mode, byContestant] of Object.entries(summary)) {
    for (const [id, s] of Object.entries(byContestant ?? {})) {
      if (s === undefined || s.errors === 0) continue
      const allowed = workload === 'contention' ? s.retriesExhausted : 0
      if (s.errors > allowed) ok = false
      failed.push(
        `${id} ${mode}: ${s.errors} failed` +
          (s.retriesExhausted > 0 ? ` (${s.retriesExhausted} gave up after ${MAX_ATTEMPTS} attempts)` : ''),
      )
    }
  }
  return {
    name:
      workload === 'contention'
        ? 'every operation committed, or gave up after its last attempt on a serialization failure'
        : 'every operation succeeded',
    ok,
    detail: failed.length === 0 ? 'none failed' : failed.join('; '),
  }
}

function progress(batches: RoundRecord['batches']): string {
  const parts: string[] = []
  for (const [mode, byContestant] of Object.entries(batches)) {
    const pg = byContestant?.pg
    if (pg === undefined) continue
    parts.push(
      mode === 'sequential'
        ? `pg p50 ${pg.p50Ms?.toFixed(2)} ms`
        : `pg ${pg.opsPerSec.toFixed(0)} ops/s with ${pg.ops} ops`,
    )
  }
  return parts.join(', ')
}
