#!/usr/bin/env node
/**
 * The `pg-atomic` executable. See docs/cli.md, or run `pg-atomic --help`.
 *
 * @module
 */
import { run } from './main'

run(process.argv.slice(2)).then(
  (code) => {
    // exitCode, not exit(): stdout is flushed before the process ends.
    process.exitCode = code
  },
  (error: unknown) => {
    process.stderr.write(`pg-atomic: ${error instanceof Error ? error.message : String(error)}\n`)
    process.exitCode = 1
  },
)
