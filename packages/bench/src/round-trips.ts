/**
 * Round trips per transaction, counted on the wire: the contestants connect through a proxy that
 * adds no delay, run a few operations of each workload one at a time, and the proxy counts the
 * ReadyForQuery messages of each transaction (see proxy/wire-counter.ts). It also keeps the
 * statements of the first transactions, which shows what each library sends and lets the benchmark
 * check that every contestant ran the same SQL. The contended workload runs with all workers and is
 * counted per commit (failed attempts included).
 *
 * @module
 */
import { closeContestants, connectContestants } from './contestants'
import type { BenchDatabase } from './database'
import { concurrent, sequential } from './measure'
import type { BenchOptions } from './options'
import { startProxy } from './proxy/proxy'
import { round } from './results'
import type { RoundTripResult } from './results'
import { seedFor } from './runner'
import { planOperations } from './workloads'
import type { Ledger, PlanContext } from './workloads'
import { CONTROL_STATEMENT, WORKLOAD_STATEMENTS, statementShape } from './workloads/sql'

/** Transactions counted per contestant and workload. */
const COUNTED = 10

export async function countRoundTrips(
  db: BenchDatabase,
  options: BenchOptions,
  ledger: Ledger,
): Promise<RoundTripResult[]> {
  const proxy = await startProxy(db.host, db.port, 0)
  const plan: PlanContext = { ledger, scale: options.scale, hotAccounts: options.hotAccounts }
  const results: RoundTripResult[] = []
  try {
    const contestants = await connectContestants(options.contestants, db.through(proxy.port), options.workers)
    try {
      for (const workload of options.workloads) {
        const contended = workload === 'contention'
        const exact = new Set(WORKLOAD_STATEMENTS[workload])
        const shapes = new Set(WORKLOAD_STATEMENTS[workload]?.map(statementShape))
        for (const c of contestants) {
          await sequential(c, planOperations(workload, seedFor(options.seed, 77), 3, plan))
          await proxy.reset(true)
          const ops = planOperations(workload, seedFor(options.seed, 78), contended ? options.ops : COUNTED, plan)
          const batch = contended ? await concurrent(c, ops, options.workers) : await sequential(c, ops)
          const stats = await proxy.stats()
          const committed = batch.ops - batch.errors
          const trace = stats.traces[0] ?? []
          // Simple-protocol lines start with 'Q ' and may hold several statements.
          const unexpected = stats.traces
            .flat()
            .filter((line) => line !== '│' && !line.startsWith('→'))
            .flatMap((line) => line.replace(/^Q /, '').split(';'))
            .map((statement) => statement.trim())
            .filter((statement) => statement !== '' && !CONTROL_STATEMENT.test(statement))
            // The exact text; pg-promise inlines the values, so its statements are compared by shape.
            .filter((statement) => !exact.has(statement))
            .filter((statement) => c.id !== 'pg-promise' || !shapes.has(statementShape(statement)))
          results.push({
            workload,
            contestant: c.id,
            transactions: stats.transactions,
            perTransaction: round(stats.z / (contended ? committed : stats.transactions), 2),
            flightsPerTransaction: round(stats.flights / (contended ? committed : stats.transactions), 2),
            histogram: stats.zHistogram,
            ...(contended ? { retriesPerCommit: round((batch.attempts - committed) / committed, 3) } : {}),
            sameSql: unexpected.length === 0,
            unexpectedStatements: [...new Set(unexpected)],
            trace,
          })
          if (batch.errors > 0)
            throw new Error(`${c.id} failed ${batch.errors} operations of ${workload}: ${batch.firstError ?? ''}`)
        }
      }
    } finally {
      await closeContestants(contestants)
    }
  } finally {
    await proxy.stop()
  }
  return results
}
