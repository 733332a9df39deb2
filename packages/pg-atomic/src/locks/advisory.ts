/**
 * Advisory locks: `advisoryLock()` (transaction-level, inside a block), `withAdvisoryLock()`
 * (session-level, on one dedicated connection), and `advisoryKey()`, the documented hash of a
 * string to a signed 64-bit key.
 *
 * @module
 */
import { AsyncLocalStorage } from 'node:async_hooks'
import { createHash } from 'node:crypto'
import type { PoolClient } from 'pg'
import { requireDatabase } from '../registry'
import { ConnectionLostError, InvalidOptionError, LockNotAvailableError, TransactionManagementError, isConnectionLoss, lockNotAvailableFrom } from '../errors'
import { applyLockTimeoutStatement, checkOptionKeys, optionalBoolean, optionalTimeout, optionalUsing, requireBlock, RESTORE_LOCK_TIMEOUT } from './common'

/** The namespace {@link advisoryKey} uses by default. */
export const ADVISORY_KEY_NAMESPACE = 'pg-atomic'

/**
 * The SQL expression that computes {@link advisoryKey} on the server, for other clients (built-in
 * `sha256()`, PostgreSQL 11+): `$1` is the text, `$2` the namespace.
 *
 * With pgcrypto, `digest(convert_to(...), 'sha256')` in place of `sha256(convert_to(...))` gives
 * the same value.
 */
export const ADVISORY_KEY_SQL = "('x' || encode(substr(sha256(convert_to($2::text || ':' || $1::text, 'UTF8')), 1, 8), 'hex'))::bit(64)::bigint"

/**
 * A key of an advisory lock:
 * - a `bigint` from -2⁶³ to 2⁶³−1, or a `number` that is a safe integer (the `bigint` key space);
 * - a pair `[a, b]` of 32-bit signed integers (the two-key space: `[0, 99]` and `99` are different
 *   locks);
 * - a `string`, hashed on the client with {@link advisoryKey} (default namespace).
 */
export type AdvisoryLockKey = bigint | number | string | readonly [number, number]

/** A validated key as PostgreSQL receives it: one `bigint`, or two `int4`. */
export type ResolvedAdvisoryKey = bigint | readonly [number, number]

const INT64_MIN = -(2n ** 63n)
const INT64_MAX = 2n ** 63n - 1n
const INT32_MIN = -(2 ** 31)
const INT32_MAX = 2 ** 31 - 1

/**
 * Hashes a string to an advisory lock key, the same way in every process and every language:
 *
 * 1. Take the UTF-8 bytes of `` `${namespace}:${text}` ``.
 * 2. Compute their SHA-256 digest.
 * 3. Read the first 8 bytes of the digest as a big-endian two's-complement signed 64-bit integer.
 *
 * `advisoryKey('orders:42')` is `-7365440854769472009n` (SHA-256 of `'pg-atomic:orders:42'`
 * starts with `99 c8 b2 90 fd 50 ed f7`). {@link ADVISORY_KEY_SQL} computes the same value in
 * SQL. The namespace cannot contain `':'`, so that distinct (namespace, text) pairs give distinct
 * inputs. Two different strings can still collide (about n²/2⁶⁵ for n keys): a collision only
 * makes two unrelated callers wait for each other.
 *
 * @param namespace - separates the keys of different applications. Default: `'pg-atomic'`.
 *
 * @example
 * ```ts
 * await atomic(async () => {
 *   await advisoryLock(advisoryKey(`invoice:${invoiceId}`, 'billing'))
 * })
 * ```
 */
export function advisoryKey(text: string, namespace: string = ADVISORY_KEY_NAMESPACE): bigint {
  if (typeof text !== 'string') throw new InvalidOptionError('text', 'advisoryKey() expects the text to hash (a string).')
  if (typeof namespace !== 'string' || namespace.includes(':')) {
    throw new InvalidOptionError('namespace', "Invalid namespace for advisoryKey(): it must be a string without ':' (the separator between namespace and text).")
  }
  return createHash('sha256').update(`${namespace}:${text}`, 'utf8').digest().readBigInt64BE(0)
}

