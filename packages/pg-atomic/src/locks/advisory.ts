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
import { z } from 'zod'
import { requireActiveBlock } from '../current'
import {
  ConnectionLostError,
  InvalidOptionError,
  LockNotAvailableError,
  TransactionManagementError,
  isConnectionLoss,
  lockNotAvailableFrom,
} from '../errors'
import { requireDatabase } from '../registry'
import {
  ADVISORY_KEY_SQL as KEY_SQL,
  COMMIT_SQL,
  RESTORE_LOCK_TIMEOUT_SQL,
  ROLLBACK_SQL,
  advisoryLockSql,
  advisoryUnlockSql,
  applyLockTimeoutSql,
  beginWithLockTimeoutSql,
} from '../sql/locks'
import { parseOptions } from '../validation'
import { TIMEOUT_MS_EXPECTATION, USING_EXPECTATION, timeoutMsSchema, usingSchema } from './schemas'

/** The namespace {@link advisoryKey} uses by default. */
export const ADVISORY_KEY_NAMESPACE = 'pg-atomic'

/**
 * The SQL expression that computes {@link advisoryKey} on the server, for other clients (built-in
 * `sha256()`, PostgreSQL 11+): `$1` is the text, `$2` the namespace.
 *
 * With pgcrypto, `digest(convert_to(...), 'sha256')` in place of `sha256(convert_to(...))` gives
 * the same value.
 */
export const ADVISORY_KEY_SQL: string = KEY_SQL

/**
 * A key of an advisory lock:
 * - a `bigint` from -2⁶³ to 2⁶³−1, or a `number` that is a safe integer (the `bigint` key space);
 * - a pair `[a, b]` of 32-bit signed integers (the two-key space: `[0, 99]` and `99` are different
 *   locks);
 * - a `string`, hashed on the client with {@link advisoryKey} (default namespace).
 */
export type AdvisoryLockKey = bigint | number | string | readonly [number, number]

/**
 * An advisory lock key as PostgreSQL stores it: one `bigint` (`pg_advisory_lock(bigint)`), or a
 * pair of `int4` (`pg_advisory_lock(int, int)`). What {@link AdvisoryLockContext.key} holds, and
 * what lock insight decodes from `pg_locks`.
 */
export type ResolvedAdvisoryKey = bigint | readonly [number, number]

const INT64_MIN = -(2n ** 63n)
const INT64_MAX = 2n ** 63n - 1n
const INT32_MIN = -(2 ** 31)
const INT32_MAX = 2 ** 31 - 1

/** The hash of {@link advisoryKey}, for validated input. */
function hashKey(text: string, namespace: string): bigint {
  return createHash('sha256').update(`${namespace}:${text}`, 'utf8').digest().readBigInt64BE(0)
}

