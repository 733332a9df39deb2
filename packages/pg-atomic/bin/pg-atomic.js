#!/usr/bin/env node
// The `pg-atomic` command line (docs/cli.md), so that `npx pg-atomic locks` works from an empty
// folder: that name resolves to this package, the library.
//
// The command line's source lives in packages/pg-atomic-cli. When this package is packed, its
// prepack step (scripts/prepack.mjs) copies the built pg-atomic-cli package into dist/cli/ of this
// one; it runs from there, and its `require('pg-atomic')` finds this very package. Inside the
// repository (nothing packed) the workspace package pg-atomic-cli is run instead.
'use strict'

const { existsSync, readFileSync } = require('node:fs')
const { dirname, join } = require('node:path')

function cliPackageDir() {
  const bundled = join(__dirname, '..', 'dist', 'cli')
  if (existsSync(join(bundled, 'package.json'))) return bundled
  try {
    return dirname(require.resolve('pg-atomic-cli/package.json'))
  } catch {
    process.stderr.write(
      'pg-atomic: the command line is not part of this installation; install it with `npm install pg-atomic-cli`.\n',
    )
    process.exit(1)
  }
}

const dir = cliPackageDir()
const { bin } = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8'))
require(join(dir, typeof bin === 'string' ? bin : bin['pg-atomic']))
