/**
 * Argument parsing (node:util `parseArgs`) and dispatch of `pg-atomic <command>`.
 *
 * @module
 */
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { parseArgs } from 'node:util'
import type { ParseArgsConfig } from 'node:util'
import { explainCommand, idleCommand, locksCommand } from './commands'
import type { Context } from './commands'
import { explainFailure, resolveTarget } from './connection'
import type { ConnectionTarget } from './connection'
import { parseDuration } from './duration'
import { CliError, EXIT, usageError } from './errors'
import type { ExitCode } from './errors'
import { COMMANDS, COMMAND_HELP, PROGRAM_HELP } from './help'
import type { Command } from './help'
import { styleFor } from './render'

type Options = NonNullable<ParseArgsConfig['options']>

const GLOBAL_OPTIONS = {
  url: { type: 'string' },
  'connect-timeout': { type: 'string' },
  help: { type: 'boolean', short: 'h' },
  version: { type: 'boolean', short: 'V' },
} satisfies Options

const COMMAND_OPTIONS = {
  locks: {
    watch: { type: 'boolean' },
    interval: { type: 'string' },
    json: { type: 'boolean' },
    'query-length': { type: 'string' },
  },
  'explain-locks': {
    param: { type: 'string', multiple: true },
    'lock-timeout': { type: 'string' },
    'statement-timeout': { type: 'string' },
    'no-row-locks': { type: 'boolean' },
    json: { type: 'boolean' },
  },
  idle: {
    'older-than': { type: 'string' },
    terminate: { type: 'boolean' },
    yes: { type: 'boolean' },
    json: { type: 'boolean' },
    'query-length': { type: 'string' },
  },
} satisfies Record<Command, Options>

/** Global options that take a value: their value is not the command. */
const VALUE_OPTIONS = new Set(['--url', '--connect-timeout'])

/** The version of this package. */
export function version(): string {
  const pkg = JSON.parse(readFileSync(join(__dirname, '..', 'package.json'), 'utf8')) as { version: string }
  return pkg.version
}

/** Finds the command word: the first argument that is neither an option nor a global option's value. */
function findCommand(argv: readonly string[]): { command: string | undefined; rest: string[] } {
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i] as string
    if (arg === '--') break
    if (arg.startsWith('-')) {
      if (VALUE_OPTIONS.has(arg)) i++
      continue
    }
    return { command: arg, rest: [...argv.slice(0, i), ...argv.slice(i + 1)] }
  }
  return { command: undefined, rest: [...argv] }
}

function parse(args: string[], options: Options, allowPositionals: boolean, where: string): ReturnType<typeof parseArgs> {
  try {
    return parseArgs({ args, options, allowPositionals, strict: true })
  } catch (error) {
    const message = error instanceof Error ? error.message.replace(/\s+To specify a positional argument.*$/s, '') : String(error)
    throw usageError(`${message.replace(/\.$/, '')}. Run '${where} --help' for the options.`)
  }
}

function wholeNumber(text: string | undefined, option: string, fallback: number): number {
  if (text === undefined) return fallback
  if (!/^\d+$/.test(text.trim()) || Number(text) < 1 || Number(text) > 1_000_000) throw usageError(`invalid value for ${option}: '${text}' must be a whole number from 1 to 1000000.`)
  return Number(text)
}

function isCommand(word: string): word is Command {
  return (COMMANDS as readonly string[]).includes(word)
}

/**
 * Runs `pg-atomic` with `argv` (without `node` and the script) and returns the exit code.
 * Output goes to stdout, messages and errors to stderr (`pg-atomic: ...`, one line).
 */
