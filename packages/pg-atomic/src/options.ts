/**
 * Option schemas (zod), SQL vocabulary as `as const` arrays, and resolution of the options of a
 * block against its database's defaults. Everything is validated once and frozen.
 *
 * @module
 */
import { z } from 'zod'
import { parseOptions } from './validation'
import type { Pool, PoolConfig } from 'pg'
import { InvalidOptionError } from './errors'
import { DEFAULT_RETRY_CODES, ISOLATION_LEVELS, MAX_TIMEOUT_MS, PROPAGATIONS } from './vocabulary'
import type { IsolationLevel, Propagation } from './vocabulary'
import { TABLE_LOCK_OPTION_EXPECTATION, resolveTableLock } from './locks/table-lock'
import type { ResolvedTableLock, TableLockInput } from './locks/table-lock'

/** Transaction characteristics shared by `atomic()` options and database defaults. */
export interface TransactionDefaults {
  /**
   * Isolation level of the transaction (`BEGIN ISOLATION LEVEL ...`). Outermost block only: on a
   * nested block it must equal the running transaction's level.
   * Default: the database's `isolationLevel`, else the server's default (normally read committed).
   */
  isolationLevel?: IsolationLevel
  /**
   * `BEGIN ... READ ONLY` (`true`) or `READ WRITE` (`false`). Outermost only.
   * Default: database default, else the server's.
   */
  readOnly?: boolean
  /**
   * `BEGIN ... DEFERRABLE` (`true`) or `NOT DEFERRABLE` (`false`); matters for serializable read-only
   * transactions. Outermost only. Default: database default, else the server's.
   */
  deferrable?: boolean
  /** `SET LOCAL statement_timeout` in milliseconds (0 disables). Default: database default, else not set. */
  statementTimeout?: number
  /** `SET LOCAL lock_timeout` in milliseconds (0 disables). Default: database default, else not set. */
  lockTimeout?: number
  /**
   * `SET LOCAL idle_in_transaction_session_timeout` in milliseconds (0 disables).
   * Default: database default, else not set.
   */
  idleInTransactionSessionTimeout?: number
}

/** Options of `atomic()`, `db.atomic()`, `atomic.wrap()` and `@Atomic()`. */
export interface AtomicOptions extends TransactionDefaults {
  /**
   * When this block is nested, create a savepoint for it (`true`), or join the enclosing block
   * (`false`: an error inside then dooms the enclosing block, as in Django). Default: `true`.
   */
  savepoint?: boolean
  /**
   * The block must be the outermost one, so that leaving it really commits. Nesting it is a
   * `TransactionManagementError` raised before any SQL. Default: `false`.
   */
  durable?: boolean
  /** Alias of the registered database to use. Default: `'default'`. */
  using?: string
  /**
   * What this block does with an enclosing transaction of its database (see
   * [Propagation](https://github.com/pg-atomic/pg-atomic/blob/main/docs/guide/propagation.md)):
   * `'nested'` (default: a savepoint in it, or a new transaction outside blocks), `'requiresNew'`
   * (an independent transaction on another connection, the enclosing one suspended meanwhile),
   * `'mandatory'` (nested; outside a block it is a `TransactionManagementError`), `'notSupported'`
   * (the callback runs outside any transaction, the enclosing one suspended), `'never'` (outside
   * any transaction; inside a block it is a `TransactionManagementError`). With `'notSupported'` and
   * `'never'` the callback receives no handle.
   */
  propagation?: Propagation
  /** A label carried in diagnostics events and error messages. Default: none. */
  name?: string
  /**
   * Automatic retry of the whole block on serialization failures and deadlocks: a number of
   * attempts, or a {@link RetryOptions} object. Outermost blocks only (PostgreSQL can only retry
   * whole transactions): on a block that would be nested it is a `TransactionManagementError` at
   * entry. Default: the database's `retry`, else no retry (1 attempt).
   */
  retry?: number | RetryOptions
  /**
   * A table lock taken when the block starts (`LOCK TABLE ... IN <mode> MODE [NOWAIT]`, with an
   * optional `timeoutMs`): `{ tables, mode, nowait?, timeoutMs? }`, validated like `lockTable()`.
   * The lock lasts until the transaction ends (or until this block's savepoint is rolled back).
   * A conflict with `nowait` or `timeoutMs` rejects the block with `LockNotAvailableError` before the
   * body runs. Default: none.
   */
  lock?: TableLockInput
}

