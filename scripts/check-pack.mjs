#!/usr/bin/env node
// Checks the published packages the way a consumer gets them (issue 7 §3): `npm run check:pack`.
//
//  1. `npm pack` pg-atomic and pg-atomic-cli (their prepack steps build, prune stale outputs and,
//     for pg-atomic, bundle the command line: scripts/prepack.mjs).
//  2. The tarballs: LICENSE, README.md and package.json are in; every source map's `sources`
//     are in the same tarball (maps ship with the sources they point to); no test files.
//  3. `npx --package <pg-atomic tarball> pg-atomic --help` from an empty folder exits 0: the
//     command line comes with the library (docs/cli.md, Install). With DATABASE_URL set, also
//     `pg-atomic locks --json` against that server (what `npx pg-atomic locks` does).
//  4. A fresh consumer folder (outside the repository, so nothing resolves to its node_modules)
//     with both tarballs and `pg` from the registry:
//     - every entry of pg-atomic's "exports" map (`.`, and each subpath such as `./insight`) is
//       loaded with `require()` and with `import()`; both give the same non-empty named exports;
//     - a strict consumer type-checks without skipLibCheck and without listing any @types
//       (`"types": []`: what the .d.ts files need must come with the install), under
//       module/moduleResolution node16 (a .cts and a .mts file) and under bundler;
//     - the installed bin, node_modules/.bin/pg-atomic, runs `--help` with exit code 0 (and, with
//       DATABASE_URL set, `locks --json`).
//  5. publint (errors fail) and @arethetypeswrong/cli (profile node16: TypeScript's node10
//     resolution, which cannot see subpath exports, is not a target) on each tarball.
//
// Usage: node scripts/check-pack.mjs [--keep]   (--keep leaves the temporary folder)
import { spawnSync } from 'node:child_process'
import { mkdirSync, mkdtempSync, readFileSync, realpathSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join, posix, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..')
const keep = process.argv.includes('--keep')
const bin = (name) => join(root, 'node_modules', '.bin', process.platform === 'win32' ? `${name}.cmd` : name)
const tmp = realpathSync(mkdtempSync(join(tmpdir(), 'pg-atomic-pack-')))
const failures = []
const step = (title) => console.log(`\n--> ${title}`)
const fail = (message) => {
  failures.push(message)
  console.log(`FAIL ${message}`)
}

/** Runs a command; returns { status, stdout, stderr }. Prints the output when it fails or `echo`. */
function run(command, args, { cwd = root, echo = false, env } = {}) {
  const result = spawnSync(command, args, {
    cwd,
    encoding: 'utf8',
    env: { ...process.env, ...env },
    shell: process.platform === 'win32',
    maxBuffer: 64 * 1024 * 1024,
  })
  if (result.error) throw result.error
  const output = `${result.stdout}${result.stderr}`.trimEnd()
  if ((result.status !== 0 || echo) && output !== '') console.log(output.replace(/^/gm, '    '))
  return { status: result.status, stdout: result.stdout, stderr: result.stderr }
}

const packages = [
  { name: 'pg-atomic', dir: join(root, 'packages', 'pg-atomic') },
  { name: 'pg-atomic-cli', dir: join(root, 'packages', 'pg-atomic-cli') },
]

try {
  // ---- 1. pack -------------------------------------------------------------------------------
  const tarballs = join(tmp, 'tarballs')
  mkdirSync(tarballs)
  for (const pkg of packages) {
    step(`npm pack ${pkg.name}`)
    const packed = run('npm', ['pack', '--json', '--pack-destination', tarballs], { cwd: pkg.dir })
    if (packed.status !== 0) throw new Error(`npm pack ${pkg.name} failed`)
    const [info] = JSON.parse(packed.stdout.slice(packed.stdout.indexOf('[')))
    pkg.tarball = join(tarballs, info.filename)
    pkg.files = info.files.map((f) => f.path)
    console.log(`    ${info.filename}: ${info.files.length} files, ${(info.size / 1024).toFixed(1)} kB`)
  }

  // ---- 2. tarball contents ------------------------------------------------------------------
  for (const pkg of packages) {
    step(`contents of ${pkg.name}`)
    const files = new Set(pkg.files)
    for (const required of ['package.json', 'README.md', 'LICENSE']) {
      if (!files.has(required)) fail(`${pkg.name}: ${required} is not in the tarball`)
    }
    const unpacked = join(tmp, 'unpacked', pkg.name)
    mkdirSync(unpacked, { recursive: true })
    if (run('tar', ['-xzf', pkg.tarball, '-C', unpacked, '--strip-components=1']).status !== 0) {
      throw new Error(`cannot unpack ${pkg.tarball}`)
    }
    let maps = 0
    for (const file of pkg.files) {
      if (/(^|\/)(test|tests|__tests__)\/|\.test\.[cm]?[jt]s$|\.tsbuildinfo$/.test(file)) {
        fail(`${pkg.name}: ${file} should not be published`)
      }
      if (!file.endsWith('.map')) continue
      maps++
      const map = JSON.parse(readFileSync(join(unpacked, file), 'utf8'))
      for (const source of map.sources ?? []) {
        const target = posix.normalize(posix.join(posix.dirname(file), map.sourceRoot ?? '', source))
        if (!files.has(target)) fail(`${pkg.name}: ${file} points to ${target}, which is not in the tarball`)
      }
    }
    pkg.pkgJson = JSON.parse(readFileSync(join(unpacked, 'package.json'), 'utf8'))
    console.log(`    ${pkg.files.length} files; ${maps} source maps, each with its sources`)
  }
  const [lib, cli] = packages
  if (cli.pkgJson.dependencies?.['pg-atomic'] !== `^${lib.pkgJson.version}`) {
    fail(`pg-atomic-cli depends on pg-atomic ${cli.pkgJson.dependencies?.['pg-atomic']}, not ^${lib.pkgJson.version}`)
  }
  if (!lib.files.includes('dist/cli/package.json')) fail('pg-atomic: the bundled command line (dist/cli) is missing')

  // ---- 3. npx from an empty folder ------------------------------------------------------------
  step('npx pg-atomic --help, from an empty folder with only the pg-atomic tarball')
  const empty = join(tmp, 'empty')
  mkdirSync(empty)
  const npx = run('npx', ['--yes', '--package', lib.tarball, '--', 'pg-atomic', '--help'], {
    cwd: empty,
    // a cache of our own: each run installs the tarball it just packed
    env: { npm_config_cache: join(tmp, 'npm-cache'), npm_config_prefer_online: 'false' },
  })
  if (npx.status !== 0 || !/pg-atomic/.test(npx.stdout)) fail(`npx pg-atomic --help exited with ${npx.status}`)
  else console.log(`    ${npx.stdout.split('\n')[0]}`)
  const url = process.env.DATABASE_URL
  if (url) {
    step('npx pg-atomic locks --json (DATABASE_URL)')
    const locks = run('npx', ['--yes', '--package', lib.tarball, '--', 'pg-atomic', 'locks', '--json', '--url', url], {
      cwd: empty,
      env: { npm_config_cache: join(tmp, 'npm-cache'), npm_config_prefer_online: 'false' },
    })
    if (locks.status !== 0) fail(`npx pg-atomic locks exited with ${locks.status}`)
    else console.log(`    exit code 0, ${locks.stdout.length} bytes of JSON`)
  }

  // ---- 4. a consumer --------------------------------------------------------------------------
  // The optional peers too (the frameworks of pg-atomic/fastify and pg-atomic/nestjs): a consumer
  // that imports every entry point, as below, has them.
  const optionalPeers = Object.keys(lib.pkgJson.peerDependenciesMeta ?? {}).map(
    (name) => `${name}@${lib.pkgJson.peerDependencies[name]}`,
  )
  step(`install both tarballs, pg and the optional peers (${optionalPeers.join(', ')}) into a fresh consumer folder`)
  const consumer = join(tmp, 'consumer')
  mkdirSync(consumer)
  writeFileSync(join(consumer, 'package.json'), JSON.stringify({ name: 'consumer', private: true }, null, 2))
  const install = run(
    'npm',
    ['install', '--no-audit', '--no-fund', '--no-package-lock', lib.tarball, cli.tarball, 'pg', ...optionalPeers],
    {
      cwd: consumer,
    },
  )
  if (install.status !== 0) throw new Error('npm install of the tarballs failed')

  const entries = Object.keys(lib.pkgJson.exports ?? { '.': null }).filter((key) => key !== './package.json')
  const specifiers = entries.map((key) => (key === '.' ? 'pg-atomic' : `pg-atomic/${key.slice(2)}`))
  step(`require() and import() of ${specifiers.join(', ')}`)
  writeFileSync(
    join(consumer, 'load.mjs'),
    `import { createRequire } from 'node:module'
const require = createRequire(import.meta.url)
let ok = true
for (const specifier of ${JSON.stringify(specifiers)}) {
  const cjs = Object.keys(require(specifier)).sort()
  const esm = Object.keys(await import(specifier)).filter((k) => k !== 'default' && k !== 'module.exports').sort()
  const missing = cjs.filter((k) => !esm.includes(k))
  if (cjs.length === 0) { ok = false; console.log('FAIL ' + specifier + ': require() gives no named exports') }
  if (missing.length > 0) {
    ok = false
    console.log('FAIL ' + specifier + ': import() lacks the named exports ' + missing.join(', '))
  }
  else console.log('    ' + specifier + ': ' + cjs.length + ' named exports through require() and import()')
}
process.exit(ok ? 0 : 1)
`,
  )
  if (run('node', ['load.mjs'], { cwd: consumer, echo: true }).status !== 0)
    fail('require()/import() of the entry points')

  step('type-check a strict consumer (skipLibCheck: false, types: []): node16 (.cts, .mts) and bundler')
  const imports = specifiers.map((s, i) => `import * as entry${i} from '${s}'`).join('\n')
  const usage = `${imports}
import { atomic, createDatabase } from 'pg-atomic'
import type { Database } from 'pg-atomic'

const db: Database = createDatabase({ connectionString: 'postgres://localhost/app' })
export async function count(): Promise<number> {
  return atomic(async () => {
    const { rows } = await db.query<{ n: number }>('select 1 as n')
    return rows[0]?.n ?? 0
  })
}
export const entries: readonly object[] = [${specifiers.map((_, i) => `entry${i}`).join(', ')}]
`
  for (const file of ['cjs.cts', 'esm.mts', 'bundler.ts']) writeFileSync(join(consumer, file), usage)
  const strict = {
    target: 'ES2022',
    lib: ['ES2022'],
    types: [],
    strict: true,
    skipLibCheck: false,
    noEmit: true,
    forceConsistentCasingInFileNames: true,
  }
  const tsconfigs = {
    'tsconfig.node16.json': {
      compilerOptions: { ...strict, module: 'node16', moduleResolution: 'node16' },
      files: ['cjs.cts', 'esm.mts'],
    },
    'tsconfig.bundler.json': {
      compilerOptions: { ...strict, module: 'esnext', moduleResolution: 'bundler' },
      files: ['bundler.ts'],
    },
  }
  for (const [name, tsconfig] of Object.entries(tsconfigs)) {
    writeFileSync(join(consumer, name), JSON.stringify(tsconfig, null, 2))
    const tsc = run(bin('tsc'), ['-p', name, '--pretty', 'false'], { cwd: consumer })
    if (tsc.status !== 0) fail(`type-check with ${name}`)
    else console.log(`    ${name}: no errors`)
  }

  step('node_modules/.bin/pg-atomic --help')
  const help = run(join(consumer, 'node_modules', '.bin', 'pg-atomic'), ['--help'], { cwd: consumer })
  if (help.status !== 0) fail(`pg-atomic --help exited with ${help.status}`)
  else console.log(`    ${help.stdout.split('\n')[0]}`)
  if (process.env.DATABASE_URL) {
    const locks = run(join(consumer, 'node_modules', '.bin', 'pg-atomic'), ['locks', '--json'], { cwd: consumer })
    if (locks.status !== 0) fail(`pg-atomic locks --json (DATABASE_URL) exited with ${locks.status}`)
  }
  const version = run(join(consumer, 'node_modules', '.bin', 'pg-atomic'), ['--version'], { cwd: consumer })
  if (version.status !== 0 || version.stdout.trim() !== cli.pkgJson.version) {
    fail(`pg-atomic --version printed ${JSON.stringify(version.stdout.trim())}, not ${cli.pkgJson.version}`)
  }

  // ---- 5. publint and attw --------------------------------------------------------------------
  for (const pkg of packages) {
    step(`publint ${pkg.name}`)
    if (run(bin('publint'), ['run', pkg.tarball, '--level', 'suggestion'], { echo: true }).status !== 0) {
      fail(`publint ${pkg.name}`)
    }
    if (pkg.pkgJson.exports === undefined && pkg.pkgJson.types === undefined) {
      console.log(`    attw: ${pkg.name} has no importable entry point (a command line only); skipped`)
      continue
    }
    step(`attw ${pkg.name}`)
    if (
      run(bin('attw'), [pkg.tarball, '--profile', 'node16', '--format', 'table-flipped', '--no-color', '--no-emoji'], {
        echo: true,
      }).status !== 0
    ) {
      fail(`attw ${pkg.name}`)
    }
  }
} catch (error) {
  fail(error instanceof Error ? error.message : String(error))
} finally {
  if (keep) console.log(`\nkept ${tmp}`)
  else rmSync(tmp, { recursive: true, force: true })
}

if (failures.length > 0) {
  console.log(`\npack check: ${failures.length} problem(s):\n${failures.map((f) => `  - ${f}`).join('\n')}`)
  process.exit(1)
}
console.log('\npack check: ok')