/** Validates a key. @internal */
export function resolveAdvisoryKey(key: unknown, field = 'key', subject = 'advisoryLock()'): ResolvedAdvisoryKey {
  if (typeof key === 'bigint') {
    if (key >= INT64_MIN && key <= INT64_MAX) return key
  } else if (typeof key === 'number') {
    if (Number.isSafeInteger(key)) return BigInt(key)
  } else if (typeof key === 'string') {
    if (key !== '') return advisoryKey(key)
  } else if (Array.isArray(key) && key.length === 2) {
    const [a, b] = key as unknown[]
    const int32 = (v: unknown): v is number => typeof v === 'number' && Number.isInteger(v) && v >= INT32_MIN && v <= INT32_MAX
    if (int32(a) && int32(b)) return Object.freeze([a, b] as const)
  }
  throw new InvalidOptionError(
    field,
    `Invalid "${field}" for ${subject}: it must be a bigint from -2^63 to 2^63-1, a safe integer number, a pair [a, b] of 32-bit signed integers, or a non-empty string (hashed with advisoryKey()).`,
  )
}

function idOf(key: ResolvedAdvisoryKey): string {
  return typeof key === 'bigint' ? key.toString() : `${key[0]},${key[1]}`
}

/** `$1::bigint` or `$1::int, $2::int`, and the parameters. */
function keyArguments(key: ResolvedAdvisoryKey): { sql: string; values: unknown[] } {
  return typeof key === 'bigint' ? { sql: '$1::bigint', values: [key.toString()] } : { sql: '$1::int, $2::int', values: [key[0], key[1]] }
}

/** `SELECT pg_[try_]advisory_[xact_]lock[_shared](key) AS acquired`. @internal */
export function advisoryLockStatement(key: ResolvedAdvisoryKey, level: 'xact' | 'session', shared: boolean, wait: boolean): { text: string; values: unknown[] } {
  const args = keyArguments(key)
  const fn = `pg_${wait ? '' : 'try_'}advisory_${level === 'xact' ? 'xact_' : ''}lock${shared ? '_shared' : ''}`
  return { text: wait ? `SELECT ${fn}(${args.sql})` : `SELECT ${fn}(${args.sql}) AS acquired`, values: args.values }
}

/** `SELECT pg_advisory_unlock[_shared](key) AS released`. @internal */
export function advisoryUnlockStatement(key: ResolvedAdvisoryKey, shared: boolean): { text: string; values: unknown[] } {
  const args = keyArguments(key)
  return { text: `SELECT pg_advisory_unlock${shared ? '_shared' : ''}(${args.sql}) AS released`, values: args.values }
}

/** Options of {@link advisoryLock}. */
export interface AdvisoryLockOptions {
  /** Take the lock in shared mode (shared locks coexist; an exclusive one excludes all). Default: `false`. */
  shared?: boolean
  /**
   * `true`: wait until the lock is free. `false`: try once (`pg_try_...`) and resolve to `false`
   * when another session holds it. Default: `true`.
   */
  wait?: boolean
  /**
   * With `wait`, wait at most this many milliseconds (`lock_timeout` for this statement only, the
   * previous value restored afterwards), then reject with `LockNotAvailableError`. Whole number
   * from 0 to 2147483647; `0` waits without limit. Default: the transaction's `lock_timeout`.
   */
  timeout?: number
  /** Alias of the database. Default: `'default'`. */
  using?: string
}

/** Options of {@link withAdvisoryLock}: the same as {@link AdvisoryLockOptions}. */
export interface WithAdvisoryLockOptions {
  /** Take the lock in shared mode. Default: `false`. */
  shared?: boolean
  /**
   * `true`: wait until the lock is free. `false`: try once; when another session holds the lock,
   * `fn` does not run and the call rejects with `LockNotAvailableError` (`reason: 'nowait'`).
   * Default: `true`.
   */
  wait?: boolean
  /** With `wait`, wait at most this many milliseconds, then reject with `LockNotAvailableError`. Default: no limit (the server's `lock_timeout`). */
  timeout?: number
  /** Alias of the database whose pool provides the connection. Default: `'default'`. */
  using?: string
}

/** What `fn` of {@link withAdvisoryLock} receives. */
export interface AdvisoryLockContext {
  /** The key as PostgreSQL received it (a string key hashed with `advisoryKey()`). */
  readonly key: ResolvedAdvisoryKey
  /**
   * Aborted (with a `ConnectionLostError` as `reason`) when the connection holding the lock dies
   * while `fn` runs: the lock is then gone, and other sessions can take it. Long-running work
   * should check it (or pass it on) and stop.
   */
  readonly signal: AbortSignal
}

