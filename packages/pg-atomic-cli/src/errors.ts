/**
 * Exit codes and the one error class of the command line. Every failure ends as one line on
 * stderr, `pg-atomic: <message>`, and one of these exit codes; never a stack trace.
 *
 * @module
 */

/** The exit codes of `pg-atomic`, documented in docs/cli.md. */
export const EXIT = Object.freeze({
  /** Success (also: `idle` found sessions; `locks --watch` stopped with Ctrl-C). */
  ok: 0,
  /** An error: a statement failed, the server answered with an error, the confirmation was declined. */
  error: 1,
  /**
   * Usage error: unknown command or option, invalid value, a refused statement, `--terminate` without a terminal
   * and without `--yes`.
   */
  usage: 2,
  /**
   * Cannot connect: bad host or port, server down, timeout, authentication failed, database missing, connection
   * lost.
   */
  connection: 3,
  /** Permission denied (SQLSTATE 42501), e.g. terminating another role's session. */
  permission: 4,
})

/** An exit code of {@link EXIT}. */
export type ExitCode = (typeof EXIT)[keyof typeof EXIT]

/** A failure the command line reports as one line, with its exit code. */
export class CliError extends Error {
  override name = 'CliError'
  readonly exitCode: ExitCode
  constructor(message: string, exitCode: ExitCode, options?: { cause?: unknown }) {
    super(message, options)
    this.exitCode = exitCode
  }
}

/** A usage error (exit code 2). */
export function usageError(message: string): CliError {
  return new CliError(message, EXIT.usage)
}