/** How `retry` retries. */
export interface RetryOptions {
  /** Attempts in all, the first included (≥ 1). Default: `3`. */
  maxAttempts?: number
  /**
   * Backoff base in ms: attempt n waits a random time in [0, min(maxDelayMs, baseDelayMs·2^(n−1))]
   * (full jitter). Default: `20`.
   */
  baseDelayMs?: number
  /** Longest wait between attempts, in ms. Default: `1000`. */
  maxDelayMs?: number
  /**
   * Which errors are retried: SQLSTATE codes, or a predicate. Default: `['40001', '40P01']`.
   * An ambiguous commit (`CommitOutcomeUnknownError`) is never retried, whatever this says.
   */
  retryOn?: readonly string[] | ((error: unknown) => boolean)
}

/** A validated retry policy. @internal */
export interface RetryPolicy {
  readonly maxAttempts: number
  readonly baseDelayMs: number
  readonly maxDelayMs: number
  readonly retryOn: ((error: unknown) => boolean) | ReadonlySet<string>
}

/** A logger for errors the library reports without throwing (robust hooks, leaked connections). */
export interface AtomicLogger {
  /** Called with a full sentence; never contains bind values or passwords. */
  error(message: string, error?: unknown): void
}

/** Database configuration accepted by `createDatabase()`. */
export interface DatabaseConfig
  extends
    TransactionDefaults,
    Omit<
      PoolConfig,
      'statement_timeout' | 'lock_timeout' | 'idle_in_transaction_session_timeout' | 'query_timeout' | 'pipeline'
    > {
  /**
   * An existing `pg.Pool` to use instead of creating one. pg-atomic never ends a pool it did not
   * create. Mutually exclusive with connection fields. Default: a new pool from the other fields.
   */
  pool?: Pool
  /** Name under which the database is registered for `atomic({ using })`. Default: `'default'`. */
  alias?: string
  /** Where robust hook errors and leaked-connection reports go. Default: `console`. */
  logger?: AtomicLogger
  /** How long `db.close()` waits for running blocks, in milliseconds. Default: `10000`. */
  closeTimeoutMs?: number
  /**
   * Declare that connections go through a pooler in transaction mode (PgBouncer
   * `pool_mode = transaction`): every session-level feature is refused (session advisory locks).
   * pg-atomic itself uses only transaction-scoped settings either way. Default: `false`.
   */
  transactionPooling?: boolean
  /** Default `retry` of every outermost block (see {@link AtomicOptions.retry}). Default: none. */
  retry?: number | RetryOptions
  /**
   * How long a block (or a query outside blocks) waits for a pooled connection when the pool is
   * exhausted before failing with `AcquireTimeoutError`, in ms. Default: none (pg's own
   * `connectionTimeoutMillis`, if set, still applies).
   */
  acquireTimeoutMs?: number
  /**
   * Read replicas: outermost `readOnly: true` blocks (not `serializable`, which a standby refuses)
   * and `db.replica` reads go to one of them, round robin, skipping those that are down or lag
   * more than `replicaOptions.maxLagMs`, and only once it has replayed the context's last commit
   * (read your writes). Everything else goes to the primary. Default: none (everything on the
   * primary; `db.replica` reads too).
   */
  replicas?: readonly ReplicaConfig[]
  /** How reads are routed to `replicas` (see {@link ReplicaOptions}). Default: each field's default. */
  replicaOptions?: ReplicaOptions
}

/**
 * A read replica for `createDatabase({ replicas })`: a connection string, pg `PoolConfig` fields (the
 * same connection and pool fields as the database's own), or an existing `pg.Pool` (never ended by
 * pg-atomic). Put a PgBouncer in front of each server separately, never one over several replicas.
 */
export type ReplicaConfig =
  | string
  | Omit<
      PoolConfig,
      'statement_timeout' | 'lock_timeout' | 'idle_in_transaction_session_timeout' | 'query_timeout' | 'pipeline'
    >
  | Pool