const OPTION_KEYS = ['shared', 'wait', 'timeout', 'using'] as const

interface Resolved {
  readonly shared: boolean
  readonly wait: boolean
  readonly timeout: number | undefined
  readonly using: string
}

function resolveOptions(options: unknown, subject: string): Resolved {
  const o = checkOptionKeys(options, OPTION_KEYS, '', subject)
  const shared = optionalBoolean(o['shared'], 'shared', subject) ?? false
  const wait = optionalBoolean(o['wait'], 'wait', subject) ?? true
  const timeout = optionalTimeout(o['timeout'], 'timeout', subject)
  if (!wait && timeout !== undefined) {
    throw new InvalidOptionError('timeout', `Option "timeout" of ${subject} applies only when waiting: remove it, or remove wait: false.`)
  }
  return { shared, wait, timeout, using: optionalUsing(o['using'], subject) }
}

/** Session locks held by withAdvisoryLock() in the current async context (to refuse self-deadlocks). */
interface HeldLock {
  readonly alias: string
  readonly id: string
  readonly shared: boolean
}
const held = new AsyncLocalStorage<readonly HeldLock[]>()

function refuseSelfDeadlock(alias: string, key: ResolvedAdvisoryKey, shared: boolean, subject: string): void {
  const id = idOf(key)
  const holder = held.getStore()?.find((h) => h.alias === alias && h.id === id && !(h.shared && shared))
  if (holder === undefined) return
  throw new TransactionManagementError(
    `${subject} would wait forever: an enclosing withAdvisoryLock() of this async context holds the same advisory lock on another connection, and it is released only when this code finishes. Advisory locks exclude sessions, not callers: do not take the same key again inside withAdvisoryLock().`,
  )
}

/** The message of `advisoryLock()` outside a block. */
export const ADVISORY_LOCK_OUTSIDE_MESSAGE =
  'advisoryLock() cannot be used outside of a transaction: call it inside an atomic() block (a transaction-level advisory lock taken in autocommit mode is released as soon as the statement ends). For a lock that spans several transactions, use withAdvisoryLock().'

/**
 * Takes a transaction-level advisory lock in the current `atomic()` block
 * (`pg_advisory_xact_lock[_shared]`, or `pg_try_advisory_xact_lock[_shared]` with `wait: false`).
 * It is held until the transaction ends (commit or rollback), or until the nested block that took
 * it rolls back; it cannot be released earlier. PgBouncer-safe.
 *
 * 1. The key and options are validated first (`InvalidOptionError`); outside a block it throws
 *    `TransactionManagementError` before anything is sent.
 * 2. The key is sent as a parameter: `SELECT pg_advisory_xact_lock($1::bigint)`, or
 *    `($1::int, $2::int)` for a pair.
 * 3. With `wait: false` it resolves to `true` (acquired) or `false` (held elsewhere; the block is
 *    not affected). With `wait` it resolves to `true`, or rejects: `LockNotAvailableError` when
 *    `timeout` (or the transaction's `lock_timeout`) expires, PostgreSQL's `40P01` when this
 *    transaction is chosen as a deadlock victim. Both doom the block.
 * 4. With `timeout`, three statements are sent: the `lock_timeout` change, the lock, the restore.
 *
 * Locks are re-entrant within one session: a second `advisoryLock()` of the same key in the same
 * transaction succeeds at once. They exclude other sessions, not other code sharing this transaction.
 *
 * Default: exclusive, waits, `using: 'default'`.
 *
 * @example
 * ```ts
 * await atomic(async () => {
 *   await advisoryLock(`nightly-report:${day}`)
 *   // only one transaction at a time gets here for this day; released at COMMIT / ROLLBACK
 * })
 * ```
 */