const advisoryKeyArguments = z.strictObject({
  text: z.string(),
  namespace: z.string().refine((s) => !s.includes(':')),
})
const ADVISORY_KEY_EXPECTATIONS = {
  text: 'the text to hash (a string)',
  namespace: "a string without ':' (the separator between namespace and text)",
}

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
 * declare const invoiceId: number
 * await atomic(async () => {
 *   await advisoryLock(advisoryKey(`invoice:${invoiceId}`, 'billing'))
 * })
 * ```
 */
export function advisoryKey(text: string, namespace: string = ADVISORY_KEY_NAMESPACE): bigint {
  parseOptions(advisoryKeyArguments, { text, namespace }, 'advisoryKey()', ADVISORY_KEY_EXPECTATIONS)
  return hashKey(text, namespace)
}

const int32 = z.int().min(INT32_MIN).max(INT32_MAX)
const keySchema = z.union([
  z.bigint().min(INT64_MIN).max(INT64_MAX),
  z.int(),
  z.string().min(1),
  z.tuple([int32, int32]).readonly(),
])
const KEY_EXPECTATION =
  'a bigint from -2^63 to 2^63-1, a safe integer number, a pair [a, b] of 32-bit signed integers, ' +
  'or a non-empty string (hashed with advisoryKey())'

/** Validates a key and returns it as PostgreSQL receives it. @internal */
export function resolveAdvisoryKey(key: unknown, subject: string): ResolvedAdvisoryKey {
  const { key: k } = parseOptions(z.strictObject({ key: keySchema }), { key }, subject, { key: KEY_EXPECTATION })
  if (typeof k === 'bigint') return k
  if (typeof k === 'number') return BigInt(k)
  if (typeof k === 'string') return hashKey(k, ADVISORY_KEY_NAMESPACE)
  return Object.freeze([k[0], k[1]] as const)
}

function idOf(key: ResolvedAdvisoryKey): string {
  return typeof key === 'bigint' ? key.toString() : `${key[0]},${key[1]}`
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
  timeoutMs?: number
  /**
   * Alias of the database whose current block takes the lock (it must be registered). Default:
   * the innermost active `atomic()` block of the current async context, whatever its database.
   */
  using?: string
}

/** Options of {@link withAdvisoryLock}. */
export interface WithAdvisoryLockOptions {
  /** Take the lock in shared mode. Default: `false`. */
  shared?: boolean
  /**
   * `true`: wait until the lock is free. `false`: try once; when another session holds the lock,
   * `fn` does not run and the call rejects with `LockNotAvailableError` (`reason: 'nowait'`).
   * Default: `true`.
   */
  wait?: boolean
  /**
   * With `wait`, wait at most this many milliseconds, then reject with `LockNotAvailableError`.
   * Whole number from 0 to 2147483647; `0` waits without limit. Default: the server's `lock_timeout`.
   */
  timeoutMs?: number
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

const optionsSchema = z.strictObject({
  shared: z.boolean().optional(),
  wait: z.boolean().optional(),
  timeoutMs: timeoutMsSchema.optional(),
  using: usingSchema.optional(),
})
const OPTION_EXPECTATIONS = {
  shared: 'true or false',
  wait: 'true or false',
  timeoutMs: TIMEOUT_MS_EXPECTATION,
  using: USING_EXPECTATION,
  fn: 'the function to run while the lock is held',
}

interface Resolved {
  readonly shared: boolean
  readonly wait: boolean
  readonly timeoutMs: number | undefined
  readonly using: string | undefined
}

function resolveOptions(options: unknown, subject: string): Resolved {
  const o = parseOptions(optionsSchema, options === undefined ? {} : options, subject, OPTION_EXPECTATIONS)
  const wait = o.wait ?? true
  if (!wait && o.timeoutMs !== undefined) {
    throw new InvalidOptionError(
      'timeoutMs',
      `Invalid option "timeoutMs" for ${subject}: it applies only when waiting, so it cannot be combined ` +
        `with "wait: false". Remove one of them.`,
    )
  }
  return { shared: o.shared ?? false, wait, timeoutMs: o.timeoutMs, using: o.using }
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
    `${subject} would wait forever: an enclosing withAdvisoryLock() of this async context holds ` +
      `the same advisory lock on another connection, and it is released only when this code finishes. ` +
      `Advisory locks exclude sessions, not callers: do not take the same key again inside withAdvisoryLock().`,
  )
}

/** The message of `advisoryLock()` outside a block. */
export const ADVISORY_LOCK_OUTSIDE_MESSAGE =
  'advisoryLock() cannot be used outside of a transaction: call it inside an atomic() block (a ' +
  'transaction-level advisory lock taken in autocommit mode is released as soon as the statement ' +
  'ends). For a lock that spans several transactions, use withAdvisoryLock().'

/**
 * Takes a transaction-level advisory lock in the current `atomic()` block
 * (`pg_advisory_xact_lock[_shared]`, or `pg_try_advisory_xact_lock[_shared]` with `wait: false`).
 * It is held until the transaction ends (commit or rollback), or until the nested block that took
 * it rolls back; it cannot be released earlier. PgBouncer-safe.
 *
 * 1. The key and options are validated first (`InvalidOptionError`). The block: the one of
 *    `using`, else the innermost active block of the current async context; outside a block it
 *    throws `TransactionManagementError` before anything is sent.
 * 2. The key is sent as a parameter: `SELECT pg_advisory_xact_lock($1::bigint)`, or
 *    `($1::int, $2::int)` for a pair.
 * 3. With `wait: false` it resolves to `true` (acquired) or `false` (held elsewhere; the block is
 *    not affected). With `wait` it resolves to `true`, or rejects: `LockNotAvailableError` when
 *    `timeoutMs` (or the transaction's `lock_timeout`) expires, PostgreSQL's `40P01` when this
 *    transaction is chosen as a deadlock victim. Both doom the block.
 * 4. With `timeoutMs`, three statements are sent: the `lock_timeout` change, the lock, the restore.
 *
 * Locks are re-entrant within one session: a second `advisoryLock()` of the same key in the same
 * transaction succeeds at once. They exclude other sessions, not other code sharing this transaction.
 *
 * Default: exclusive, waits.
 *
 * @example
 * ```ts
 * declare const day: string
 * await atomic(async () => {
 *   await advisoryLock(`nightly-report:${day}`)
 *   // only one transaction at a time gets here for this day; released at COMMIT / ROLLBACK
 * })
 * ```
 */
export async function advisoryLock(key: AdvisoryLockKey, options?: AdvisoryLockOptions): Promise<boolean> {
  const subject = 'advisoryLock()'
  const k = resolveAdvisoryKey(key, subject)
  const o = resolveOptions(options, subject)
  const block = requireActiveBlock(o.using, ADVISORY_LOCK_OUTSIDE_MESSAGE)
  refuseSelfDeadlock(block.tx.db.alias, k, o.shared, subject)
  const statement = advisoryLockSql(k, 'xact', o.shared, o.wait)
  try {
    if (o.timeoutMs !== undefined) await block.run(applyLockTimeoutSql(o.timeoutMs), undefined)
    const result = await block.run<{ acquired?: boolean }>(statement.text, statement.values)
    if (o.timeoutMs !== undefined) await block.run(RESTORE_LOCK_TIMEOUT_SQL, undefined)
    return o.wait ? true : result.rows[0]?.acquired === true
  } catch (error) {
    throw lockNotAvailableFrom(error, { kind: 'advisory' }) ?? error
  }
}

/** The message of `withAdvisoryLock()` on a database declared behind a transaction pooler. */
function transactionPoolingMessage(alias: string): string {
  return (
    `withAdvisoryLock() is refused on database '${alias}' because it was created with transactionPooling: ` +
    `true. A session-level advisory lock belongs to a server connection, and a transaction-mode ` +
    `pooler (PgBouncer pool_mode = transaction) hands that connection to other clients between ` +
    `transactions: two clients can then both "hold" the lock, and the unlock can reach another ` +
    `connection and leave the lock held. Use advisoryLock() inside an atomic() block (transaction-level, ` +
    `safe behind a pooler), or a database that connects to PostgreSQL directly.`
  )
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
 *    'error' listener. The lock is taken on it (with `timeoutMs`: inside `BEGIN; SET LOCAL
 *    lock_timeout` ... `COMMIT`, so no setting outlives the call). `wait: false` and the lock is
 *    taken elsewhere, or the timeout expires: `LockNotAvailableError`, and `fn` does not run.
 * 3. `fn({ key, signal })` runs while the lock is held. Its statements use the database as usual
 *    (other connections): the lock connection only holds the lock.
 * 4. In `finally`, even when `fn` throws, `pg_advisory_unlock` releases the lock and the connection
 *    goes back to the pool. If the unlock fails or returns `false`, the connection is destroyed
 *    instead (closing the session releases its locks) and the failure is logged (the error as the
 *    logger's second argument, never in the sentence).
 * 5. If the lock connection dies while `fn` runs, `signal` is aborted; `fn`'s own error is
 *    rethrown, and if `fn` succeeded the call rejects with `ConnectionLostError` (the lock was
 *    lost part-way, so mutual exclusion was not guaranteed).
 *
 * It is not tied to a block, so without `using` it uses the database registered as `'default'`.
 * The call needs two connections when `fn` queries the database: size the pool for it.
 * Default: exclusive, waits without limit, `using: 'default'`.
 *
 * @example
 * ```ts
 * declare const batches: readonly string[][]
 * declare function importBatch(batch: readonly string[]): Promise<void>
 * await withAdvisoryLock('nightly-import', async ({ signal }) => {
 *   for (const batch of batches) {
 *     if (signal.aborted) break
 *     await atomic(() => importBatch(batch))
 *   }
 * })
 * ```
 */
export async function withAdvisoryLock<T>(
  key: AdvisoryLockKey,
  fn: (lock: AdvisoryLockContext) => T | Promise<T>,
  options?: WithAdvisoryLockOptions,
): Promise<T> {
  const subject = 'withAdvisoryLock()'
  const k = resolveAdvisoryKey(key, subject)
  if (typeof fn !== 'function')
    throw new InvalidOptionError('fn', `Invalid option "fn" for ${subject}: it must be ${OPTION_EXPECTATIONS.fn}.`)
  const o = resolveOptions(options, subject)
  const db = requireDatabase(o.using ?? 'default')
  if (db.transactionPooling) throw new TransactionManagementError(transactionPoolingMessage(db.alias))
  if (db.inAtomicBlock()) {
    throw new TransactionManagementError(
      'withAdvisoryLock() cannot be used inside an atomic() block: its session-level lock would be ' +
        'released when fn returns, before the enclosing transaction commits, so another process could ' +
        "take the lock without seeing this transaction's work. Use advisoryLock() (released at COMMIT), " +
        'or call withAdvisoryLock() outside and open the atomic() block inside fn.',
    )
  }
  refuseSelfDeadlock(db.alias, k, o.shared, subject)
  db.assertNotClosed()

  const client = await db.connect()
  const controller = new AbortController()
  let lost: unknown
  const onLost = (error?: unknown): void => {
    if (lost !== undefined) return
    lost = error ?? new Error('Connection terminated')
    controller.abort(
      new ConnectionLostError(
        'The connection holding the advisory lock of withAdvisoryLock() was lost; the lock is released ' +
          'and other sessions can take it.',
        { cause: lost },
      ),
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
    const entry: HeldLock = { alias: db.alias, id: idOf(k), shared: o.shared }
    const value = await held.run([...(held.getStore() ?? []), entry], () =>
      fn(Object.freeze({ key: k, signal: controller.signal })),
    )
    outcome = { ok: true, value }
  } catch (error) {
    outcome = { ok: false, error }
  } finally {
    await releaseSessionLock(
      client,
      k,
      o.shared,
      () => lost,
      release,
      (message, error) => db.logger.error(message, error),
    )
  }
  if (!outcome.ok) throw outcome.error
  if (lost !== undefined) throw controller.signal.reason
  return outcome.value
}

async function acquireSessionLock(client: PoolClient, key: ResolvedAdvisoryKey, o: Resolved): Promise<void> {
  const statement = advisoryLockSql(key, 'session', o.shared, o.wait)
  if (o.timeoutMs === undefined) {
    const result = await client.query<{ acquired?: boolean }>(statement.text, statement.values)
    if (!o.wait && result.rows[0]?.acquired !== true) {
      throw new LockNotAvailableError(
        'Could not obtain the advisory lock of withAdvisoryLock() without waiting (wait: false): another ' +
          'session holds it in a conflicting mode. fn was not run.',
        {
          reason: 'nowait',
        },
      )
    }
    return
  }
  // The timeout is a transaction-local setting, so nothing outlives the call; a session lock taken
  // inside a transaction stays held after COMMIT.
  await client.query(beginWithLockTimeoutSql(o.timeoutMs))
  try {
    await client.query(statement.text, statement.values)
  } catch (error) {
    try {
      await client.query(ROLLBACK_SQL)
    } catch {
      // The transaction status then stays not idle, and release() destroys the connection; the
      // lock statement's error is the one the caller needs.
    }
    throw error
  }
  await client.query(COMMIT_SQL)
}

/** The sentence logged when the unlock did not work; the error goes to the logger as its own argument. */
const UNLOCK_FAILED_MESSAGE =
  'withAdvisoryLock() could not release its advisory lock; the connection was destroyed instead, ' +
  'which releases every lock of its session.'

async function releaseSessionLock(
  client: PoolClient,
  key: ResolvedAdvisoryKey,
  shared: boolean,
  lost: () => unknown,
  release: (destroy: unknown) => void,
  log: (message: string, error: unknown) => void,
): Promise<void> {
  if (lost() !== undefined) {
    release(lost())
    return
  }
  const statement = advisoryUnlockSql(key, shared)
  try {
    const result = await client.query<{ released: boolean }>(statement.text, statement.values)
    if (result.rows[0]?.released === true) {
      release(undefined)
      return
    }
    const error = new Error('pg_advisory_unlock returned false')
    log(UNLOCK_FAILED_MESSAGE, error)
    release(error)
  } catch (error) {
    log(UNLOCK_FAILED_MESSAGE, error)
    release(error)
  }
}