export async function run(argv: readonly string[]): Promise<ExitCode> {
  let target: ConnectionTarget | undefined
  try {
    const { command, rest } = findCommand(argv)
    if (command === 'help') {
      const topic = rest.find((a) => !a.startsWith('-'))
      process.stdout.write(topic !== undefined && isCommand(topic) ? COMMAND_HELP[topic] : PROGRAM_HELP)
      return EXIT.ok
    }
    if (command === undefined) {
      const { values } = parse(rest, GLOBAL_OPTIONS, false, 'pg-atomic')
      if (values['version'] === true) {
        process.stdout.write(`${version()}\n`)
        return EXIT.ok
      }
      if (values['help'] === true) {
        process.stdout.write(PROGRAM_HELP)
        return EXIT.ok
      }
      throw usageError(`a command is missing: ${COMMANDS.join(', ')}. Run 'pg-atomic --help' for help.`)
    }
    if (!isCommand(command)) {
      throw usageError(`unknown command '${command}'; the commands are ${COMMANDS.join(', ')}. Run 'pg-atomic --help' for help.`)
    }
    const { values, positionals } = parse(rest, { ...GLOBAL_OPTIONS, ...COMMAND_OPTIONS[command] }, command === 'explain-locks', `pg-atomic ${command}`)
    const get = (name: string): string | undefined => values[name] as string | undefined
    const flag = (name: string): boolean => values[name] === true
    if (flag('help')) {
      process.stdout.write(COMMAND_HELP[command])
      return EXIT.ok
    }
    if (flag('version')) {
      process.stdout.write(`${version()}\n`)
      return EXIT.ok
    }
    const connectTimeout = get('connect-timeout')
    target = resolveTarget(get('url'), process.env, connectTimeout === undefined ? 5000 : parseDuration(connectTimeout, '--connect-timeout'))
    const ctx: Context = {
      target,
      style: styleFor(process.stdout, process.env),
      json: flag('json'),
      width: process.stdout.isTTY === true ? process.stdout.columns : undefined,
      out: (text) => process.stdout.write(`${text}\n`),
      err: (text) => process.stderr.write(`${text}\n`),
    }
    switch (command) {
      case 'locks': {
        const interval = get('interval')
        if (interval !== undefined && !flag('watch')) throw usageError("--interval only makes sense with --watch. Run 'pg-atomic locks --help' for the options.")
        const intervalMs = interval === undefined ? 2000 : parseDuration(interval, '--interval')
        if (intervalMs < 100) throw usageError(`invalid value for --interval: '${interval ?? ''}' is shorter than 100ms.`)
        return await locksCommand(ctx, { watch: flag('watch'), intervalMs, queryLength: wholeNumber(get('query-length'), '--query-length', 200) })
      }
      case 'explain-locks': {
        if (positionals.length !== 1) {
          throw usageError(
            positionals.length === 0
              ? `the SQL statement to explain is missing: pg-atomic explain-locks "<sql>". Run 'pg-atomic explain-locks --help' for help.`
              : `explain-locks takes one SQL argument and got ${positionals.length}; quote the statement: pg-atomic explain-locks "update t set x = 1".`,
          )
        }
        const lockTimeout = get('lock-timeout')
        const statementTimeout = get('statement-timeout')
        return await explainCommand(ctx, {
          sql: positionals[0] as string,
          params: values['param'] as string[] | undefined,
          lockTimeoutMs: lockTimeout === undefined ? 1000 : parseDuration(lockTimeout, '--lock-timeout'),
          statementTimeoutMs: statementTimeout === undefined ? 30_000 : parseDuration(statementTimeout, '--statement-timeout'),
          rowLocks: !flag('no-row-locks'),
        })
      }
      case 'idle': {
        if (flag('yes') && !flag('terminate')) throw usageError("--yes only makes sense with --terminate. Run 'pg-atomic idle --help' for the options.")
        const olderThan = get('older-than')
        return await idleCommand(ctx, {
          olderThanMs: olderThan === undefined ? 0 : parseDuration(olderThan, '--older-than'),
          terminate: flag('terminate'),
          yes: flag('yes'),
          queryLength: wholeNumber(get('query-length'), '--query-length', 200),
        })
      }
    }
  } catch (error) {
    const failure = error instanceof CliError ? error : explainFailure(error, target)
    process.stderr.write(`pg-atomic: ${failure.message}\n`)
    return failure.exitCode
  }
}
