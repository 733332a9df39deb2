#!/usr/bin/env node
// The prepack / postpack step of the published packages (pg-atomic, pg-atomic-cli); npm runs it
// in the package's folder.
//
//   node ../../scripts/prepack.mjs               build the repository (tsc -b), then remove from
//                                                dist/ every output whose source file no longer
//                                                exists (a renamed module must not ship twice)
//   node ../../scripts/prepack.mjs --bundle-cli  the same, then copy the built pg-atomic-cli package
//                                                into dist/cli/ of this package (pg-atomic): what its
//                                                bin/pg-atomic.js runs, so that `npx pg-atomic`
//                                                works from an empty folder (docs/cli.md, Install)
//   node ../../scripts/prepack.mjs --clean       postpack: remove dist/cli/ again
//
// The copy is the CLI's compiled JavaScript with its source maps and the sources they point to
// (dist/cli/dist/*.js, dist/cli/src/*.ts: the layout of the pg-atomic-cli package, so relative
// paths in the CLI keep working), and a package.json with only the version and bin. It has no
// `name`, so that no second package named pg-atomic-cli appears in the tree. The CLI's
// `require('pg-atomic')` resolves to this package through node_modules (and Node's package
// self-reference), never to a second copy.
import { spawnSync } from 'node:child_process'
import { cpSync, existsSync, mkdirSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs'
import { dirname, join, relative, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..')
const pkgDir = process.cwd()
const args = new Set(process.argv.slice(2))
const cliDir = join(root, 'packages', 'pg-atomic-cli')

if (args.has('--clean')) {
  rmSync(join(pkgDir, 'dist', 'cli'), { recursive: true, force: true })
  process.exit(0)
}

const tsc = join(root, 'node_modules', '.bin', process.platform === 'win32' ? 'tsc.cmd' : 'tsc')
const build = spawnSync(tsc, ['-b', args.has('--bundle-cli') ? cliDir : pkgDir], {
  stdio: 'inherit',
  shell: process.platform === 'win32',
})
if (build.status !== 0) {
  console.error('prepack: the build failed; nothing was packed')
  process.exit(build.status ?? 1)
}

/** Removes outputs in `dist` of `dir` whose `src` file is gone; returns their paths. */
function pruneOrphans(dir, skip = []) {
  const removed = []
  const walk = (sub) => {
    for (const entry of readdirSync(join(dir, 'dist', sub), { withFileTypes: true })) {
      const rel = sub === '' ? entry.name : `${sub}/${entry.name}`
      if (skip.includes(rel)) continue
      if (entry.isDirectory()) {
        walk(rel)
        continue
      }
      const base = rel.replace(/(\.d\.ts|\.js)(\.map)?$/, '')
      if (base === rel) continue
      if (!existsSync(join(dir, 'src', `${base}.ts`))) {
        rmSync(join(dir, 'dist', rel))
        removed.push(relative(root, join(dir, 'dist', rel)))
      }
    }
  }
  walk('')
  return removed
}

const removed = pruneOrphans(pkgDir, ['cli'])
if (args.has('--bundle-cli')) removed.push(...pruneOrphans(cliDir))
for (const file of removed) console.log(`prepack: removed ${file} (its source file no longer exists)`)

if (args.has('--bundle-cli')) {
  const target = join(pkgDir, 'dist', 'cli')
  rmSync(target, { recursive: true, force: true })
  mkdirSync(target, { recursive: true })
  const cliPkg = JSON.parse(readFileSync(join(cliDir, 'package.json'), 'utf8'))
  cpSync(join(cliDir, 'dist'), join(target, 'dist'), {
    recursive: true,
    filter: (source) => !/\.d\.ts(\.map)?$/.test(source),
  })
  cpSync(join(cliDir, 'src'), join(target, 'src'), { recursive: true })
  const bundled = {
    description: `pg-atomic-cli ${cliPkg.version}, copied by scripts/prepack.mjs; run by bin/pg-atomic.js`,
    version: cliPkg.version,
    type: 'commonjs',
    private: true,
    bin: cliPkg.bin,
  }
  writeFileSync(join(target, 'package.json'), JSON.stringify(bundled, null, 2) + '\n')
  console.log(`prepack: pg-atomic-cli ${cliPkg.version} copied into ${relative(root, target)}`)
}
