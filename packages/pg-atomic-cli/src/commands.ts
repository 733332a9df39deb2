/**
 * The three commands: `locks`, `explain-locks`, `idle`. Each reads through pg-atomic's lock
 * insight functions and prints text for people or JSON for programs.
 *
 * @module
 */
import { createInterface } from 'node:readline'
import { isLockNotAvailable } from 'pg-atomic'
import { explainLocks, idleInTransaction, lockWaits, terminateSessions } from 'pg-atomic/insight'
import type {
  ExplainedLock,
  IdleSession,
  LockInfo,
  LockReport,
  LockWaitNode,
  SessionTermination,
} from 'pg-atomic/insight'
import { connect, explainFailure } from './connection'
import type { ConnectionTarget, Session } from './connection'
import { formatDuration } from './duration'
import { CliError, EXIT, usageError } from './errors'
import type { ExitCode } from './errors'
import { oneLine, table, toJson } from './render'
import type { Cell, Style } from './render'

/** What every command gets. */
export interface Context {
  readonly target: ConnectionTarget
  readonly style: Style
  readonly json: boolean
  /** The terminal's width when stdout is a terminal (text is cut to fit), else `undefined`. */
  readonly width: number | undefined
  out(text: string): void
  err(text: string): void
}

function plural(n: number, one: string, many = `${one}s`): string {
  return `${n} ${n === 1 ? one : many}`
}

// ---- locks ----------------------------------------------------------------------------------------

/** Options of `pg-atomic locks`. */
export interface LocksOptions {
  readonly watch: boolean
  readonly intervalMs: number
  /** `undefined`: the library's default. */
  readonly queryLength: number | undefined
}

function lockLabel(lock: LockInfo | null): string {
  return lock === null ? '' : `${lock.mode} on ${lock.target}`
}

function countNodes(nodes: readonly LockWaitNode[], seen = new Set<number>()): Set<number> {
  for (const n of nodes) {
    if (n.blockedBy.length > 0) seen.add(n.pid)
    countNodes(n.blocking, seen)
  }
  return seen
}

/** The status line under a `--watch` refresh on a terminal. */
function refreshLine(intervalMs: number): string {
  return `every ${formatDuration(intervalMs)}, ${new Date().toLocaleTimeString()}; Ctrl-C to stop`
}

/** The tree of lock waits as aligned rows; the PID column carries the tree drawing. */
export function renderWaits(roots: readonly LockWaitNode[], style: Style, width: number | undefined): string[] {
  const rows: Cell[][] = []
  const walk = (node: LockWaitNode, prefix: string, isLast: boolean, depth: number): void => {
    const branch = depth === 0 ? '' : `${prefix}${isLast ? '└─ ' : '├─ '}`
    const pid = node.kind === 'prepared transaction' ? 'prepared xact' : String(node.pid)
    const waiting = node.waitKind === 'safe snapshot' ? 'a safe snapshot (DEFERRABLE)' : lockLabel(node.waitingFor)
    rows.push([
      { text: branch + pid, color: depth === 0 ? (t) => style.red(style.bold(t)) : style.cyan },
      { text: node.applicationName ?? '' },
      {
        text: node.state ?? '',
        color: node.state?.startsWith('idle in transaction') === true ? style.yellow : undefined,
      },
      { text: formatDuration(node.transactionAgeMs) },
      { text: waiting + (node.cycle ? ' (wait cycle: deadlock not yet detected)' : ''), color: style.yellow },
      { text: node.waitMs === null ? '' : formatDuration(node.waitMs) },
      { text: oneLine(node.query) },
    ])
    if (node.cycle) return
    const childPrefix = depth === 0 ? '' : `${prefix}${isLast ? '   ' : '│  '}`
    node.blocking.forEach((child, i) => walk(child, childPrefix, i === node.blocking.length - 1, depth + 1))
  }
  for (const root of roots) walk(root, '', true, 0)
  return table(['PID', 'APPLICATION', 'STATE', 'XACT AGE', 'WAITING FOR', 'WAITED', 'QUERY'], rows, style, width)
}

