/**
 * `npm run bench`: hand-written pg, pg-atomic, Kysely, pg-promise and postgres.js side by side on
 * the workloads of issue 8 §3, on loopback and through a delay proxy, interleaved in rounds.
 * `npm run bench -- --help` lists the options; `--smoke` is the short pass CI may run.
 *
 * 1. A database of its own on the server of `@pg-atomic/devdb` (DATABASE_URL, else embedded).
 * 2. Round trips per transaction, counted on the wire (round-trips.ts).
 * 3. Each network setting (runner.ts): warm-up, interleaved rounds, correctness checks.
 * 4. Tables on stdout (report.ts), results as JSON, the README's tables with `--markdown`.
 *
 * Exit code 1 when a correctness check fails or the run breaks; timings never fail it.
 *
 * @module
 */
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import path from 'node:path'
import { performance } from 'node:perf_hooks'
import pg from 'pg'
import { openBenchDatabase } from './database'
import { machineInfo } from './machine'
import { harnessOverhead } from './measure'
import { parseOptions } from './options'
import { markdownReport, noise, printReport } from './report'
import type { Results, SettingResult } from './results'
import { formatJson, round } from './results'
import { countRoundTrips } from './round-trips'
import { runSetting } from './runner'
import { Ledger } from './workloads'
import { createSchema } from './workloads/schema'
import { checkWorkload } from './checks'

async function main(): Promise<number> {
  const options = parseOptions(process.argv.slice(2))
  if (options === undefined) return 0
  const started = performance.now()
  const log = (line: string): void => console.log(line)
  if (options.reportFrom !== undefined) {
    const earlier = JSON.parse(readFileSync(options.reportFrom, 'utf8')) as Results
    printReport(earlier, log)
    if (options.markdown) log(`\n---- Markdown (README Benchmarks section) ----\n\n${markdownReport(earlier)}\n`)
    return 0
  }

  const db = await openBenchDatabase()
  const checker = new pg.Client({ connectionString: db.url })
  try {
    await checker.connect()
    log(
      `pg-atomic benchmark${options.smoke ? ' (smoke pass)' : ''}: PostgreSQL from ${db.server.source}, ` +
        `database ${new URL(db.url).pathname.slice(1)}`,
    )
    log(`creating the tables (pgbench scale ${options.scale}) …`)
    await createSchema(checker, { scale: options.scale })
    const machine = machineInfo(db.serverVersion)
    const harness = await harnessOverhead()
    const ledger = new Ledger()

    log('counting round trips on the wire …')
    const roundTrips = await countRoundTrips(db, options, ledger)
    const checks = []
    for (const workload of options.workloads) checks.push(...(await checkWorkload(checker, workload, ledger)))

    const settings: SettingResult[] = []
    for (const [i, delayMs] of options.delaysMs.entries()) {
      const setting = await runSetting({ db, options, ledger, checker, log }, delayMs, i)
      settings.push(setting)
      for (const w of setting.workloads)
        checks.push(...w.checks.map((c) => ({ ...c, name: `${setting.name}, ${c.name}` })))
    }

    const { jsonPath, reportFrom: _reportFrom, ...recorded } = options
    const results: Results = {
      benchmark: 'pg-atomic side by side',
      command: ['node', path.relative(process.cwd(), process.argv[1] ?? 'main.js'), ...process.argv.slice(2)].join(' '),
      machine,
      options: recorded,
      harness: {
        cpuUsPerOp: round(harness.mainCpuUs, 2),
        processCpuUsPerOp: round(harness.cpuUs, 2),
        bytesPerOp: Math.round(harness.bytes),
      },
      roundTrips,
      settings,
      checks,
      noise: noise({ settings }),
      durationS: round((performance.now() - started) / 1000, 1),
    }
    printReport(results, log)
    if (options.markdown) log(`\n---- Markdown (README Benchmarks section) ----\n\n${markdownReport(results)}\n`)
    mkdirSync(path.dirname(jsonPath), { recursive: true })
    writeFileSync(jsonPath, `${formatJson(results)}\n`)
    log(`\nResults written to ${path.relative(process.cwd(), jsonPath)} (${results.durationS} s).`)
    return checks.every((c) => c.ok) ? 0 : 1
  } finally {
    await checker.end().catch(() => undefined)
    await db.drop()
  }
}

main().then(
  (code) => {
    process.exitCode = code
  },
  (error: unknown) => {
    console.error(error)
    process.exitCode = 1
  },
)
