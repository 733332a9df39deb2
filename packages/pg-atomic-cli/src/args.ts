/**
 * Command-line arguments: node:util `parseArgs` reads them, and every mistake becomes one line of
 * this command line's own words (exit code 2), never Node's multi-line message. Values are never
 * repeated in a message: an option's value may be a URL with a password.
 *
 * @module
 */
import { parseArgs } from 'node:util'
import type { ParseArgsConfig } from 'node:util'
import { usageError } from './errors'

/** The options a command accepts (`parseArgs` format). */
export type OptionSpecs = NonNullable<ParseArgsConfig['options']>

/** Parsed options and positional arguments. */
export interface ParsedArgs {
  readonly values: Readonly<Record<string, string | boolean | string[] | undefined>>
  readonly positionals: readonly string[]
}

/**
 * Parses `args` for `where` (`'pg-atomic locks'`): options of `specs`, positional arguments only
 * when `positionals` says how many (`'none'` or `'one'`). Throws a usage error (exit 2) naming the
 * option and the fix: unknown option, missing value, a value where none is taken, too many
 * arguments.
 */
export function parseCommandLine(
  args: readonly string[],
  specs: OptionSpecs,
  positionals: 'none' | 'one',
  where: string,
): ParsedArgs {
  const help = `Run '${where} --help' for the options.`
  // Tokens first, without strict checks: every problem is then reported in our words.
  const { tokens } = parseArgs({ args: [...args], options: specs, allowPositionals: true, strict: false, tokens: true })
  let count = 0
  for (const token of tokens) {
    if (token.kind === 'positional') {
      count++
      continue
    }
    if (token.kind !== 'option') continue
    const spec = specs[token.name]
    const name = token.rawName
    if (spec === undefined) {
      throw usageError(`unknown option ${name} for ${where}. ${help}`)
    }
    if (spec.type === 'string') {
      if (token.value === undefined) throw usageError(`option ${name} needs a value: ${name} <value>. ${help}`)
      if (!token.inlineValue && token.value.startsWith('-') && token.value.length > 1) {
        throw usageError(
          `option ${name} is followed by another option instead of its value; write ${name}=<value> when ` +
            `the value starts with a dash. ${help}`,
        )
      }
    } else if (token.value !== undefined) {
      throw usageError(`option ${name} takes no value. ${help}`)
    }
  }
  if (positionals === 'none' && count > 0) {
    throw usageError(
      `${where} takes no arguments, and ${count === 1 ? 'one was' : `${count} were`} given ` +
        `(options start with --). ${help}`,
    )
  }
  if (positionals === 'one' && count > 1) {
    throw usageError(
      `${where} takes one SQL argument and got ${count}; quote the statement: ${where} "update t set x = 1".`,
    )
  }
  try {
    const { values, positionals: found } = parseArgs({
      args: [...args],
      options: specs,
      allowPositionals: positionals === 'one',
      strict: true,
    })
    return { values: values as ParsedArgs['values'], positionals: found }
  } catch {
    // Every case parseArgs refuses is reported above; this is a safety net in the same words.
    throw usageError(`the arguments of ${where} could not be read. ${help}`)
  }
}
