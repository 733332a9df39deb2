#!/usr/bin/env node
// Type-checks the TypeScript examples of the documentation: the Markdown pages and the TSDoc
// `@example` blocks of the library's sources.
//
// Every ```ts (or ```typescript) block of docs/**/*.md and packages/pg-atomic/README.md is written
// to its own module in a temporary directory and compiled with the repository's TypeScript
// (node_modules/.bin/tsc, strict settings), with each entry point of pg-atomic's "exports" map
// ('pg-atomic', 'pg-atomic/insight', ...) mapped to its source (packages/pg-atomic/src/...). Words
// after the language on the fence line change that:
//
//   ```ts no-check           skipped (e.g. examples that need packages this repo does not install)
//   ```ts legacy-decorators  compiled in a second program with "experimentalDecorators": true
//
// Every checked Markdown block must import from 'pg-atomic' and declare what it uses: it is a
// complete program a reader can copy.
//
// TSDoc examples: every ```ts block after an `@example` tag in packages/pg-atomic/src/**/*.ts (the
// leading ` * ` of each line stripped) is checked too, in a program of its own, with the same
// flags. They are excerpts shown next to a signature, so two things are supplied for them:
//   - unless the block imports from 'pg-atomic' itself, an import of every export of every entry
//     point ('pg-atomic' first, then the names only a subpath such as 'pg-atomic/insight' has);
//   - a global `db: Database`, the examples' convention for "a database from createDatabase()"
//     (a block may still declare its own `const db = createDatabase(...)`).
// Any other name a TSDoc example uses it declares itself (`declare const id: number`). An
// example of a function that no entry point exports fails: it shows what users cannot call.
//
// A failure prints the file and line of the block and of each error, and the script exits with
// status 1.
//
// Usage: node scripts/check-doc-examples.mjs [--keep]   (--keep leaves the temporary directory)
import { spawnSync } from 'node:child_process'
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readdirSync,
  realpathSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs'
import { tmpdir } from 'node:os'
import { basename, dirname, join, relative, resolve, sep } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..')
const keep = process.argv.includes('--keep')
const tsc = join(root, 'node_modules', '.bin', process.platform === 'win32' ? 'tsc.cmd' : 'tsc')
const libraryDir = join(root, 'packages', 'pg-atomic')
const libraryPkg = JSON.parse(readFileSync(join(libraryDir, 'package.json'), 'utf8'))

