#!/usr/bin/env node
// The public surface of pg-atomic, checked in CI so that a new or changed export is a reviewed
// decision (issue 7 §2): one API Extractor report per entry point of the package's "exports" map,
// committed as packages/pg-atomic/etc/<name>.api.md.
//
//   npm run api:check    (node scripts/api-report.mjs)           fails when a report would change
//   npm run api:update   (node scripts/api-report.mjs --update)  rewrites the reports
//
// Both read the built declarations (dist/**/*.d.ts): run `npm run build` first. The entry points
// are the keys of "exports" in packages/pg-atomic/package.json, so adding an entry point there
// (e.g. "./insight": { "types": "./dist/insight/index.d.ts", ... }) is the only change needed:
// its report is pg-atomic-insight.api.md. A report with no committed file fails the check too.
//
// API Extractor's own findings (a type used by an export but not exported, ae-forgotten-export;
// TSDoc syntax) are written into the report as "// Warning:" lines for the reviewer rather than
// failing the run; release tags (@public, @beta) are not used by this project.
import { Extractor, ExtractorConfig } from '@microsoft/api-extractor'
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join, relative, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..')
const update = process.argv.includes('--update')
const packageFolder = join(root, 'packages', 'pg-atomic')
const reportFolder = join(packageFolder, 'etc')
const pkg = JSON.parse(readFileSync(join(packageFolder, 'package.json'), 'utf8'))

/** [report name, .d.ts path] for each entry point of the exports map. */
const entries = Object.entries(pkg.exports)
  .filter(([key]) => key !== './package.json')
  .map(([key, target]) => {
    const types = typeof target === 'string' ? target.replace(/\.js$/, '.d.ts') : target.types
    if (typeof types !== 'string') throw new Error(`exports["${key}"] has no "types" condition`)
    const name = key === '.' ? pkg.name : `${pkg.name}-${key.slice(2).replace(/\//g, '-')}`
    return [name, join(packageFolder, types)]
  })

mkdirSync(reportFolder, { recursive: true })
const temp = mkdtempSync(join(tmpdir(), 'pg-atomic-api-'))
const changed = []
const QUIET = new Set([
  'console-preamble',
  'console-api-report-not-copied',
  'console-api-report-copied',
  'console-api-report-created',
])
let errors = 0

try {
  for (const [name, entry] of entries) {
    if (!existsSync(entry)) {
      console.log(`${relative(root, entry)} does not exist: run npm run build first`)
      errors++
      continue
    }
    const config = ExtractorConfig.prepare({
      configObjectFullPath: join(packageFolder, 'api-extractor.json'), // virtual: paths resolve from here
      packageJsonFullPath: join(packageFolder, 'package.json'),
      configObject: {
        projectFolder: packageFolder,
        mainEntryPointFilePath: entry,
        bundledPackages: [],
        compiler: {
          overrideTsconfig: {
            compilerOptions: {
              target: 'ES2022',
              lib: ['ES2022'],
              module: 'Node16',
              moduleResolution: 'Node16',
              types: ['node'],
              typeRoots: [join(root, 'node_modules', '@types')],
              strict: true,
              skipLibCheck: true,
            },
            files: [entry],
          },
        },
        apiReport: {
          enabled: true,
          reportFileName: name,
          reportFolder,
          reportTempFolder: temp,
          includeForgottenExports: false,
        },
        docModel: { enabled: false },
        dtsRollup: { enabled: false },
        tsdocMetadata: { enabled: false },
        newlineKind: 'lf',
        messages: {
          compilerMessageReporting: { default: { logLevel: 'error' } },
          extractorMessageReporting: {
            default: { logLevel: 'none', addToApiReportFile: true },
            'ae-missing-release-tag': { logLevel: 'none', addToApiReportFile: false },
          },
          tsdocMessageReporting: { default: { logLevel: 'none', addToApiReportFile: false } },
        },
      },
    })
    const result = Extractor.invoke(config, {
      localBuild: update,
      showVerboseMessages: false,
      // In a check, the diff of the report is printed (as a warning "Changes to the API report").
      printApiReportDiff: !update,
      messageCallback: (message) => {
        // Said once per entry point below, in this script's words.
        if (QUIET.has(message.messageId)) message.handled = true
      },
    })
    const report = relative(root, join(reportFolder, `${name}.api.md`))
    if (result.errorCount > 0) {
      errors += result.errorCount
      console.log(`${report}: API Extractor reported ${result.errorCount} error(s)`)
    } else if (result.apiReportChanged) {
      changed.push(report)
      console.log(update ? `${report}: updated` : `${report}: the public surface changed`)
    } else {
      console.log(`${report}: unchanged`)
    }
  }

  // A report left behind by a removed entry point.
  const expected = new Set(entries.map(([name]) => `${name}.api.md`))
  for (const file of readdirSync(reportFolder)) {
    if (!file.endsWith('.api.md') || expected.has(file)) continue
    const report = relative(root, join(reportFolder, file))
    if (update) {
      rmSync(join(reportFolder, file))
      console.log(`${report}: removed (no such entry point)`)
    } else {
      changed.push(report)
      console.log(`${report}: no entry point of the exports map has this report`)
    }
  }
} finally {
  rmSync(temp, { recursive: true, force: true })
}

if (errors > 0) process.exit(1)
if (changed.length > 0 && !update) {
  console.log(
    '\nThe public surface of pg-atomic differs from the committed API report(s) above. If the change is ' +
      'intended, run `npm run api:update` and commit packages/pg-atomic/etc/ with it (the diff is the review).',
  )
  process.exit(1)
}
