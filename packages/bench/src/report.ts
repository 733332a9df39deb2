/**
 * The readable output: console tables per setting and workload, the round-trip table, checks and
 * noise; and (`--markdown`) the tables of the README's Benchmarks section.
 *
 * @module
 */
import { CONTESTANT_IDS } from './contestants'
import type { ContestantId } from './contestants'
import type { ContestantSummary, Results, RoundTripResult, SettingResult, WorkloadResult } from './results'
import { relativeRange } from './stats'
import type { Spread } from './stats'
import { WORKLOADS } from './workloads'
import type { WorkloadId } from './workloads'

const LABEL: Record<ContestantId, string> = {
  pg: 'pg (by hand)',
  'pg-atomic': 'pg-atomic',
  kysely: 'Kysely',
  'pg-promise': 'pg-promise',
  'postgres.js': 'postgres.js',
}

function table(rows: readonly (readonly string[])[], rightFrom = 1): string {
  const widths = (rows[0] ?? []).map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length)))
  return rows
    .map((r) =>
      r.map((cell, i) => (i < rightFrom ? cell.padEnd(widths[i] ?? 0) : cell.padStart(widths[i] ?? 0))).join('  '),
    )
    .join('\n')
}

const f = (v: number | undefined, digits = 2): string => (v === undefined || Number.isNaN(v) ? '–' : v.toFixed(digits))
const ratio = (s: Spread | undefined): string => (s === undefined ? '–' : `${f(s.median)} (${f(s.min)}–${f(s.max)})`)
const kb = (bytes: number | undefined): string => (bytes === undefined ? '–' : (bytes / 1024).toFixed(1))
const signed = (v: number): string => `${v >= 0 ? '+' : ''}${v.toFixed(1)}`

function roundTrips(results: Results, workload: WorkloadId, id: ContestantId): RoundTripResult | undefined {
  return results.roundTrips.find((r) => r.workload === workload && r.contestant === id)
}

/** "7", or "7 (6 waits)" when the client pipelined. */
function tripsCell(r: RoundTripResult | undefined): string {
  if (r === undefined) return '–'
  const trips = Number.isInteger(r.perTransaction) ? String(r.perTransaction) : r.perTransaction.toFixed(1)
  return r.flightsPerTransaction < r.perTransaction - 0.01 ? `${trips} (${f(r.flightsPerTransaction, 1)} waits)` : trips
}

function workloadTable(results: Results, w: WorkloadResult): string {
  const info = WORKLOADS[w.workload]
  const ids = CONTESTANT_IDS.filter(
    (id) => w.summary.concurrent?.[id] !== undefined || w.summary.sequential?.[id] !== undefined,
  )
  if (w.workload === 'contention') {
    const rows = [
      ['', 'RT/commit', 'goodput/s', '×pg (min–max)', 'retries/commit', 'CPU µs/op', 'KB/op', 'gave up', 'failed'],
    ]
    for (const id of ids) {
      const s = w.summary.concurrent?.[id] as ContestantSummary
      rows.push([
        LABEL[id],
        f(s.roundTripsPerCommit ?? roundTrips(results, w.workload, id)?.perTransaction, 1),
        f(s.opsPerSec.median, 0),
        ratio(s.ratio),
        f(s.retriesPerCommit),
        f(s.cpuUsPerOp.median, 0),
        kb(s.bytesPerOp.median),
        String(s.retriesExhausted),
        String(s.errors - s.retriesExhausted),
      ])
    }
    const on = `${results.options.workers} workers on ${results.options.hotAccounts} accounts`
    return `(${info.letter}) ${info.title}, ${on}\n${table(rows)}`
  }
  const rows = [
    [
      '',
      'round',
      'p50 ms',
      'p99 ms',
      '×pg p50 (min–max)',
      'ops/s',
      '×pg ops/s (min–max)',
      'CPU µs/op',
      '±pg µs',
      'proc µs',
      '±pg µs',
      'KB/op',
      'failed',
    ],
  ]
  for (const id of ids) {
    const s = w.summary.sequential?.[id]
    const c = w.summary.concurrent?.[id]
    rows.push([
      LABEL[id],
      tripsCell(roundTrips(results, w.workload, id)),
      f(s?.p50Ms?.median),
      f(s?.p99Ms),
      ratio(s?.ratio),
      f(c?.opsPerSec.median, 0),
      ratio(c?.ratio),
      f(s?.cpuUsPerOp.median, 0),
      id === 'pg' || s === undefined ? '' : signed(s.cpuDeltaUs.median),
      f(s?.processCpuUsPerOp.median, 0),
      id === 'pg' || s === undefined ? '' : signed(s.processCpuDeltaUs.median),
      kb(s?.bytesPerOp.median),
      String((s?.errors ?? 0) + (c?.errors ?? 0)),
    ])
  }
  return `(${info.letter}) ${info.title}\n${table(rows)}`
}