/** How reads are routed to replicas (`createDatabase({ replicaOptions })`); see docs/guide/replicas.md. */
export interface ReplicaOptions {
  /**
   * A replica whose replay lags more than this, in ms, is skipped (event `'lagging'`). The lag is
   * `now() - pg_last_xact_replay_timestamp()` while the replica has received WAL it has not
   * replayed, else 0 (an over-estimate for a moment after a long idle time). Default: `10000`.
   */
  maxLagMs?: number
  /**
   * How long a replica's checked replay position and lag are trusted, in ms: a read on a replica
   * checked longer ago checks it again first (one more round trip, on the connection it then
   * uses). Also how long a replica that failed is skipped before it is tried again. `0` checks
   * before every read. Default: `1000`.
   */
  checkIntervalMs?: number
  /**
   * How long a read waits, in ms, for a replica to replay its context's last commit before it goes
   * to the primary instead (read your writes). `0`: never waits. Default: `0`.
   */
  waitForReplayMs?: number
  /**
   * What happens when no replica is usable (all down, lagging or not standbys): `'primary'` sends
   * the read to the primary (event `'fallback'`); `'fail'` rejects it with
   * `ReplicaUnavailableError`. A replica that is only behind the context's own last commit is not
   * unusable: that read goes to the primary either way. Default: `'primary'`.
   */
  whenUnavailable?: 'primary' | 'fail'
}

/** A validated replica: a pool of the caller's, or the config of one pg-atomic creates. @internal */
export type ResolvedReplica = { readonly pool: Pool } | { readonly poolConfig: PoolConfig }

/** Validated replica routing options. @internal */
export interface ResolvedReplicaOptions {
  readonly maxLagMs: number
  readonly checkIntervalMs: number
  readonly waitForReplayMs: number
  readonly whenUnavailable: 'primary' | 'fail'
}

/** Options after validation and merging with the database's defaults; frozen. @internal */
export interface ResolvedOptions {
  readonly savepoint: boolean
  readonly durable: boolean
  readonly using: string
  readonly name: string | undefined
  readonly propagation: Propagation
  /** Only the keys the caller passed (used for nested-block checks). */
  readonly isolationLevel: IsolationLevel | undefined
  readonly readOnly: boolean | undefined
  readonly deferrable: boolean | undefined
  readonly statementTimeout: number | undefined
  readonly lockTimeout: number | undefined
  readonly idleInTransactionSessionTimeout: number | undefined
  /** Only when the caller passed `retry`. */
  readonly retry: RetryPolicy | undefined
  /** The validated `lock` option. */
  readonly lock: ResolvedTableLock | undefined
}

const ALLOWED: Record<string, string> = {
  savepoint: 'true or false',
  durable: 'true or false',
  readOnly: 'true or false',
  deferrable: 'true or false',
  isolationLevel: `one of ${ISOLATION_LEVELS.map((l) => `'${l}'`).join(', ')}`,
  statementTimeout: `a whole number of milliseconds from 0 to ${MAX_TIMEOUT_MS} (0 disables it)`,
  lockTimeout: `a whole number of milliseconds from 0 to ${MAX_TIMEOUT_MS} (0 disables it)`,
  idleInTransactionSessionTimeout: `a whole number of milliseconds from 0 to ${MAX_TIMEOUT_MS} (0 disables it)`,
  using: 'a non-empty string naming a registered database',
  propagation: `one of ${PROPAGATIONS.map((p) => `'${p}'`).join(', ')}`,
  alias: 'a non-empty string',
  name: 'a string',
  closeTimeoutMs: 'a whole number of milliseconds of at least 0',
  transactionPooling: 'true or false',
  retry: 'a whole number of attempts of at least 1, or { maxAttempts, baseDelayMs, maxDelayMs, retryOn }',
  'retry.maxAttempts': 'a whole number of at least 1',
  'retry.baseDelayMs': 'a whole number of milliseconds of at least 0',
  'retry.maxDelayMs': 'a whole number of milliseconds of at least 0',
  'retry.retryOn': 'a list of 5-character SQLSTATE codes such as 40001, or a function (error) => boolean',
  acquireTimeoutMs: 'a whole number of milliseconds of at least 1',
  replicas:
    'a list of replicas, each a connection string, an object of pg PoolConfig fields, or a pg.Pool ' +
    '(an object with connect() and query() methods)',
  replicaOptions: 'an object { maxLagMs, checkIntervalMs, waitForReplayMs, whenUnavailable }',
  'replicaOptions.maxLagMs': 'a whole number of milliseconds of at least 0',
  'replicaOptions.checkIntervalMs': 'a whole number of milliseconds of at least 0',
  'replicaOptions.waitForReplayMs': 'a whole number of milliseconds of at least 0',
  'replicaOptions.whenUnavailable': "'primary' or 'fail'",
  lock: TABLE_LOCK_OPTION_EXPECTATION,
  logger: 'an object with an error(message) method',
  pool: 'a pg.Pool (an object with connect() and query() methods)',
  max: 'a whole number of at least 1',
  min: 'a whole number of at least 0',
  port: 'a whole number from 1 to 65535',
  password: 'a string, or a function returning one (or a promise of one)',
  connectionString: 'a string such as postgres://user@host:5432/database',
  host: 'a string',
  user: 'a string',
  database: 'a string',
  application_name: 'a string',
  idleTimeoutMillis: 'a whole number of milliseconds of at least 0, or null',
  connectionTimeoutMillis: 'a whole number of milliseconds of at least 0',
}