export async function advisoryLock(key: AdvisoryLockKey, options?: AdvisoryLockOptions): Promise<boolean> {
  const subject = 'advisoryLock()'
  const k = resolveAdvisoryKey(key, 'key', subject)
  const o = resolveOptions(options, subject)
  const { block } = requireBlock(o.using, ADVISORY_LOCK_OUTSIDE_MESSAGE)
  refuseSelfDeadlock(o.using, k, o.shared, subject)
  const statement = advisoryLockStatement(k, 'xact', o.shared, o.wait)
  try {
    if (o.timeout !== undefined) await block.run(applyLockTimeoutStatement(o.timeout), undefined)
    const result = await block.run<{ acquired?: boolean }>(statement.text, statement.values)
    if (o.timeout !== undefined) await block.run(RESTORE_LOCK_TIMEOUT, undefined)
    return o.wait ? true : result.rows[0]?.acquired === true
  } catch (error) {
    throw lockNotAvailableFrom(error, { kind: 'advisory' }) ?? error
  }
}

/** The message of `withAdvisoryLock()` on a database declared behind a transaction pooler. */
function transactionPoolingMessage(alias: string): string {
  return `withAdvisoryLock() is refused on database '${alias}' because it was created with transactionPooling: true. A session-level advisory lock belongs to a server connection, and a transaction-mode pooler (PgBouncer pool_mode = transaction) hands that connection to other clients between transactions: two clients can then both "hold" the lock, and the unlock can reach another connection and leave the lock held. Use advisoryLock() inside an atomic() block (transaction-level, safe behind a pooler), or a database that connects to PostgreSQL directly.`
}

/**
 * Runs `fn` while holding a session-level advisory lock on one dedicated connection
 * (`pg_advisory_lock[_shared]`, `pg_try_advisory_lock[_shared]` with `wait: false`), for locks that
 * must span several transactions (a job that runs many `atomic()` blocks, a migration).
 *
 * 1. Validated first (`InvalidOptionError`). Refused with `TransactionManagementError` before
 *    anything is sent: when the database was created with `transactionPooling: true` (session
 *    locks break behind PgBouncer transaction pooling), inside an `atomic()` block of the same
 *    database (the lock would be released before that transaction commits: use `advisoryLock()`),
 *    and for a key an enclosing `withAdvisoryLock()` already holds (it would wait for itself).
 * 2. One connection is checked out from the database's pool and kept for the whole call, with an
 *    'error' listener. The lock is taken on it (with `timeout`: inside `BEGIN; SET LOCAL
 *    lock_timeout` ... `COMMIT`, so no setting outlives the call). `wait: false` and the lock is
 *    taken elsewhere, or the timeout expires: `LockNotAvailableError`, and `fn` does not run.
 * 3. `fn({ key, signal })` runs while the lock is held. Its statements use the database as usual
 *    (other connections): the lock connection only holds the lock.
 * 4. In `finally`, even when `fn` throws, `pg_advisory_unlock` releases the lock and the connection
 *    goes back to the pool. If the unlock fails or returns `false`, the connection is destroyed
 *    instead (closing the session releases its locks) and the failure is logged.
 * 5. If the lock connection dies while `fn` runs, `signal` is aborted; `fn`'s own error is
 *    rethrown, and if `fn` succeeded the call rejects with `ConnectionLostError` (the lock was
 *    lost part-way, so mutual exclusion was not guaranteed).
 *
 * The call needs two connections when `fn` queries the database: size the pool for it.
 * Default: exclusive, waits without limit, `using: 'default'`.
 *
 * @example
 * ```ts
 * await withAdvisoryLock('nightly-import', async ({ signal }) => {
 *   for (const batch of batches) {
 *     if (signal.aborted) break
 *     await atomic(() => importBatch(batch))
 *   }
 * })
 * ```
 */
