/**
 * Where the figures came from: machine, Node, PostgreSQL, the libraries' versions, the commit.
 *
 * @module
 */
import { execFileSync } from 'node:child_process'
import { existsSync, readFileSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'

export interface MachineInfo {
  readonly date: string
  readonly cpuModel: string
  readonly cores: number
  readonly memoryGiB: number
  readonly loadAverage: readonly number[]
  readonly platform: string
  readonly node: string
  readonly postgres: string
  readonly libraries: Readonly<Record<string, string>>
  /** The commit measured, with `+uncommitted` when pg-atomic's sources differ from it. */
  readonly commit: string
}

/** Where an installed package is, from this module's resolution paths (or those of package `under`). */
function packageDir(name: string, under?: string): string | undefined {
  const dirs = under === undefined ? module.paths : [path.join(under, 'node_modules'), ...module.paths]
  return dirs.map((dir) => path.join(dir, name)).find((dir) => existsSync(path.join(dir, 'package.json')))
}

function installedVersion(name: string, under?: string): string {
  const dir = packageDir(name, under)
  if (dir === undefined) return 'unknown'
  return (JSON.parse(readFileSync(path.join(dir, 'package.json'), 'utf8')) as { version: string }).version
}

/**
 * The commit measured, from git; `PG_ATOMIC_BENCH_COMMIT` names it for a run from an exported tree
 * (`git archive <commit>`), which has no repository.
 */
function commit(): string {
  const named = process.env.PG_ATOMIC_BENCH_COMMIT
  if (named !== undefined && named !== '') return named
  const root = path.join(__dirname, '..', '..', '..')
  try {
    const head = execFileSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: root, encoding: 'utf8' }).trim()
    const dirty = execFileSync('git', ['status', '--porcelain', '--', 'packages/pg-atomic/src'], {
      cwd: root,
      encoding: 'utf8',
    }).trim()
    return dirty === '' ? head : `${head}+uncommitted`
  } catch {
    return 'unknown'
  }
}

export function machineInfo(postgres: string): MachineInfo {
  const cpus = os.cpus()
  const pgPromiseDir = packageDir('pg-promise')
  return {
    date: new Date().toISOString(),
    cpuModel: cpus[0]?.model.trim() ?? 'unknown',
    cores: cpus.length,
    memoryGiB: Math.round(os.totalmem() / 2 ** 30),
    loadAverage: os.loadavg().map((l) => Math.round(l * 100) / 100),
    platform: `${os.type()} ${os.release()} ${os.arch()}`,
    node: process.version,
    postgres,
    libraries: {
      'pg-atomic': installedVersion('pg-atomic'),
      pg: installedVersion('pg'),
      kysely: installedVersion('kysely'),
      'pg-promise': installedVersion('pg-promise'),
      "pg-promise's pg": installedVersion('pg', pgPromiseDir),
      postgres: installedVersion('postgres'),
    },
    commit: commit(),
  }
}
