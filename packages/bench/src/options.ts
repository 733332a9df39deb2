/**
 * The command line of `npm run bench -- [options]`.
 *
 * @module
 */
import path from 'node:path'
import { parseArgs } from 'node:util'
import { CONTESTANT_IDS } from './contestants'
import type { ContestantId } from './contestants'
import { WORKLOADS, WORKLOAD_IDS } from './workloads'
import type { WorkloadId } from './workloads'

export interface BenchOptions {
  /** Network settings to run: 0 is loopback (direct), n > 0 the delay proxy adding n ms each way. */
  readonly delaysMs: readonly number[]
  readonly rounds: number
  /** Operations per sequential batch; concurrent batches run ops × workers / 2 (at least ops). */
  readonly ops: number
  readonly workers: number
  readonly workloads: readonly WorkloadId[]
  readonly contestants: readonly ContestantId[]
  /** pgbench scale factor of the TPC-B tables. */
  readonly scale: number
  /** Contended accounts of workload (e). */
  readonly hotAccounts: number
  readonly seed: number
  readonly jsonPath: string
  readonly markdown: boolean
  readonly smoke: boolean
  /** Print the tables of an earlier results file instead of running. */
  readonly reportFrom: string | undefined
}

export const HELP = `npm run bench -- [options]

Runs hand-written pg, pg-atomic, Kysely, pg-promise and postgres.js side by side on the same
workloads, interleaved in rounds (the order rotates every round), on loopback and through a proxy
that adds a fixed delay in each direction. Counts round trips per transaction on the wire.
It is a benchmark, not a test: timings never fail it; a failed correctness check does (exit 1).

  --delay-ms <n[,n]>      network settings: 0 = loopback; n > 0 = the delay proxy, n ms each way
                          (default: 0,1 — both)
  --rounds <n>            interleaved rounds per workload and setting (default 10)
  --ops <n>               operations per sequential batch (default 100); concurrent batches run
                          ops × workers / 2, contended ones ops commits
  --workers <n>           concurrent workers, and pool size of every contestant (default 8)
  --only <w[,w]>          workloads: select1 (a), tpcb (b), nested (c), transfer (d), contention (e)
  --contestants <c[,c]>   ${CONTESTANT_IDS.join(', ')} (pg, the baseline, is always run)
  --scale <n>             pgbench scale of the TPC-B tables (default 8)
  --hot-accounts <n>      contended accounts of workload (e) (default 4)
  --seed <n>              seed of the operations (default 1)
  --json <file>           where to write the results (default packages/bench/results/bench-results.json;
                          bench-smoke.json with --smoke)
  --markdown              also print the README's tables in Markdown
  --report <file>         print the tables (and with --markdown the README's) of an earlier results
                          file, without running anything
  --smoke                 a short pass of everything (rounds 1, ops 8, workers 2, scale 1), < 1 min
  --help
`

function positiveInt(name: string, value: string | undefined, fallback: number, min = 1): number {
  if (value === undefined) return fallback
  const n = Number(value)
  if (!Number.isInteger(n) || n < min)
    throw new Error(`--${name} must be a whole number of at least ${min}, not '${value}'.`)
  return n
}

function list<T extends string>(
  name: string,
  value: string | undefined,
  allowed: readonly T[],
  aliases: Record<string, T> = {},
): T[] | undefined {
  if (value === undefined) return undefined
  return value.split(',').map((raw) => {
    const item = raw.trim()
    const found = aliases[item] ?? allowed.find((a) => a === item)
    if (found === undefined) throw new Error(`--${name}: '${item}' is not one of ${allowed.join(', ')}.`)
    return found
  })
}

/** The options, or `undefined` after printing the help. */
export function parseOptions(argv: readonly string[]): BenchOptions | undefined {
  const { values } = parseArgs({
    args: [...argv],
    options: {
      'delay-ms': { type: 'string' },
      rounds: { type: 'string' },
      ops: { type: 'string' },
      workers: { type: 'string' },
      only: { type: 'string' },
      contestants: { type: 'string' },
      scale: { type: 'string' },
      'hot-accounts': { type: 'string' },
      seed: { type: 'string' },
      json: { type: 'string' },
      markdown: { type: 'boolean', default: false },
      report: { type: 'string' },
      smoke: { type: 'boolean', default: false },
      help: { type: 'boolean', default: false },
    },
    strict: true,
  })
  if (values.help) {
    console.log(HELP)
    return undefined
  }
  const smoke = values.smoke
  const delays =
    values['delay-ms'] === undefined
      ? [0, 1]
      : values['delay-ms'].split(',').map((d) => positiveInt('delay-ms', d, 0, 0))
  const letters = Object.fromEntries(Object.values(WORKLOADS).map((w) => [w.letter, w.id])) as Record<
    string,
    WorkloadId
  >
  const contestants = list('contestants', values.contestants, CONTESTANT_IDS) ?? [...CONTESTANT_IDS]
  const workers = positiveInt('workers', values.workers, smoke ? 2 : 8)
  const hotAccounts = positiveInt('hot-accounts', values['hot-accounts'], 4, 2)
  return {
    delaysMs: [...new Set(delays)].sort((a, b) => a - b),
    rounds: positiveInt('rounds', values.rounds, smoke ? 1 : 10),
    ops: positiveInt('ops', values.ops, smoke ? 8 : 100),
    workers,
    workloads: list('only', values.only, WORKLOAD_IDS, letters) ?? [...WORKLOAD_IDS],
    contestants: CONTESTANT_IDS.filter((id) => id === 'pg' || contestants.includes(id)),
    scale: positiveInt('scale', values.scale, smoke ? 1 : 8),
    hotAccounts,
    seed: positiveInt('seed', values.seed, 1, 0),
    jsonPath: path.resolve(
      values.json ?? path.join(__dirname, '..', 'results', smoke ? 'bench-smoke.json' : 'bench-results.json'),
    ),
    markdown: values.markdown,
    smoke,
    reportFrom: values.report === undefined ? undefined : path.resolve(values.report),
  }
}
