#!/usr/bin/env node
// Type-checks the TypeScript examples of the documentation.
//
// Every ```ts (or ```typescript) block of docs/**/*.md and packages/pg-atomic/README.md is written
// to its own module in a temporary directory and compiled with the repository's TypeScript
// (node_modules/.bin/tsc, strict settings), with 'pg-atomic' mapped to
// packages/pg-atomic/src/index.ts. Words after the language on the fence line change that:
//
//   ```ts no-check           skipped (e.g. examples that need packages this repo does not install)
//   ```ts legacy-decorators  compiled in a second program with "experimentalDecorators": true
//
// Every checked block must import from 'pg-atomic' and declare what it uses. A failure prints the
// Markdown file and line of the block and of each error, and the script exits with status 1.
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
const entry = join(root, 'packages', 'pg-atomic', 'src', 'index.ts')

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
  paths: {
    'pg-atomic': [entry],
    'pg-atomic/insight': [join(root, 'packages', 'pg-atomic', 'src', 'insight', 'index.ts')],
  },
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

  for (const [groupName, group] of groups) {
    if (group.files.size === 0) continue
    const dir = join(tmp, groupName)
    mkdirSync(dir)
    for (const [name, block] of group.files) writeFileSync(join(dir, name), block.code + '\n')
    const tsconfig = join(dir, 'tsconfig.json')
    writeFileSync(
      tsconfig,
      JSON.stringify(
        { compilerOptions: { ...compilerOptions, ...group.options }, files: [...group.files.keys()] },
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
          if (!problems.has(block)) problems.set(block, [])
          current = problems.get(block)
          current.push(`${block.file}:${block.line + Number(l)}:${c}: ${code}: ${message}`)
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
    if (run.status !== 0 && problems.size === 0 && otherErrors === 0) {
      otherErrors++
      console.log(`tsc (${groupName}) exited with status ${run.status}:\n${output}`)
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