function lockSummary(locks: readonly LockInfo[]): string {
  const shown = locks.filter(
    (l) => l.type !== 'virtualxid' && l.type !== 'transactionid' && l.relation?.kind !== 'index',
  )
  if (shown.length === 0)
    return locks.length === 0 ? 'none' : `${plural(locks.length, 'lock')} (no table or advisory lock)`
  const first = shown.slice(0, 2).map((l) => `${l.mode} ${l.target}`)
  const more = locks.length - first.length
  return first.join(', ') + (more > 0 ? ` (+${more} more)` : '')
}

/** Sessions idle in transaction as aligned rows. */
export function renderIdle(sessions: readonly IdleSession[], style: Style, width: number | undefined): string[] {
  return table(
    ['PID', 'APPLICATION', 'USER', 'STATE', 'IDLE', 'XACT AGE', 'LOCKS HELD', 'LAST QUERY'],
    sessions.map((s) => [
      { text: String(s.pid), color: style.cyan },
      s.applicationName ?? '',
      s.user ?? '',
      { text: s.state, color: style.yellow },
      { text: formatDuration(s.idleMs), color: style.bold },
      formatDuration(s.transactionAgeMs),
      lockSummary(s.locks),
      oneLine(s.query),
    ]),
    style,
    width,
  )
}

async function locksOnce(session: Session, ctx: Context, options: LocksOptions): Promise<string> {
  const waits = await lockWaits({ using: session.db, queryLength: options.queryLength })
  const idle = await idleInTransaction({ using: session.db, queryLength: options.queryLength })
  if (ctx.json) {
    return toJson({ database: session.database, sampledAt: new Date(), waits, idleInTransaction: idle }, !options.watch)
  }
  const { style } = ctx
  const lines: string[] = []
  const waiting = countNodes(waits).size
  lines.push(
    style.bold(
      `Lock waits in database ${session.database}: ${waiting === 0 ? 'none' : `${plural(waiting, 'session')} waiting`}`,
    ),
  )
  if (waits.length > 0) lines.push('', ...renderWaits(waits, style, ctx.width))
  lines.push('', style.bold(`Idle in transaction: ${idle.length === 0 ? 'none' : plural(idle.length, 'session')}`))
  if (idle.length > 0) lines.push('', ...renderIdle(idle, style, ctx.width))
  return lines.join('\n')
}

/** `pg-atomic locks`. */
export async function locksCommand(ctx: Context, options: LocksOptions): Promise<ExitCode> {
  const session = await connect(ctx.target)
  try {
    if (!options.watch) {
      ctx.out(await locksOnce(session, ctx, options))
      return EXIT.ok
    }
    let stopped = false
    let wake: (() => void) | undefined
    const stop = (): void => {
      stopped = true
      wake?.()
    }
    process.on('SIGINT', stop)
    process.on('SIGTERM', stop)
    try {
      while (!stopped) {
        const text = await locksOnce(session, ctx, options)
        if (stopped) break
        if (ctx.json) ctx.out(text)
        else if (ctx.style.enabled || ctx.width !== undefined)
          ctx.out(`\u001b[2J\u001b[H${text}\n\n${ctx.style.dim(refreshLine(options.intervalMs))}`)
        else ctx.out(`--- ${new Date().toISOString()}\n${text}\n`)
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, options.intervalMs)
          wake = () => {
            clearTimeout(timer)
            resolve()
          }
        })
      }
    } finally {
      process.off('SIGINT', stop)
      process.off('SIGTERM', stop)
    }
    return EXIT.ok
  } finally {
    await session.close()
  }
}

// ---- explain-locks ------------------------------------------------------------------------------

/** Options of `pg-atomic explain-locks`; `undefined`: the library's default. */
export interface ExplainOptions {
  readonly sql: string
  readonly params: readonly string[] | undefined
  readonly lockTimeoutMs: number | undefined
  readonly statementTimeoutMs: number | undefined
  readonly rowLocks: boolean
}

function blocksText(lock: ExplainedLock): string {
  if (lock.conflictsWith.length === 8) return 'everything, even SELECT'
  return lock.blocks.join(', ')
}

