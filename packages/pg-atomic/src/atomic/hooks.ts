/**
 * `onCommit` / `onRollback` hooks of one transaction, keyed by the block that owns them (the
 * innermost block with a savepoint, or the outermost block), so a savepoint rollback drops exactly
 * the hooks registered inside it.
 *
 * 1. A nested block that rolls back drops its `onCommit` hooks and runs its `onRollback` hooks,
 *    after its ROLLBACK TO reached the server.
 * 2. After COMMIT the `onCommit` hooks run FIFO; a non-robust failure stops them and is reported
 *    as committed (`OnCommitHookError`).
 * 3. After ROLLBACK (or a lost connection) the `onRollback` hooks run FIFO.
 * 4. When the outcome of COMMIT is unknown, neither kind runs: `CommitOutcomeUnknownError` says so.
 *
 * Hooks run in the async context the outermost block was entered from, i.e. outside the
 * transaction. Their errors are reported with the library's own sentence and the error object as a
 * separate argument (never the error's message inside the sentence: it may carry bind values).
 *
 * @module
 * @internal
 */
import { storage } from '../context'
import type { Frame } from '../context'
import { OnCommitHookError } from '../errors'
import { hookErrorChannel } from '../events'
import type { TransactionScope } from '../instrumentation'
import type { AtomicLogger } from '../options'
import type { Hook } from '../types'

/** A block as far as hooks are concerned: a node of the block tree. */
export interface HookOwner {
  readonly parent: HookOwner | undefined
}

interface HookEntry {
  readonly kind: 'commit' | 'rollback'
  readonly fn: Hook
  readonly robust: boolean
  /** Innermost block with a savepoint (or the outermost block) active at registration. */
  readonly owner: HookOwner
}

/** An onCommit hook handed to the test kit instead of being kept for a COMMIT that never comes. */
export interface CapturedHook {
  readonly fn: Hook
  readonly robust: boolean
}

/** Where hook errors go. */
export interface HookReporter {
  readonly alias: string
  readonly logger: AtomicLogger
}

/** `true` when `owner` is `block` or nested in it. */
export function isWithin(owner: HookOwner, block: HookOwner): boolean {
  for (let b: HookOwner | undefined = owner; b !== undefined; b = b.parent) if (b === block) return true
  return false
}

function hookName(fn: Hook): string {
  return fn.name === '' ? 'an anonymous function' : fn.name
}

/** The hooks of one transaction. */
export class Hooks {
  private entries: HookEntry[] = []
  /**
   * The tracer's view of the transaction: hooks run outside its context too. Declared, not
   * initialised: an untraced transaction does not carry the field.
   */
  declare scope: TransactionScope | undefined

  constructor(
    private readonly db: HookReporter,
    private readonly transactionId: number,
    /** The context the outermost block was entered from: hooks run there. */
    private readonly outer: Frame | undefined,
  ) {}

  add(owner: HookOwner, kind: 'commit' | 'rollback', fn: Hook, robust: boolean): void {
    this.entries.push({ kind, fn, robust, owner })
  }

  /** Whether an `onRollback` hook is owned by `block` or a block nested in it. */
  hasRollbackHooksWithin(block: HookOwner): boolean {
    for (const h of this.entries) if (h.kind === 'rollback' && isWithin(h.owner, block)) return true
    return false
  }

  /** A nested block rolled back: drop its onCommit hooks and run its onRollback hooks. */
  async savepointRolledBack(block: HookOwner): Promise<void> {
    if (this.entries.length === 0) return
    const keep: HookEntry[] = []
    const run: HookEntry[] = []
    for (const h of this.entries) {
      if (isWithin(h.owner, block)) {
        if (h.kind === 'rollback') run.push(h)
      } else keep.push(h)
    }
    this.entries = keep
    for (const h of run) await this.callRollbackHook(h)
  }

  /** The transaction rolled back: run every onRollback hook. */
  async runRollbackHooks(): Promise<void> {
    const hooks = this.entries
    this.entries = []
    for (const h of hooks) if (h.kind === 'rollback') await this.callRollbackHook(h)
  }

  /**
   * A block that would have committed in production but is a savepoint of a test transaction
   * exited normally: its onCommit hooks (and those of blocks nested in it) are taken out, in
   * registration order, for the test kit; its onRollback hooks are dropped (a commit never runs them).
   */
  takeCommitHooksWithin(block: HookOwner): CapturedHook[] {
    const keep: HookEntry[] = []
    const taken: CapturedHook[] = []
    for (const h of this.entries) {
      if (!isWithin(h.owner, block)) keep.push(h)
      else if (h.kind === 'commit') taken.push({ fn: h.fn, robust: h.robust })
    }
    this.entries = keep
    return taken
  }

  /** The outcome of COMMIT is unknown: no hook may run (either kind could be wrong). */
  discard(): void {
    this.entries = []
  }

  /** Runs onCommit hooks FIFO after COMMIT; a non-robust failure stops and is reported as committed. */
  async runCommitHooks(): Promise<void> {
    const hooks = this.entries
    this.entries = []
    for (const h of hooks) {
      if (h.kind !== 'commit') continue
      try {
        await this.outside(h.fn)
      } catch (error) {
        if (!h.robust) {
          this.scope?.commitHookFailed()
          throw new OnCommitHookError(
            `The transaction was committed, but the onCommit hook ${hookName(h.fn)} failed, ` +
              `so the hooks registered after it were not run. Do not retry the transaction: ` +
              `its data is committed.`,
            { cause: error },
          )
        }
        reportHookError(this.db, 'commit', this.transactionId, h.fn, error)
      }
    }
  }

  /** Runs a hook in the context the transaction was entered from, i.e. outside the transaction. */
  private outside(fn: Hook): unknown {
    const scope = this.scope
    return scope === undefined ? this.runOutside(fn) : this.outsideTraced(scope, fn)
  }

  /** Traced (pg-atomic/otel): out of the transaction's tracing context too (a method of its own: no closure above). */
  private outsideTraced(scope: TransactionScope, fn: Hook): unknown {
    return scope.outside(() => this.runOutside(fn))
  }

  private runOutside(fn: Hook): unknown {
    return this.outer === undefined ? storage.exit(fn) : storage.run(this.outer, fn)
  }

  private async callRollbackHook(h: HookEntry): Promise<void> {
    try {
      await this.outside(h.fn)
    } catch (error) {
      reportHookError(this.db, 'rollback', this.transactionId, h.fn, error)
    }
  }
}

/**
 * Logs a hook error and publishes it on the hook-error channel. The sentence names the hook and
 * the transaction only; the error itself goes as a separate argument, for the application to log
 * as it sees fit (its message may carry bind values).
 * @internal
 */
export function reportHookError(
  db: HookReporter,
  kind: 'commit' | 'rollback',
  transactionId: number | undefined,
  fn: Hook,
  error: unknown,
): void {
  const where = transactionId === undefined ? '' : ` during transaction ${transactionId}`
  db.logger.error(
    `Error calling ${hookName(fn)} in ` +
      `${kind === 'commit' ? 'onCommit' : 'onRollback'}()${where}; the error is attached.`,
    error,
  )
  if (hookErrorChannel.hasSubscribers) hookErrorChannel.publish({ kind, transactionId, database: db.alias, error })
}
