/**
 * The help texts of `pg-atomic` and of each command. The defaults shown are the library's own
 * (`INSIGHT_DEFAULTS`), never a copy.
 *
 * @module
 */
import { INSIGHT_DEFAULTS } from 'pg-atomic/insight'

/** A default duration as it is written on the command line: `1s`, `500ms`. */
function written(ms: number): string {
  return ms % 1000 === 0 ? `${ms / 1000}s` : `${ms}ms`
}

const QUERY_LENGTH = INSIGHT_DEFAULTS.queryLength
const LOCK_TIMEOUT = written(INSIGHT_DEFAULTS.lockTimeout)
const STATEMENT_TIMEOUT = written(INSIGHT_DEFAULTS.statementTimeout)
const EXIT_WAIT = written(INSIGHT_DEFAULTS.exitTimeoutMs)

/** The commands, in the order `--help` lists them. */
export const COMMANDS = ['locks', 'explain-locks', 'idle'] as const
/** One of {@link COMMANDS}. */
export type Command = (typeof COMMANDS)[number]

const CONNECTION = `Connection:
  --url <url>               postgres://user:password@host:port/database, any form libpq
                            reads: postgres://user@/db?host=/var/run/postgresql (socket),
                            postgres://h1:5432,h2:5432/db (tried in order), ...
                            default: $DATABASE_URL, else the PG* variables
                            (PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE, ...);
                            the user defaults to PGUSER, else the operating-system user
  --connect-timeout <dur>   give up connecting after this long (default 5s)`

const FOOTER = `Durations: 500ms, 30s, 5m, 1h.
Exit codes: 0 ok, 1 error, 2 usage error, 3 cannot connect, 4 permission denied.
Colour only on a terminal, never when NO_COLOR is set.`

/** `pg-atomic --help`. */
export const PROGRAM_HELP = `pg-atomic: see who holds and who waits for locks in PostgreSQL

Usage:
  pg-atomic <command> [options]

Commands:
  locks           who is waiting for whom (a tree), and sessions idle in transaction
  explain-locks   run a statement in a transaction that is rolled back, list the locks it took
  idle            list sessions idle in transaction; --terminate ends them

Run 'pg-atomic <command> --help' for the options of a command.

${CONNECTION}

Other options:
  -h, --help                show help
  -V, --version             print the version

${FOOTER}
`

/** `pg-atomic <command> --help`. */
export const COMMAND_HELP: Readonly<Record<Command, string>> = Object.freeze({
  locks: `Usage: pg-atomic locks [--watch [--interval 2s]] [--json] [--query-length ${QUERY_LENGTH}]

Shows the sessions of the database that wait for a lock, as a tree under the session
that blocks them (roots are sessions that block others and wait for nobody), then the
sessions idle in transaction. Read-only: it changes nothing.

Options:
  --watch                   refresh until Ctrl-C (clears the screen on a terminal)
  --interval <dur>          time between refreshes with --watch (default 2s, at least 100ms)
  --json                    print JSON (with --watch: one document per line per refresh)
  --query-length <n>        longest query text shown, in characters (default ${QUERY_LENGTH})

${CONNECTION}

${FOOTER}
`,
  'explain-locks': `Usage: pg-atomic explain-locks "<sql>" [--param <value> ...] [--json]

Runs the statement in a transaction that is ALWAYS rolled back, and lists the locks it took:
tables and indexes with their mode and what they block, advisory locks, and row locks (with the
pgrowlocks extension; otherwise a note says they are not listed).

It EXECUTES the statement: what escapes a transaction is not undone (sequence values,
functions with outside effects). Statements that cannot run in a transaction (VACUUM,
CREATE INDEX CONCURRENTLY, CREATE DATABASE, ...) or that a rollback does not undo
(CHECKPOINT, COPY ... PROGRAM) and transaction control (BEGIN, COMMIT, ...) are refused
before anything is sent. While the statement waits for a lock, statements queued behind
it wait too: --lock-timeout keeps that short.

Options:
  --param <value>           a value for $1, $2, ... (repeat in order; sent as text)
  --lock-timeout <dur>      how long the statement may wait for a lock (default ${LOCK_TIMEOUT}; 0 = no limit)
  --statement-timeout <dur> how long it may run (default ${STATEMENT_TIMEOUT}; 0 = no limit)
  --no-row-locks            do not list row locks with pgrowlocks (it reads the whole table)
  --json                    print JSON

Put the SQL after -- when it starts with a dash: pg-atomic explain-locks -- "-- note
select 1"

${CONNECTION}

${FOOTER}
`,
  idle: `Usage: pg-atomic idle [--older-than 5m] [--terminate [--yes]] [--json] [--query-length ${QUERY_LENGTH}]

Lists the sessions of the database that are idle in a transaction (a transaction began and
nothing happened since), with how long they have been idle, their transaction's age, their
last query and the locks they hold. Exits 0 whether or not it found any.

With --terminate, ends them with pg_terminate_backend() after asking for confirmation
(y/N on the terminal), or at once with --yes. Without a terminal and without --yes it
refuses (exit code 2). A session is only ended if it is still idle in the same
transaction; it is reported as skipped otherwise. From PostgreSQL 14 each session gets
${EXIT_WAIT} to exit, or it is reported as failed.

Options:
  --older-than <dur>        only sessions idle for at least this long (default 0s: all)
  --terminate               end the sessions listed (asks first)
  --yes                     do not ask (needed when stdin is not a terminal)
  --json                    print JSON
  --query-length <n>        longest query text shown, in characters (default ${QUERY_LENGTH})

${CONNECTION}

${FOOTER}
`,
})