/** The report of `explainLocks()` for people. */
export function renderReport(report: LockReport, style: Style, width: number | undefined): string[] {
  const lines: string[] = []
  lines.push(`${style.bold('Statement:')} ${oneLine(report.sql)}`)
  const result =
    report.command === null ? 'done' : `${report.command}${report.rowCount === null ? '' : ` ${report.rowCount}`}`
  lines.push(`${style.bold('Result:')}    ${result} (rolled back)`)
  const relations = report.locks.filter((l) => l.type === 'relation')
  const others = report.locks.filter((l) => l.type !== 'relation')
  lines.push('', style.bold(`Table-level locks (${relations.length})`))
  if (relations.length > 0) {
    lines.push(
      ...table(
        ['RELATION', 'KIND', 'MODE', 'BLOCKS'],
        relations.map((l) => [
          { text: l.relation?.qualifiedName ?? `oid ${l.relation?.oid ?? '?'}`, color: style.cyan },
          l.relation?.kind ?? '',
          { text: l.mode, color: l.lockMode === 'access exclusive' ? style.red : style.yellow },
          blocksText(l),
        ]),
        style,
        width,
      ),
    )
  } else lines.push('none')
  if (others.length > 0) {
    lines.push('', style.bold(`Other locks (${others.length})`))
    lines.push(
      ...table(
        ['TYPE', 'LOCK', 'MODE', 'BLOCKS'],
        others.map((l) => [l.type, l.target, l.mode, l.blocks.join(', ')]),
        style,
        width,
      ),
    )
  }
  const rowCount =
    report.rowLocks.source === 'pgrowlocks'
      ? `${report.rowLocks.rows.length}${report.rowLocks.truncated ? '+' : ''}`
      : report.rowLocks.source === 'none'
        ? '0'
        : 'not listed'
  lines.push('', style.bold(`Row locks (${rowCount})`))
  if (report.rowLocks.rows.length > 0) {
    lines.push(
      ...table(
        ['TABLE', 'ROW', 'MODE', 'BLOCKS'],
        report.rowLocks.rows.map((r) => [
          { text: r.relation.qualifiedName ?? '', color: style.cyan },
          r.ctid,
          r.modes.join(', '),
          r.blocks.join(', '),
        ]),
        style,
        width,
      ),
    )
  }
  lines.push(report.rowLocks.note)
  const notes = report.notes.filter((n) => n !== report.rowLocks.note)
  if (notes.length > 0) lines.push('', style.bold('Notes'), ...notes.map((n) => `- ${n}`))
  return lines
}

/** `pg-atomic explain-locks`; the caller has checked the statement with `assertExplainable()` before connecting. */
export async function explainCommand(ctx: Context, options: ExplainOptions): Promise<ExitCode> {
  const session = await connect(ctx.target)
  try {
    const report = await explainLocks(options.sql, options.params, {
      using: session.db,
      ...(options.lockTimeoutMs === undefined ? {} : { lockTimeout: options.lockTimeoutMs }),
      ...(options.statementTimeoutMs === undefined ? {} : { statementTimeout: options.statementTimeoutMs }),
      rowLocks: options.rowLocks,
    })
    ctx.out(ctx.json ? toJson(report, true) : renderReport(report, ctx.style, ctx.width).join('\n'))
    return EXIT.ok
  } catch (error) {
    const failure = explainFailure(error, session.where, ctx.target)
    if (isLockNotAvailable(error)) {
      throw new CliError(
        `${failure.message} Another session holds a conflicting lock; run 'pg-atomic locks' to see ` +
          `which, or raise --lock-timeout.`,
        failure.exitCode,
        { cause: error },
      )
    }
    throw failure
  } finally {
    await session.close()
  }
}

// ---- idle ---------------------------------------------------------------------------------------

/** Options of `pg-atomic idle`. */
export interface IdleOptions {
  /** `undefined`: the library's default (every session idle in a transaction). */
  readonly olderThanMs: number | undefined
  readonly terminate: boolean
  readonly yes: boolean
  /** `undefined`: the library's default. */
  readonly queryLength: number | undefined
}

async function confirm(question: string): Promise<boolean> {
  const rl = createInterface({ input: process.stdin, output: process.stderr })
  try {
    const answer = await new Promise<string>((resolve) => {
      rl.once('close', () => resolve(''))
      rl.question(question, resolve)
    })
    return /^y(es)?$/i.test(answer.trim())
  } finally {
    rl.close()
  }
}

/**
 * The line shown for a failed termination: the server's error when there is one (this is the user's own terminal),
 * else the library's reason.
 */
