#!/usr/bin/env node
// No source line over 120 characters (issue 7 §2; Prettier's printWidth, which Prettier cannot
// enforce for comments, strings and template literals).
//
// Checks the TypeScript and JavaScript files tracked by git (`git ls-files`, so dist/ and
// node_modules/ never count): packages/**, scripts/**, .ci/**, and the root config files. A line
// whose only way to be shorter would be to break a URL is allowed. Prints each offending line as
// file:line (length), then the count per package, and exits with status 1 if there is any.
//
// Usage: node scripts/check-line-length.mjs [--summary]   (--summary: the counts only)
import { execFileSync } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'

const MAX = 120
const root = resolve(dirname(fileURLToPath(import.meta.url)), '..')
const summaryOnly = process.argv.includes('--summary')

const files = execFileSync('git', ['ls-files', '-z', '--cached', '--others', '--exclude-standard'], {
  cwd: root,
  encoding: 'utf8',
})
  .split('\0')
  .filter((file) => /\.(ts|mts|cts|js|mjs|cjs)$/.test(file) && !/(^|\/)(dist|node_modules)\//.test(file))

/** packages/<name> for files in a package, else the top folder (or "(root)"). */
const groupOf = (file) => {
  const parts = file.split('/')
  if (parts[0] === 'packages' && parts.length > 2) return `packages/${parts[1]}`
  return parts.length > 1 ? parts[0] : '(root)'
}

const counts = new Map()
let total = 0
for (const file of files.sort()) {
  let text
  try {
    text = readFileSync(join(root, file), 'utf8')
  } catch {
    continue // deleted in the working tree
  }
  text.split(/\r?\n/).forEach((line, index) => {
    if (line.length <= MAX) return
    if (/https?:\/\/\S{40,}/.test(line) && line.replace(/https?:\/\/\S+/g, '').length <= MAX) return
    total++
    counts.set(groupOf(file), (counts.get(groupOf(file)) ?? 0) + 1)
    if (!summaryOnly) console.log(`${file}:${index + 1} (${line.length})`)
  })
}

if (total === 0) {
  console.log(`line length: no line over ${MAX} characters in ${files.length} files`)
  process.exit(0)
}
console.log(`\nlines over ${MAX} characters:`)
for (const [group, count] of [...counts].sort()) console.log(`  ${group}: ${count}`)
console.log(`  total: ${total}`)
process.exit(1)
