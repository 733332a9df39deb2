/**
 * Read-your-writes contexts: where the WAL position of a context's last commit is remembered, so
 * that its later reads go to a replica only once that replica has replayed past it.
 *
 * 1. A context is an async call tree started by {@link withReadYourWrites}; every request of the
 *    per-request integrations (`pg-atomic/web`, `/express`, `/fastify`, `/nestjs`) runs in one.
 *    Its own AsyncLocalStorage (not the block frames of context.ts): a context outlives the blocks
 *    that commit in it, and the request integrations leave the frames of earlier blocks behind.
 * 2. Outside any context, the process is the context: every commit of the process counts. A context
 *    opened outside any other starts from the positions of the commits made outside any context
 *    until then, so those made just before it (a request's middleware or hooks that run before the
 *    integration opens the request's context) count for its reads; another context's commits do
 *    not (another request reads replicas as usual).
 * 3. A context nested in another sees the outer context's commits, and its commits count for the
 *    outer one too (a request's helper that opens its own context must not lose the request's writes).
 *
 * @module
 */
import { AsyncLocalStorage } from 'node:async_hooks'

/** One read-your-writes context: the last commit position per database. @internal */
interface ReadContext {
  readonly commits: Map<object, bigint>
  readonly outer: ReadContext | undefined
  /** For a context opened outside any other: the positions of commits outside contexts when it was opened. */
  readonly before: ReadonlyMap<object, bigint> | undefined
}

const readContexts = new AsyncLocalStorage<ReadContext>()

/** Commit positions of the process, per database: the context of code outside any other. */
const processCommits = new WeakMap<object, bigint>()

/**
 * Positions of the commits made outside any context, per database: where a context opened outside
 * any other starts. Replaced (never mutated) on each such commit, so that opening a context only
 * keeps a reference. A closed database is removed by {@link forgetDatabase}.
 */
let outsideCommits: ReadonlyMap<object, bigint> = new Map()

/**
 * Runs `fn` in a read-your-writes context of its own: after a block (or a statement outside
 * blocks) commits on the primary inside it, reads inside it that would go to a replica go there
 * only once the replica has replayed that commit (else to the primary, or they wait up to
 * `replicaOptions.waitForReplayMs`). Each request of the per-request integrations already runs in
 * one; use this for jobs, queue consumers, or a server without those integrations. Outside any
 * context the whole process is one, and a context opened outside any other starts from the commits
 * made outside any context (a request's middleware that wrote before the context was opened).
 * Returns what `fn` returns.
 *
 * @example
 * ```ts
 * await withReadYourWrites(async () => {
 *   await db.atomic(() => db.query('update accounts set name = $1 where id = $2', ['Ada', 1]))
 *   // a replica that has not replayed that update yet is not used: the primary answers
 *   const { rows } = await db.replica.query('select name from accounts where id = $1', [1])
 * })
 * ```
 */
export function withReadYourWrites<T>(fn: () => T): T {
  if (typeof fn !== 'function') throw new TypeError('withReadYourWrites() expects a function.')
  const outer = readContexts.getStore()
  return readContexts.run({ commits: new Map(), outer, before: outer === undefined ? outsideCommits : undefined }, fn)
}

/**
 * The position of a commit whose WAL position could not be read: past any real one (no replica has
 * replayed it), so the context's reads go to the primary. A later known position replaces it: it
 * was read after that commit, and WAL positions only grow. @internal
 */
export const UNKNOWN_LSN = 0xffffffffffffffffn

/** Whether a commit at `lsn` replaces the `known` position of a context. */
function supersedes(lsn: bigint, known: bigint | undefined): boolean {
  return known === undefined || known < lsn || (known === UNKNOWN_LSN && lsn !== UNKNOWN_LSN)
}

/** Records that the current context committed on `db`'s primary at `lsn` ({@link UNKNOWN_LSN}: unknown). @internal */
export function noteCommit(db: object, lsn: bigint): void {
  const context = readContexts.getStore()
  for (let c = context; c !== undefined; c = c.outer) {
    if (supersedes(lsn, c.commits.get(db))) c.commits.set(db, lsn)
  }
  if (supersedes(lsn, processCommits.get(db))) processCommits.set(db, lsn)
  if (context === undefined && supersedes(lsn, outsideCommits.get(db)))
    outsideCommits = new Map(outsideCommits).set(db, lsn)
}

/** Forgets the positions of commits outside contexts of a closed database. @internal */
export function forgetDatabase(db: object): void {
  if (!outsideCommits.has(db)) return
  const next = new Map(outsideCommits)
  next.delete(db)
  outsideCommits = next
}

/** The position a replica must have replayed before it may answer a read of the current context. @internal */
export function requiredLsn(db: object): bigint | undefined {
  let context = readContexts.getStore()
  if (context === undefined) return processCommits.get(db)
  let required: bigint | undefined
  for (; context !== undefined; context = context.outer) {
    const lsn = context.commits.get(db)
    if (lsn !== undefined && (required === undefined || lsn > required)) required = lsn
    const before = context.before?.get(db)
    if (before !== undefined && (required === undefined || before > required)) required = before
  }
  return required
}

/**
 * Reads of WAL positions in flight: a `db.pool` connection used outside blocks has its position
 * read when it is released (its work may have committed writes: Kysely runs each statement on such
 * a connection, released before its promise settles), and a replica read waits for those reads
 * first, so that it never starts before the position of a write that has already returned.
 */
const pendingPositions = new Set<Promise<unknown>>()

/** Registers a position read in flight (see {@link pendingPositions}). @internal */
export function notePending(promise: Promise<unknown>): void {
  pendingPositions.add(promise)
  const done = () => void pendingPositions.delete(promise)
  promise.then(done, done)
}

/** Waits for the position reads in flight, if any (at most one round trip each). @internal */
export function settlePending(): Promise<unknown> | undefined {
  return pendingPositions.size === 0 ? undefined : Promise.allSettled([...pendingPositions])
}