const isolation = z
  .string()
  .transform((s) => s.toLowerCase())
  .pipe(z.enum(ISOLATION_LEVELS))
const timeout = z.int().min(0).max(MAX_TIMEOUT_MS)

/** The zod shape of the transaction characteristics and timeouts, shared by every options schema. @internal */
export const transactionDefaultsShape = {
  isolationLevel: isolation.optional(),
  readOnly: z.boolean().optional(),
  deferrable: z.boolean().optional(),
  statementTimeout: timeout.optional(),
  lockTimeout: timeout.optional(),
  idleInTransactionSessionTimeout: timeout.optional(),
}

/** The zod schema of the `retry` option, shared by every options schema that has one. @internal */
export const retrySchema = z.union([
  z.int().min(1),
  z.strictObject({
    maxAttempts: z.int().min(1).optional(),
    baseDelayMs: z.int().min(0).optional(),
    maxDelayMs: z.int().min(0).optional(),
    retryOn: z
      .union([
        z.array(z.string().regex(/^[0-9A-Z]{5}$/)).readonly(),
        z.custom<(error: unknown) => boolean>((v) => typeof v === 'function'),
      ])
      .optional(),
  }),
])

const atomicOptionsSchema = z.strictObject({
  ...transactionDefaultsShape,
  savepoint: z.boolean().optional(),
  durable: z.boolean().optional(),
  using: z.string().min(1).optional(),
  name: z.string().optional(),
  propagation: z.enum(PROPAGATIONS).optional(),
  lock: z.custom<TableLockInput>((v) => typeof v === 'object' && v !== null && !Array.isArray(v)).optional(),
  retry: retrySchema.optional(),
})

const fn = z.custom<(...args: never[]) => unknown>((v) => typeof v === 'function')
const anything = z.unknown()
const poolSchema = z.custom<Pool>(
  (v) =>
    typeof v === 'object' &&
    v !== null &&
    typeof (v as Pool).connect === 'function' &&
    typeof (v as Pool).query === 'function',
)

/** node-postgres PoolConfig / ClientConfig fields, passed through to `new pg.Pool()`. */
const poolFieldsShape = {
  connectionString: z.string().optional(),
  host: z.string().optional(),
  port: z.int().min(1).max(65535).optional(),
  user: z.string().optional(),
  database: z.string().optional(),
  password: z.union([z.string(), fn]).optional(),
  ssl: anything.optional(),
  sslnegotiation: z.enum(['postgres', 'direct']).optional(),
  enableChannelBinding: z.boolean().optional(),
  keepAlive: z.boolean().optional(),
  keepAliveInitialDelayMillis: z.int().min(0).optional(),
  stream: fn.optional(),
  application_name: z.string().optional(),
  fallback_application_name: z.string().optional(),
  connectionTimeoutMillis: z.int().min(0).optional(),
  types: anything.optional(),
  options: z.string().optional(),
  client_encoding: z.string().optional(),
  max: z.int().min(1).optional(),
  min: z.int().min(0).optional(),
  idleTimeoutMillis: z.int().min(0).nullable().optional(),
  log: fn.optional(),
  Promise: anything.optional(),
  allowExitOnIdle: z.boolean().optional(),
  maxUses: z.int().min(1).optional(),
  maxLifetimeSeconds: z.int().min(0).optional(),
  Client: fn.optional(),
  onConnect: fn.optional(),
  verify: fn.optional(),
}

