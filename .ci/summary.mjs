#!/usr/bin/env node
// The summary of CI's test runs (.ci/run): one line per run from the jest results
// (`jest --json --outputFile=DIR/RUN.json`) and the exit code (DIR/RUN.rc), then, as the last
// line, the plain total "N passed, N failed" summed over all runs.
//
// Usage: node .ci/summary.mjs DIR RUN...
// Exit status 0 only when every run has results, exited 0, failed no test and broke no suite,
// and at least one test ran.
import { existsSync, readFileSync } from 'node:fs'
import { join } from 'node:path'

const [dir, ...runs] = process.argv.slice(2)
if (dir === undefined || runs.length === 0) {
  console.error('usage: node .ci/summary.mjs DIR RUN...')
  process.exit(2)
}

let passed = 0
let failed = 0
let ok = true
for (const run of runs) {
  const rcFile = join(dir, `${run}.rc`)
  const rc = existsSync(rcFile) ? Number(readFileSync(rcFile, 'utf8').trim()) : NaN
  let result
  try {
    result = JSON.parse(readFileSync(join(dir, `${run}.json`), 'utf8'))
  } catch (error) {
    console.log(`run ${run}: no jest results (${error.code ?? error.message}), exit code ${rc}`)
    ok = false
    continue
  }
  const p = result.numPassedTests ?? 0
  const f = result.numFailedTests ?? 0
  const broken = result.numRuntimeErrorTestSuites ?? 0
  passed += p
  failed += f
  if (rc !== 0 || f > 0 || broken > 0 || result.success !== true) ok = false
  console.log(
    `run ${run}: ${p} passed, ${f} failed, ${result.numPendingTests ?? 0} skipped, ` +
      `${broken} suite(s) failed to run, jest exit code ${rc}`,
  )
}
if (passed + failed === 0) ok = false
console.log(`${passed} passed, ${failed} failed`)
process.exit(ok ? 0 : 1)