export async function withAdvisoryLock<T>(key: AdvisoryLockKey, fn: (lock: AdvisoryLockContext) => T | Promise<T>, options?: WithAdvisoryLockOptions): Promise<T> {
  const subject = 'withAdvisoryLock()'
  const k = resolveAdvisoryKey(key, 'key', subject)
  if (typeof fn !== 'function') throw new InvalidOptionError('fn', 'withAdvisoryLock() expects the function to run while the lock is held.')
  const o = resolveOptions(options, subject)
  const db = requireDatabase(o.using)
  if (db.transactionPooling) throw new TransactionManagementError(transactionPoolingMessage(db.alias))
  if (db.inAtomicBlock()) {
    throw new TransactionManagementError(
      "withAdvisoryLock() cannot be used inside an atomic() block: its session-level lock would be released when fn returns, before the enclosing transaction commits, so another process could take the lock without seeing this transaction's work. Use advisoryLock() (released at COMMIT), or call withAdvisoryLock() outside and open the atomic() block inside fn.",
    )
  }
  refuseSelfDeadlock(o.using, k, o.shared, subject)
  db.assertNotClosed()

  const client = await db.connect()
  const controller = new AbortController()
  let lost: unknown
  const onLost = (error?: unknown): void => {
    if (lost !== undefined) return
    lost = error ?? new Error('Connection terminated')
    controller.abort(
      new ConnectionLostError(`The connection holding the advisory lock of withAdvisoryLock() was lost; the lock is released and other sessions can take it.`, { cause: lost }),
    )
  }
  const onEnd = (): void => onLost()
  client.on('error', onLost)
  client.on('end', onEnd)
  const release = (destroy: unknown): void => {
    client.removeListener('end', onEnd)
    const status = client.getTransactionStatus?.()
    if (destroy === undefined && lost === undefined && (status === undefined || status === 'I')) {
      client.removeListener('error', onLost)
      client.release()
    } else {
      // Keep the 'error' listener: a destroyed client may still report its socket closing.
      client.release(destroy instanceof Error ? destroy : new Error('advisory lock connection not reusable'))
    }
  }

  try {
    await acquireSessionLock(client, k, o)
  } catch (error) {
    release(isConnectionLoss(error) ? error : undefined)
    throw lockNotAvailableFrom(error, { kind: 'advisory' }) ?? error
  }

  let outcome: { ok: true; value: T } | { ok: false; error: unknown }
  try {
    const entry: HeldLock = { alias: o.using, id: idOf(k), shared: o.shared }
    const value = await held.run([...(held.getStore() ?? []), entry], () => fn(Object.freeze({ key: k, signal: controller.signal })))
    outcome = { ok: true, value }
  } catch (error) {
    outcome = { ok: false, error }
  } finally {
    await releaseSessionLock(client, k, o.shared, () => lost, release, (message, error) => db.logger.error(message, error))
  }
  if (!outcome.ok) throw outcome.error
  if (lost !== undefined) throw controller.signal.reason
  return outcome.value
}

async function acquireSessionLock(client: PoolClient, key: ResolvedAdvisoryKey, o: Resolved): Promise<void> {
  const statement = advisoryLockStatement(key, 'session', o.shared, o.wait)
  if (o.timeout === undefined) {
    const result = await client.query<{ acquired?: boolean }>(statement.text, statement.values)
    if (!o.wait && result.rows[0]?.acquired !== true) {
      throw new LockNotAvailableError('Could not obtain the advisory lock of withAdvisoryLock() without waiting (wait: false): another session holds it in a conflicting mode. fn was not run.', {
        reason: 'nowait',
      })
    }
    return
  }
  // The timeout is a transaction-local setting, so nothing outlives the call; a session lock taken
  // inside a transaction stays held after COMMIT.
  await client.query(`BEGIN; SET LOCAL lock_timeout = ${o.timeout}`)
  try {
    await client.query(statement.text, statement.values)
  } catch (error) {
    // A failed ROLLBACK leaves the transaction status not idle: the caller then destroys the connection.
    await client.query('ROLLBACK').catch(() => undefined)
    throw error
  }
  await client.query('COMMIT')
}

async function releaseSessionLock(
  client: PoolClient,
  key: ResolvedAdvisoryKey,
  shared: boolean,
  lost: () => unknown,
  release: (destroy: unknown) => void,
  log: (message: string, error?: unknown) => void,
): Promise<void> {
  if (lost() !== undefined) {
    release(lost())
    return
  }
  const statement = advisoryUnlockStatement(key, shared)
  try {
    const result = await client.query<{ released: boolean }>(statement.text, statement.values)
    if (result.rows[0]?.released === true) {
      release(undefined)
      return
    }
    const error = new Error('pg_advisory_unlock returned false')
    log('withAdvisoryLock() could not release its advisory lock (pg_advisory_unlock returned false); the connection was destroyed instead, which releases every lock of its session.', error)
    release(error)
  } catch (error) {
    log(`withAdvisoryLock() could not release its advisory lock (${error instanceof Error ? error.message : String(error)}); the connection was destroyed instead, which releases every lock of its session.`, error)
    release(error)
  }
}