function failureText(outcome: SessionTermination, session: Session): string {
  return outcome.error === null ? (outcome.reason ?? '') : explainFailure(outcome.error, session.where).message
}

/** `Failed to terminate <who>: <server error>` or `Failed to terminate <who>. <library's sentence>`. */
function failureLine(outcome: SessionTermination, session: Session, who: string): string {
  return outcome.error === null
    ? `to terminate ${who}. ${outcome.reason ?? ''}`
    : `to terminate ${who}: ${failureText(outcome, session)}`
}

const NOTHING_TERMINATED = Object.freeze({ terminated: [], skipped: [], failed: [] })

/** `pg-atomic idle`. */
export async function idleCommand(ctx: Context, options: IdleOptions): Promise<ExitCode> {
  const session = await connect(ctx.target)
  try {
    const sessions = await idleInTransaction({
      using: session.db,
      ...(options.olderThanMs === undefined ? {} : { olderThanMs: options.olderThanMs }),
      ...(options.queryLength === undefined ? {} : { queryLength: options.queryLength }),
    })
    const older =
      options.olderThanMs !== undefined && options.olderThanMs > 0
        ? ` for at least ${formatDuration(options.olderThanMs)}`
        : ''
    if (!ctx.json) {
      ctx.out(
        ctx.style.bold(
          `Idle in transaction${older} in database ${session.database}: ` +
            `${sessions.length === 0 ? 'none' : plural(sessions.length, 'session')}`,
        ),
      )
      if (sessions.length > 0) ctx.out(['', ...renderIdle(sessions, ctx.style, ctx.width)].join('\n'))
    }
    if (!options.terminate || sessions.length === 0) {
      if (ctx.json) ctx.out(toJson(options.terminate ? { sessions, ...NOTHING_TERMINATED } : { sessions }, true))
      return EXIT.ok
    }
    if (!options.yes) {
      if (process.stdin.isTTY !== true) {
        if (ctx.json) ctx.out(toJson({ sessions, ...NOTHING_TERMINATED }, true))
        throw usageError(
          `not terminating ${plural(sessions.length, 'session')}: confirmation needs a terminal and stdin ` +
            `is not one. Pass --yes to terminate without asking.`,
        )
      }
      const pids = sessions.map((s) => s.pid).join(', ')
      if (
        !(await confirm(
          `Terminate ${plural(sessions.length, 'session')} (pid ${pids})? Their transactions will be ` +
            `rolled back. [y/N] `,
        ))
      ) {
        ctx.err('Nothing was terminated.')
        if (ctx.json) ctx.out(toJson({ sessions, ...NOTHING_TERMINATED }, true))
        return EXIT.error
      }
    }
    const results = await terminateSessions(sessions, { using: session.db })
    const bySession = new Map(sessions.map((s) => [s.pid, s]))
    if (ctx.json) {
      ctx.out(
        toJson(
          {
            sessions,
            terminated: results.filter((r) => r.outcome === 'terminated').map((r) => r.pid),
            skipped: results.filter((r) => r.outcome === 'skipped').map((r) => ({ pid: r.pid, reason: r.reason })),
            failed: results
              .filter((r) => r.outcome === 'failed')
              .map((r) => ({ pid: r.pid, reason: failureText(r, session), code: r.code })),
          },
          true,
        ),
      )
    } else {
      const lines = results.map((r) => {
        const s = bySession.get(r.pid) as IdleSession
        const application =
          s.applicationName === null || s.applicationName === '' ? 'no application name' : s.applicationName
        const who = `pid ${r.pid} (${application}, idle for ${formatDuration(s.idleMs)})`
        if (r.outcome === 'terminated') return `${ctx.style.green('Terminated')} ${who}.`
        if (r.outcome === 'skipped') return `${ctx.style.yellow('Skipped')} ${who}. ${r.reason ?? ''}`
        return `${ctx.style.red('Failed')} ${failureLine(r, session, who)}`
      })
      ctx.out(['', ...lines].join('\n'))
    }
    const failed = results.filter((r) => r.outcome === 'failed')
    if (failed.some((r) => r.code === '42501')) return EXIT.permission
    return failed.length > 0 ? EXIT.error : EXIT.ok
  } finally {
    await session.close()
  }
}