function settingHeader(s: SettingResult): string {
  const added =
    s.proxyDelay === undefined
      ? 'direct connection'
      : `proxy in its own process adding ${s.proxyDelay.requestedMs} ms each way ` +
        `(measured ${f(s.proxyDelay.p50Ms)} ms p50, ${f(s.proxyDelay.p99Ms)} ms p99 per chunk)`
  return `==== ${s.name}: ${added}; an autocommit select 1 takes ${f(s.pingMs.p50)} ms p50`
}

/** Per setting: the largest round-to-round movement of pg's own figures, and the widest ratio range. */
export function noise(results: Pick<Results, 'settings'>): string[] {
  const lines: string[] = []
  for (const s of results.settings) {
    let pgLatency = 0
    let pgThroughput = 0
    const widths: number[] = []
    for (const w of s.workloads) {
      const seq = w.rounds.map((r) => r.batches.sequential?.pg?.p50Ms).filter((v): v is number => v !== undefined)
      const conc = w.rounds.map((r) => r.batches.concurrent?.pg?.opsPerSec).filter((v): v is number => v !== undefined)
      if (seq.length > 1) pgLatency = Math.max(pgLatency, relativeRange(seq))
      if (conc.length > 1) pgThroughput = Math.max(pgThroughput, relativeRange(conc))
      for (const mode of ['sequential', 'concurrent'] as const) {
        for (const [id, c] of Object.entries(w.summary[mode] ?? {})) {
          if (id !== 'pg' && c !== undefined && c.rounds > 1) widths.push(c.ratio.max - c.ratio.min)
        }
      }
    }
    if (widths.length === 0) {
      lines.push(`${s.name}: one round only — no measure of the noise; read the figures as indications.`)
      continue
    }
    widths.sort((a, b) => a - b)
    lines.push(
      `${s.name}: hand-written pg's own p50 moved by up to ${(pgLatency * 100).toFixed(0)}% between rounds ` +
        `and its throughput by up to ${(pgThroughput * 100).toFixed(0)}%; ` +
        `the min–max range of a ratio is ${f(widths[widths.length >> 1])} wide at the median, ` +
        `${f(widths.at(-1))} at the widest.`,
    )
  }
  return lines
}

export function printReport(results: Results, print: (text: string) => void): void {
  const m = results.machine
  print(
    `\npg-atomic side by side — ${m.date}\n` +
      `${m.cpuModel}, ${m.cores} cores, ${m.memoryGiB} GiB, ${m.platform}, load ${m.loadAverage.join(' ')}\n` +
      `Node ${m.node}; ${m.postgres}\n` +
      `${Object.entries(m.libraries)
        .map(([name, v]) => `${name} ${v}`)
        .join(', ')}; commit ${m.commit}\n` +
      `${results.options.rounds} interleaved rounds (order rotated each round), ` +
      `${results.options.ops} ops per sequential batch, ` +
      `${results.options.workers} workers; pgbench scale ${results.options.scale}. ` +
      `Harness cost included in CPU/KB figures: ${f(results.harness.cpuUsPerOp, 1)} µs, ` +
      `${results.harness.bytesPerOp.toFixed(0)} B per op.`,
  )
  print('\nRound trips per transaction (ReadyForQuery messages on the wire, counted by a proxy):')
  print(roundTripTable(results, false))
  for (const s of results.settings) {
    print(`\n${settingHeader(s)}`)
    for (const w of s.workloads) print(`\n${workloadTable(results, w)}`)
  }
  print(
    '\nColumns: round = round trips per transaction; ×pg = per round, the contestant over hand-written pg ' +
      'in the same round (latency: lower is better; ops/s: higher is better), median and min–max of the rounds; ' +
      "CPU µs/op = the client main thread's CPU per operation, proc µs = the whole client process's " +
      '(GC and compiler threads too), ±pg = the median ' +
      "of the per-round differences from pg's; KB = allocated on the client's V8 heap per operation; all sequential. " +
      'Retries are whole-transaction attempts after the first; gave up = still failing after the last attempt.',
  )
  const failed = results.checks.filter((c) => !c.ok)
  print(`\nCorrectness checks: ${results.checks.length - failed.length} passed, ${failed.length} failed.`)
  for (const c of failed) print(`  FAILED ${c.name}: ${c.detail}`)
  const unexpected = results.roundTrips.filter((r) => !r.sameSql)
  for (const r of unexpected)
    print(`  NOTE ${r.contestant} sent other statements in ${r.workload}: ${r.unexpectedStatements.join(' | ')}`)
  print('\nNoise (a 2-core shared machine moves wall times by tens of percent; these are measurements, not tests):')
  for (const line of results.noise) print(`  ${line}`)
}

function roundTripTable(results: Results, markdown: boolean): string {
  const ids = CONTESTANT_IDS.filter((id) => results.roundTrips.some((r) => r.contestant === id))
  const workloads = [...new Set(results.roundTrips.map((r) => r.workload))]
  const header = ['workload', ...ids.map((id) => LABEL[id])]
  const rows = workloads.map((w) => {
    const info = WORKLOADS[w]
    const name = w === 'contention' ? `(${info.letter}) ${info.short}, per commit` : `(${info.letter}) ${info.short}`
    return [name, ...ids.map((id) => tripsCell(roundTrips(results, w, id)))]
  })
  return markdown ? markdownTable(header, rows) : table([header, ...rows])
}