const databaseConfigSchema = z.strictObject({
  ...transactionDefaultsShape,
  alias: z.string().min(1).optional(),
  pool: poolSchema.optional(),
  logger: z
    .custom<AtomicLogger>((v) => typeof v === 'object' && v !== null && typeof (v as AtomicLogger).error === 'function')
    .optional(),
  closeTimeoutMs: z.int().min(0).optional(),
  transactionPooling: z.boolean().optional(),
  retry: atomicOptionsSchema.shape.retry,
  acquireTimeoutMs: z.int().min(1).optional(),
  replicas: z.array(z.unknown()).readonly().optional(),
  replicaOptions: z
    .strictObject({
      maxLagMs: z.int().min(0).optional(),
      checkIntervalMs: z.int().min(0).optional(),
      waitForReplayMs: z.int().min(0).optional(),
      whenUnavailable: z.enum(['primary', 'fail']).optional(),
    })
    .optional(),
  ...poolFieldsShape,
})

const replicaConfigSchema = z.strictObject(poolFieldsShape)

/** Connection settings that node-postgres would send as startup parameters or enforce client-side. */
const REFUSED_POOL_FIELDS: Record<string, string> = {
  statement_timeout:
    'Use the statementTimeout option instead: pg sends statement_timeout as a ' +
    'startup parameter, which PgBouncer rejects; pg-atomic applies it with SET LOCAL ' +
    'in each transaction.',
  lock_timeout:
    'Use the lockTimeout option instead: it is applied with SET LOCAL in each transaction (PgBouncer-safe).',
  idle_in_transaction_session_timeout:
    'Use the idleInTransactionSessionTimeout option instead: it is applied with SET ' +
    'LOCAL in each transaction (PgBouncer-safe).',
  query_timeout:
    'query_timeout is a client-side timer that leaves the server statement running ' +
    'and the connection in an unknown state; use statementTimeout, which PostgreSQL enforces.',
  pipeline: 'pg-atomic serializes the statements of a transaction itself; pipeline mode is not supported.',
}

/** Resolved options of `atomic(fn)` without options. @internal */
export const DEFAULT_OPTIONS: ResolvedOptions = Object.freeze({
  savepoint: true,
  durable: false,
  using: 'default',
  name: undefined,
  propagation: 'nested',
  isolationLevel: undefined,
  readOnly: undefined,
  deferrable: undefined,
  statementTimeout: undefined,
  lockTimeout: undefined,
  idleInTransactionSessionTimeout: undefined,
  retry: undefined,
  lock: undefined,
})

/** Validated retry policy from the `retry` option value. @internal */
export function resolveRetry(input: number | RetryOptions | undefined): RetryPolicy | undefined {
  if (input === undefined) return undefined
  const o: RetryOptions = typeof input === 'number' ? { maxAttempts: input } : input
  const retryOn = o.retryOn ?? DEFAULT_RETRY_CODES
  return Object.freeze({
    maxAttempts: o.maxAttempts ?? 3,
    baseDelayMs: o.baseDelayMs ?? 20,
    maxDelayMs: o.maxDelayMs ?? 1000,
    retryOn: typeof retryOn === 'function' ? retryOn : new Set(retryOn),
  })
}

const frozenCache = new WeakMap<object, ResolvedOptions>()

/**
 * Validates `atomic()` options and freezes the result. Frozen option objects are cached by
 * identity, so `@Atomic()`, `atomic.wrap()` and reused constants are validated only once.
 * @internal
 */
export function resolveAtomicOptions(input: AtomicOptions | undefined): ResolvedOptions {
  if (input === undefined) return DEFAULT_OPTIONS
  const cached = frozenCache.get(input)
  if (cached !== undefined) return cached
  const o = parseOptions(atomicOptionsSchema, input, 'atomic()', ALLOWED, REFUSED_POOL_FIELDS)
  const resolved: ResolvedOptions = Object.freeze({
    savepoint: o.savepoint ?? true,
    durable: o.durable ?? false,
    using: o.using ?? 'default',
    name: o.name,
    propagation: o.propagation ?? 'nested',
    isolationLevel: o.isolationLevel,
    readOnly: o.readOnly,
    deferrable: o.deferrable,
    statementTimeout: o.statementTimeout,
    lockTimeout: o.lockTimeout,
    idleInTransactionSessionTimeout: o.idleInTransactionSessionTimeout,
    retry: resolveRetry(o.retry as number | RetryOptions | undefined),
    lock: o.lock === undefined ? undefined : resolveTableLock(o.lock, 'lock'),
  })
  frozenCache.set(resolved, resolved)
  if (Object.isFrozen(input)) frozenCache.set(input, resolved)
  return resolved
}

