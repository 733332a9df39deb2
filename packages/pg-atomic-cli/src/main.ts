/**
 * Dispatch of `pg-atomic <command>`: read the arguments, call the command, map failures to one
 * line and an exit code.
 *
 * @module
 */
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { assertExplainable } from 'pg-atomic/insight'
import { parseCommandLine } from './args'
import type { OptionSpecs } from './args'
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

const GLOBAL_OPTIONS = {
  url: { type: 'string' },
  'connect-timeout': { type: 'string' },
  help: { type: 'boolean', short: 'h' },
  version: { type: 'boolean', short: 'V' },
} satisfies OptionSpecs

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
} satisfies Record<Command, OptionSpecs>

/** Global options that take a value: their value is not the command. */
const VALUE_OPTIONS = new Set(['--url', '--connect-timeout'])

/** How long to wait for a connection unless --connect-timeout says otherwise, in ms. */
const DEFAULT_CONNECT_TIMEOUT_MS = 5000
/** Time between refreshes of `locks --watch` unless --interval says otherwise, in ms. */
const DEFAULT_INTERVAL_MS = 2000

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

/** A whole number from 1 to 1000000, or `undefined` when the option is absent. */
function wholeNumber(text: string | undefined, option: string): number | undefined {
  if (text === undefined) return undefined
  if (!/^\d+$/.test(text.trim()) || Number(text) < 1 || Number(text) > 1_000_000)
    throw usageError(`invalid value for ${option}: '${text}' must be a whole number from 1 to 1000000.`)
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
      const { values } = parseCommandLine(rest, GLOBAL_OPTIONS, 'none', 'pg-atomic')
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
      throw usageError(
        `unknown command '${command}'; the commands are ${COMMANDS.join(', ')}. Run 'pg-atomic --help' for help.`,
      )
    }
    const { values, positionals } = parseCommandLine(
      rest,
      { ...GLOBAL_OPTIONS, ...COMMAND_OPTIONS[command] },
      command === 'explain-locks' ? 'one' : 'none',
      `pg-atomic ${command}`,
    )
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
    const duration = (name: string): number | undefined => {
      const text = get(name)
      return text === undefined ? undefined : parseDuration(text, `--${name}`)
    }
    // Everything the command line can check is checked before the connection settings are read.
    let runCommand: (ctx: Context) => Promise<ExitCode>
    switch (command) {
      case 'locks': {
        const interval = get('interval')
        if (interval !== undefined && !flag('watch'))
          throw usageError("--interval only makes sense with --watch. Run 'pg-atomic locks --help' for the options.")
        const intervalMs = duration('interval') ?? DEFAULT_INTERVAL_MS
        if (intervalMs < 100)
          throw usageError(`invalid value for --interval: '${interval ?? ''}' is shorter than 100ms.`)
        const queryLength = wholeNumber(get('query-length'), '--query-length')
        runCommand = (ctx) => locksCommand(ctx, { watch: flag('watch'), intervalMs, queryLength })
        break
      }
      case 'explain-locks': {
        const sql = positionals[0]
        if (sql === undefined) {
          throw usageError(
            `the SQL statement to explain is missing: pg-atomic explain-locks "<sql>". Run 'pg-atomic explain-locks ` +
              `--help' for help.`,
          )
        }
        // A statement explainLocks() would refuse is refused here, before anything connects (exit 2).
        assertExplainable(sql)
        const options = {
          sql,
          params: values['param'] as string[] | undefined,
          lockTimeoutMs: duration('lock-timeout'),
          statementTimeoutMs: duration('statement-timeout'),
          rowLocks: !flag('no-row-locks'),
        }
        runCommand = (ctx) => explainCommand(ctx, options)
        break
      }
      case 'idle': {
        if (flag('yes') && !flag('terminate'))
          throw usageError("--yes only makes sense with --terminate. Run 'pg-atomic idle --help' for the options.")
        const options = {
          olderThanMs: duration('older-than'),
          terminate: flag('terminate'),
          yes: flag('yes'),
          queryLength: wholeNumber(get('query-length'), '--query-length'),
        }
        runCommand = (ctx) => idleCommand(ctx, options)
        break
      }
    }
    target = resolveTarget(get('url'), process.env, duration('connect-timeout') ?? DEFAULT_CONNECT_TIMEOUT_MS)
    return await runCommand({
      target,
      style: styleFor(process.stdout, process.env),
      json: flag('json'),
      width: process.stdout.isTTY === true ? process.stdout.columns : undefined,
      out: (text) => process.stdout.write(`${text}\n`),
      err: (text) => process.stderr.write(`${text}\n`),
    })
  } catch (error) {
    const failure =
      error instanceof CliError
        ? error
        : explainFailure(
            error,
            target === undefined ? 'PostgreSQL' : `PostgreSQL at ${target.display} (from ${target.source})`,
            target,
          )
    process.stderr.write(`pg-atomic: ${failure.message}\n`)
    return failure.exitCode
  }
}