function markdownTable(header: readonly string[], rows: readonly (readonly string[])[]): string {
  const line = (cells: readonly string[]): string => `| ${cells.join(' | ')} |`
  return [line(header), line(header.map((_, i) => (i === 0 ? '---' : '---:'))), ...rows.map(line)].join('\n')
}

/** Marks the generated part of the README's Benchmarks section: replace everything between them. */
export const README_BEGIN = '<!-- bench:begin (generated by npm run bench -- --markdown) -->'
export const README_END = '<!-- bench:end -->'

/** The README's tables, between {@link README_BEGIN} and {@link README_END}. */
export function markdownReport(results: Results): string {
  const m = results.machine
  const ids = CONTESTANT_IDS.filter((id) => results.roundTrips.some((r) => r.contestant === id) || id === 'pg')
  const others = ids.filter((id) => id !== 'pg')
  const o = results.options
  const out: string[] = [README_BEGIN, '']
  out.push(
    `Measured ${m.date.slice(0, 10)} at commit ${m.commit} on ${m.cpuModel} (${m.cores} cores, shared), ` +
      `Node ${m.node}, ` +
      `${m.postgres.split(' on ')[0] ?? m.postgres}; ` +
      `${Object.entries(m.libraries)
        .filter(([name]) => !name.includes("'"))
        .map(([name, v]) => `${name} ${v}`)
        .join(', ')}. ` +
      `${o.rounds} interleaved rounds × ${o.ops} operations, ${o.workers} workers, pgbench scale ${o.scale}.`,
  )
  out.push('\n**Round trips per transaction** (ReadyForQuery messages counted on the wire):\n')
  out.push(roundTripTable(results, true))
  // The delayed settings first: that is where round trips show.
  for (const s of [...results.settings].sort((a, b) => b.delayMs - a.delayMs)) {
    out.push(
      `\n**${s.delayMs === 0 ? 'Loopback' : `${s.delayMs} ms each way`}** (an autocommit round trip takes ` +
        `${f(s.pingMs.p50)} ms): each contestant over hand-written pg in the same round, median of the rounds ` +
        `(min–max). Latency: sequential p50, lower is better; throughput: ${o.workers} workers, higher is better.\n`,
    )
    const rows: string[][] = []
    for (const w of s.workloads) {
      const info = WORKLOADS[w.workload]
      if (w.workload === 'contention') {
        const pg = w.summary.concurrent?.pg
        rows.push([
          `(${info.letter}) ${info.short}: goodput; retries per commit`,
          pg === undefined ? '–' : `${f(pg.opsPerSec.median, 0)}/s; ${f(pg.retriesPerCommit, 1)}`,
          ...others.map((id) => {
            const c = w.summary.concurrent?.[id]
            return c === undefined ? '–' : `${ratio(c.ratio)}; ${f(c.retriesPerCommit, 1)}`
          }),
        ])
        continue
      }
      for (const mode of ['sequential', 'concurrent'] as const) {
        const pg = w.summary[mode]?.pg
        if (pg === undefined) continue
        rows.push([
          `(${info.letter}) ${info.short}: ${mode === 'sequential' ? 'latency' : 'throughput'}`,
          mode === 'sequential' ? `${f(pg.p50Ms?.median)} ms` : `${f(pg.opsPerSec.median, 0)}/s`,
          ...others.map((id) => ratio(w.summary[mode]?.[id]?.ratio)),
        ])
      }
    }
    out.push(markdownTable(['workload', 'pg (by hand)', ...others.map((id) => LABEL[id])], rows))
  }
  const loopback = results.settings.find((s) => s.delayMs === 0) ?? results.settings[0]
  if (loopback !== undefined) {
    out.push(
      `\n**Client cost per transaction** (${loopback.name}, sequential, median of the rounds): CPU µs of the ` +
        "client's main thread (in brackets: the median of the per-round differences from hand-written pg) and KB " +
        'allocated on the V8 heap:\n',
    )
    const rows = loopback.workloads
      .filter((w) => w.summary.sequential !== undefined)
      .map((w) => [
        `(${WORKLOADS[w.workload].letter}) ${WORKLOADS[w.workload].short}`,
        ...ids.map((id) => {
          const s = w.summary.sequential?.[id]
          if (s === undefined) return '–'
          const delta = id === 'pg' ? '' : ` (${signed(s.cpuDeltaUs.median)})`
          return `${f(s.cpuUsPerOp.median, 0)} µs${delta}, ${kb(s.bytesPerOp.median)} KB`
        }),
      ])
    out.push(markdownTable(['workload', ...ids.map((id) => LABEL[id])], rows))
  }
  out.push(`\nNoise: ${results.noise.join(' ')}`)
  out.push('', README_END)
  return out.join('\n')
}