/** Validated database configuration. @internal */
export interface ResolvedDatabaseConfig {
  readonly alias: string
  readonly pool: Pool | undefined
  readonly poolConfig: PoolConfig
  readonly defaults: Readonly<TransactionDefaults>
  readonly logger: AtomicLogger
  readonly closeTimeoutMs: number
  readonly transactionPooling: boolean
  readonly retry: RetryPolicy | undefined
  readonly acquireTimeoutMs: number | undefined
  /** Empty without replicas. */
  readonly replicas: readonly ResolvedReplica[]
  readonly replicaOptions: ResolvedReplicaOptions
}

/** Validates `createDatabase()` configuration. @internal */
export function resolveDatabaseConfig(input: DatabaseConfig): ResolvedDatabaseConfig {
  const c = parseOptions(databaseConfigSchema, input, 'createDatabase()', ALLOWED, REFUSED_POOL_FIELDS)
  const {
    alias,
    pool,
    logger,
    closeTimeoutMs,
    transactionPooling,
    retry,
    acquireTimeoutMs,
    replicas,
    replicaOptions,
    isolationLevel,
    readOnly,
    deferrable,
    statementTimeout,
    lockTimeout,
    idleInTransactionSessionTimeout,
    ...poolConfig
  } = c
  if (pool !== undefined && Object.keys(poolConfig).length > 0) {
    const field = Object.keys(poolConfig)[0] ?? 'pool'
    throw new InvalidOptionError(
      field,
      `Option "${field}" cannot be combined with "pool" in createDatabase(): configure ` +
        `the existing pool itself, or pass connection fields without "pool".`,
    )
  }
  const defaults: TransactionDefaults = {}
  if (isolationLevel !== undefined) defaults.isolationLevel = isolationLevel
  if (readOnly !== undefined) defaults.readOnly = readOnly
  if (deferrable !== undefined) defaults.deferrable = deferrable
  if (statementTimeout !== undefined) defaults.statementTimeout = statementTimeout
  if (lockTimeout !== undefined) defaults.lockTimeout = lockTimeout
  if (idleInTransactionSessionTimeout !== undefined)
    defaults.idleInTransactionSessionTimeout = idleInTransactionSessionTimeout
  return Object.freeze({
    alias: alias ?? 'default',
    pool,
    poolConfig: poolConfig as PoolConfig,
    defaults: Object.freeze(defaults),
    logger: logger ?? console,
    closeTimeoutMs: closeTimeoutMs ?? 10_000,
    transactionPooling: transactionPooling ?? false,
    retry: resolveRetry(retry as number | RetryOptions | undefined),
    acquireTimeoutMs,
    replicas: resolveReplicas(replicas ?? []),
    replicaOptions: Object.freeze({
      maxLagMs: replicaOptions?.maxLagMs ?? 10_000,
      checkIntervalMs: replicaOptions?.checkIntervalMs ?? 1_000,
      waitForReplayMs: replicaOptions?.waitForReplayMs ?? 0,
      whenUnavailable: replicaOptions?.whenUnavailable ?? 'primary',
    }),
  })
}

/** Validates each entry of `replicas`; an invalid one is named by its index (`replicas[1].port`). */
function resolveReplicas(input: readonly unknown[]): readonly ResolvedReplica[] {
  const resolved = input.map((entry, index): ResolvedReplica => {
    const field = `replicas[${index}]`
    if (typeof entry === 'string') {
      if (entry.length > 0) return Object.freeze({ poolConfig: { connectionString: entry } })
    } else if (poolSchema.safeParse(entry).success) {
      return Object.freeze({ pool: entry as Pool })
    } else if (typeof entry === 'object' && entry !== null && !Array.isArray(entry)) {
      try {
        const config = parseOptions(
          replicaConfigSchema,
          entry,
          `createDatabase() ${field}`,
          ALLOWED,
          REFUSED_POOL_FIELDS,
        )
        return Object.freeze({ poolConfig: config as PoolConfig })
      } catch (error) {
        if (error instanceof InvalidOptionError) throw new InvalidOptionError(`${field}.${error.field}`, error.message)
        throw error
      }
    }
    throw new InvalidOptionError(
      field,
      `Invalid option "${field}" for createDatabase(): each replica must be a connection string such as ` +
        'postgres://user@replica-host:5432/database, an object of pg PoolConfig fields, or a pg.Pool.',
    )
  })
  return Object.freeze(resolved)
}