/** Module specifier → source file, for every entry point of the exports map ('.' → 'pg-atomic'). */
const entryPoints = Object.fromEntries(
  Object.entries(libraryPkg.exports)
    .filter(([key, target]) => key !== './package.json' && typeof target?.types === 'string')
    .map(([key, target]) => [
      key === '.' ? libraryPkg.name : `${libraryPkg.name}/${key.slice(2)}`,
      join(libraryDir, target.types.replace(/^\.\/dist\//, 'src/').replace(/\.d\.ts$/, '.ts')),
    ]),
)

/** Markdown files to scan: docs/**\/*.md and the package README. */
function markdownFiles() {
  const files = []
  const walk = (dir) => {
    for (const entryName of readdirSync(dir, { withFileTypes: true })) {
      const path = join(dir, entryName.name)
      if (entryName.isDirectory()) walk(path)
      else if (entryName.name.endsWith('.md')) files.push(path)
    }
  }
  if (existsSync(join(root, 'docs'))) walk(join(root, 'docs'))
  const readme = join(root, 'packages', 'pg-atomic', 'README.md')
  if (existsSync(readme)) files.push(readme)
  return files.sort()
}

/** The library's sources whose TSDoc may hold `@example` blocks. */
function sourceFiles() {
  const files = []
  const walk = (dir) => {
    for (const entryName of readdirSync(dir, { withFileTypes: true })) {
      const path = join(dir, entryName.name)
      if (entryName.isDirectory()) walk(path)
      else if (entryName.name.endsWith('.ts') && !entryName.name.endsWith('.d.ts')) files.push(path)
    }
  }
  walk(join(libraryDir, 'src'))
  return files.sort()
}

/**
 * The fenced blocks inside the `@example` sections of the TSDoc comments of a source file, with
 * each line's leading ` * ` removed: { lang, flags, line (1-based line of the opening fence in the
 * source file), code }.
 */
function tsdocExamples(text) {
  const blocks = []
  const lines = text.split(/\r?\n/)
  let inComment = false
  let inExample = false
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]
    if (!inComment) {
      if (/^\s*\/\*\*/.test(line) && !/\*\/\s*$/.test(line)) inComment = true
      inExample = false
      continue
    }
    if (/\*\/\s*$/.test(line)) {
      inComment = false
      continue
    }
    const content = line.replace(/^\s*\* ?/, '')
    const tag = /^@(\w+)/.exec(content)
    if (tag !== null) inExample = tag[1] === 'example'
    if (!inExample) continue
    const open = /^(`{3,}|~{3,})\s*([^`]*)$/.exec(content)
    if (open === null) continue
    const words = open[2].trim().split(/\s+/).filter(Boolean)
    const body = []
    let j = i + 1
    for (; j < lines.length; j++) {
      if (/\*\/\s*$/.test(lines[j])) break
      const bodyLine = lines[j].replace(/^\s*\* ?/, '')
      const close = /^(`{3,}|~{3,})\s*$/.exec(bodyLine)
      if (close !== null && close[1][0] === open[1][0] && close[1].length >= open[1].length) break
      body.push(bodyLine)
    }
    blocks.push({ lang: (words[0] ?? '').toLowerCase(), flags: words.slice(1), line: i + 1, code: body.join('\n') })
    i = j
  }
  return blocks
}

/**
 * The names exported by each entry point, in the order of `entryPoints`, from the TypeScript
 * compiler's own view of the sources: { specifier, names }[].
 */
async function exportedNames() {
  const { default: ts } = await import('typescript')
  const program = ts.createProgram(Object.values(entryPoints), {
    target: ts.ScriptTarget.ES2022,
    module: ts.ModuleKind.Node16,
    moduleResolution: ts.ModuleResolutionKind.Node16,
    types: ['node'],
    noEmit: true,
  })
  const checker = program.getTypeChecker()
  return Object.entries(entryPoints).map(([specifier, file]) => {
    const source = program.getSourceFile(file)
    const symbol = source === undefined ? undefined : checker.getSymbolAtLocation(source)
    const names = symbol === undefined ? [] : checker.getExportsOfModule(symbol).map((s) => s.getName())
    return { specifier, names: names.filter((name) => name !== 'default').sort() }
  })
}

/**
 * The fenced code blocks of a Markdown file: { lang, flags, line (1-based line of the opening
 * fence), code }. Handles ``` and ~~~ fences of any length and fences indented in lists.
 */
function codeBlocks(text) {
  const lines = text.split(/\r?\n/)
  const blocks = []
  for (let i = 0; i < lines.length; i++) {
    const open = /^( *)(`{3,}|~{3,})\s*([^`]*)$/.exec(lines[i])
    if (open === null) continue
    const [, indent, fence, info] = open
    const words = info.trim().split(/\s+/).filter(Boolean)
    const body = []
    let j = i + 1
    for (; j < lines.length; j++) {
      const close = /^( *)(`{3,}|~{3,})\s*$/.exec(lines[j])
      if (close !== null && close[2][0] === fence[0] && close[2].length >= fence.length) break
      const line = lines[j]
      body.push(line.startsWith(indent) ? line.slice(indent.length) : line.trimStart())
    }
    blocks.push({ lang: (words[0] ?? '').toLowerCase(), flags: words.slice(1), line: i + 1, code: body.join('\n') })
    i = j
  }
  return blocks
}

const compilerOptions = {
  target: 'ES2022',
  module: 'ESNext',
  moduleResolution: 'Bundler',
  moduleDetection: 'force',
  lib: ['ES2022'],
  types: ['node'],
  typeRoots: [join(root, 'node_modules', '@types')],
  strict: true,
  noUncheckedIndexedAccess: true,
  noImplicitOverride: true,
  noImplicitReturns: true,
  noFallthroughCasesInSwitch: true,
  isolatedModules: true,
  esModuleInterop: true,
  skipLibCheck: true,
  forceConsistentCasingInFileNames: true,
  noEmit: true,
  paths: Object.fromEntries(Object.entries(entryPoints).map(([specifier, file]) => [specifier, [file]])),
}

const tmp = realpathSync(mkdtempSync(join(tmpdir(), 'pg-atomic-doc-examples-')))
let failedBlocks = 0
let checked = 0
let skipped = 0
let otherErrors = 0

try {
  // Examples resolve 'pg', '@types/node', ... from the repository's node_modules.
  symlinkSync(join(root, 'node_modules'), join(tmp, 'node_modules'), 'junction')

  /** group name → { options, files: Map<file name, block> } */
  const groups = new Map([
    ['standard', { options: {}, files: new Map() }],
    ['legacy-decorators', { options: { experimentalDecorators: true }, files: new Map() }],
    ['tsdoc', { options: {}, files: new Map(), prelude: true }],
    ['tsdoc-legacy-decorators', { options: { experimentalDecorators: true }, files: new Map(), prelude: true }],
  ])
  const problems = new Map() // block → list of messages

  for (const md of markdownFiles()) {
    const rel = relative(root, md).split(sep).join('/')
    for (const block of codeBlocks(readFileSync(md, 'utf8'))) {
      if (block.lang !== 'ts' && block.lang !== 'typescript') continue
      const where = { ...block, file: rel }
      if (block.flags.includes('no-check')) {
        skipped++
        continue
      }
      checked++
      if (!/from\s+['"]pg-atomic['"]/.test(block.code)) {
        problems.set(where, [
          `${rel}:${block.line}: the example does not import from 'pg-atomic' ` +
            '(mark it ```ts no-check if it must not be checked)',
        ])
      }
      const group = groups.get(block.flags.includes('legacy-decorators') ? 'legacy-decorators' : 'standard')
      const name = `${rel.replace(/[^A-Za-z0-9]+/g, '_')}_L${block.line}.ts`
      group.files.set(name, where)
    }
  }

  // TSDoc @example blocks of the library's sources.
  const entryExports = await exportedNames()
  const imported = new Set()
  const autoImports = entryExports
    .map(({ specifier, names }) => {
      const fresh = names.filter((name) => !imported.has(name))
      for (const name of fresh) imported.add(name)
      return fresh.length === 0 ? '' : `import { ${fresh.join(', ')} } from '${specifier}'\n`
    })
    .join('')
  for (const file of sourceFiles()) {
    const rel = relative(root, file).split(sep).join('/')
    for (const block of tsdocExamples(readFileSync(file, 'utf8'))) {
      if (block.lang !== 'ts' && block.lang !== 'typescript') continue
      if (block.flags.includes('no-check')) {
        skipped++
        continue
      }
      checked++
      const ownImports = /from\s+['"]pg-atomic(\/[^'"]*)?['"]/.test(block.code)
      const prefix = ownImports ? '' : autoImports
      const where = { ...block, file: rel, code: prefix + block.code, offset: prefix.split('\n').length - 1 }
      const group = groups.get(block.flags.includes('legacy-decorators') ? 'tsdoc-legacy-decorators' : 'tsdoc')
      group.files.set(`${rel.replace(/[^A-Za-z0-9]+/g, '_')}_L${block.line}.ts`, where)
    }
  }

  for (const [groupName, group] of groups) {
    if (group.files.size === 0) continue
    const dir = join(tmp, groupName)
    mkdirSync(dir)
    for (const [name, block] of group.files) writeFileSync(join(dir, name), block.code + '\n')
    if (group.prelude) {
      // Not a block: errors in it are reported as "outside the examples".
      writeFileSync(
        join(dir, 'prelude.d.ts'),
        "import type { Database } from 'pg-atomic'\n\n" +
          'declare global {\n  /** A database from createDatabase(). */\n  const db: Database\n}\n',
      )
    }
    // A syntax error in one block stops tsc before it checks the types of any block: check the
    // program again without the blocks that have one, so that every other block is still checked.
    const syntaxBroken = new Set()
    for (let pass = 1; pass <= 2; pass++) {
      const names = [...group.files.keys()].filter((name) => !syntaxBroken.has(name))
      if (pass === 2 && (syntaxBroken.size === 0 || names.length === 0)) break
      const tsconfig = join(dir, 'tsconfig.json')
      writeFileSync(
        tsconfig,
        JSON.stringify(
          {
            compilerOptions: { ...compilerOptions, ...group.options },
            files: [...(group.prelude ? ['prelude.d.ts'] : []), ...names],
          },
          null,
          2,
        ),
      )
      const run = spawnSync(tsc, ['-p', tsconfig, '--pretty', 'false'], {
        cwd: dir,
        encoding: 'utf8',
        shell: process.platform === 'win32',
      })
      if (run.error) throw run.error
      const output = `${run.stdout}${run.stderr}`
      // "file(line,col): error TSxxxx: message", followed by indented continuation lines.
      let current // the message list the next continuation line belongs to
      for (const line of output.split(/\r?\n/)) {
        const m = /^(.*?)\((\d+),(\d+)\): error (TS\d+): (.*)$/.exec(line)
        if (m !== null) {
          const [, file, l, c, code, message] = m
          const abs = resolve(dir, file)
          const block = dirname(abs) === dir ? group.files.get(basename(abs)) : undefined
          if (block !== undefined) {
            if (/^TS1\d{3}$/.test(code)) syntaxBroken.add(basename(abs))
            if (!problems.has(block)) problems.set(block, [])
            current = problems.get(block)
            current.push(`${block.file}:${block.line + Number(l) - (block.offset ?? 0)}:${c}: ${code}: ${message}`)
          } else {
            // An error in the library source (or a declaration file): not attributable to a block.
            otherErrors++
            current = undefined
            console.log(
              `error outside the examples (${groupName}): ${relative(root, abs)}(${l},${c}): ${code}: ${message}`,
            )
          }
        } else if (line.startsWith(' ') && line.trim() !== '') {
          if (current !== undefined) current[current.length - 1] += `\n      ${line.trim()}`
          else console.log(`  ${line.trim()}`)
        } else if (line.trim() !== '' && !/^Found \d+ error/.test(line)) {
          otherErrors++
          console.log(`tsc (${groupName}): ${line}`)
        }
      }
      if (run.status !== 0 && problems.size === 0 && otherErrors === 0 && syntaxBroken.size === 0) {
        otherErrors++
        console.log(`tsc (${groupName}) exited with status ${run.status}:\n${output}`)
      }
    }
  }

  for (const [block, messages] of [...problems].sort(
    (a, b) => a[0].file.localeCompare(b[0].file) || a[0].line - b[0].line,
  )) {
    failedBlocks++
    console.log(`\nFAIL ${block.file}:${block.line} (\`\`\`${[block.lang, ...block.flags].join(' ')} block)`)
    for (const message of messages) console.log(`  ${message}`)
  }
} finally {
  if (keep) console.log(`examples kept in ${tmp}`)
  else rmSync(tmp, { recursive: true, force: true })
}

console.log(
  `\ndoc examples: ${checked} checked, ${failedBlocks} failed, ${skipped} skipped (no-check)` +
    (otherErrors > 0 ? `, ${otherErrors} other error(s)` : ''),
)
process.exit(failedBlocks > 0 || otherErrors > 0 ? 1 : 0)
