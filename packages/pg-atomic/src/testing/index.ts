/**
 * `pg-atomic/testing`: a rolled-back transaction per test, as Django's `TestCase` gives.
 *
 * 1. A file (or worker) opens one test transaction on a database; fixture data created before the
 *    first test stays for every test of the file (Django's `setUpTestData`).
 * 2. Each test runs in a savepoint of it, rolled back after the test whatever the test did.
 * 3. Everything the code under test does joins it, on one connection: `atomic()` blocks (savepoints
 *    that behave as outermost blocks: `durable` and `retry` are allowed), `db.query` and `db.cursor`
 *    outside any block, `db.pool` (Kysely, Drizzle, their own transactions), the lock helpers.
 * 4. The onCommit hooks of blocks that would have committed are captured, not run: see
 *    {@link captureOnCommit}.
 *
 * @example
 * ```ts
 * import { createDatabase } from 'pg-atomic'
 * import { useTestTransaction } from 'pg-atomic/testing'
 * import { after, afterEach, before, beforeEach } from 'node:test'
 *
 * createDatabase({ connectionString: process.env.DATABASE_URL })
 * useTestTransaction({ beforeAll: before, afterAll: after, beforeEach, afterEach })
 * ```
 *
 * @packageDocumentation
 */
import { closeTestRoot, openTestRoot } from '../atomic/block'
import type { Block } from '../atomic/block'
import type { CapturedHook } from '../atomic/hooks'
import type { DatabaseImpl } from '../database'
import { InvalidOptionError, TransactionManagementError } from '../errors'
import { resolveAtomicOptions } from '../options'
import { requireDatabase } from '../registry'
import type { Hook } from '../types'
import type { IsolationLevel } from '../vocabulary'
import type { RunnerHooks } from './runner'

export type { RunnerHooks } from './runner'
export { useCommittingTests } from './committing'
export type { CommittingTestsOptions } from './committing'
export { dropTemplateDatabases, prepareTemplateDatabase, workerDatabaseUrl } from './databases'
export type { PrepareTemplateOptions, TemplateDatabaseOptions, WorkerDatabaseOptions } from './databases'
export { TEST_SERVER_URL_ENV, startTestServer, testServerUrl } from './server'
export type { TestServer, TestServerOptions, TestServerSource } from './server'

/** Options of a test transaction. */
export interface TestTransactionOptions {
  /** Alias of the database. Default: `'default'`. */
  using?: string
  /**
   * Isolation level of the test transaction (blocks of the code can only ask for this one).
   * Default: the database's.
   */
  isolationLevel?: IsolationLevel
  /** Read-only test transaction. Default: the database's. */
  readOnly?: boolean
}

/**
 * One test transaction: open across the tests of a file, one savepoint per test. Get one with
 * {@link startTestTransaction}, or let {@link useTestTransaction} drive it from the runner's hooks.
 */
export interface TestTransaction {
  /** The alias of the database it belongs to. */
  readonly database: string
  /** The onCommit hooks captured since the current test (or the set-up) began, in registration order. */
  readonly capturedHooks: readonly Hook[]
  /** Opens the savepoint of one test. A test already running is a `TransactionManagementError`. */
  beginTest(): Promise<void>
  /**
   * Ends the current test: checks its deferred constraints (`SET CONSTRAINTS ALL IMMEDIATE`, as
   * Django's `TestCase` does; a violation rejects with the server's error), then rolls back its
   * savepoint whatever the test did. Later work is refused until the next test.
   */
  endTest(): Promise<void>
  /** Rolls back the whole test transaction (fixtures included) and returns its connection. */
  end(): Promise<void>
}

/** Makes the deferred constraints of the test's work check now (see endTest). */
const CHECK_DEFERRED_CONSTRAINTS = 'SET CONSTRAINTS ALL IMMEDIATE'

class TestTransactionImpl implements TestTransaction {
  private readonly db: DatabaseImpl
  private readonly root: Block
  private testBlock: Block | undefined = undefined
  private hooks: CapturedHook[] = []
  private ended = false

  constructor(db: DatabaseImpl, root: Block) {
    this.db = db
    this.root = root
    db.testRoot = root
    db.testHooks = (hooks) => {
      this.hooks.push(...hooks)
    }
  }

  /** The alias of the database it belongs to. */
  get database(): string {
    return this.db.alias
  }

  /** The onCommit hooks captured since the current test (or the set-up) began, in registration order. */
  get capturedHooks(): readonly Hook[] {
    return this.hooks.map((h) => h.fn)
  }

  /** Opens the savepoint of one test. A test already running is a `TransactionManagementError`. */
  async beginTest(): Promise<void> {
    this.assertOpen()
    if (this.testBlock !== undefined) {
      throw new TransactionManagementError(
        'A test is already running in this test transaction: tests of one file run one at a time in it. ' +
          'Run concurrent tests in separate files (each gets its own test transaction and connection).',
      )
    }
    this.root.kitIdle = false
    this.hooks = []
    const block = await this.root.openBuilderBlock(resolveAtomicOptions({ name: 'test' }))
    block.kit = 'test'
    this.testBlock = block
  }

  /** {@inheritDoc TestTransaction.endTest} */
  async endTest(): Promise<void> {
    const block = this.testBlock
    if (block === undefined) return
    this.testBlock = undefined
    this.hooks = []
    try {
      // Django's TestCase: deferred constraints are checked before the test's work is rolled back,
      // or a violation the COMMIT would have reported passes unseen. ROLLBACK TO then restores the
      // constraint modes. Only when the test sent something and its transaction is still healthy.
      const tx = block.tx
      if (!block.ended && tx.materializedUpTo >= block.depth && tx.state.kind === 'ok') {
        await block.query(CHECK_DEFERRED_CONSTRAINTS)
      }
    } finally {
      try {
        await block.closeBuilderBlock('rollback', true)
      } finally {
        this.root.kitIdle = true
      }
    }
  }

  /** Rolls back the whole test transaction (fixtures included) and returns its connection. */
  async end(): Promise<void> {
    if (this.ended) return
    this.ended = true
    this.testBlock = undefined
    try {
      await closeTestRoot(this.root)
    } finally {
      if (this.db.testRoot === this.root) {
        this.db.testRoot = undefined
        this.db.testHooks = undefined
      }
    }
  }

  private assertOpen(): void {
    if (this.ended) throw new TransactionManagementError('This test transaction has ended: start a new one.')
  }
}

/**
 * Opens a test transaction on the database `using` names. Nothing is sent until the first
 * statement. Another one still open on the same database is a `TransactionManagementError`.
 */
export async function startTestTransaction(options?: TestTransactionOptions): Promise<TestTransaction> {
  if (options !== undefined && (typeof options !== 'object' || options === null)) {
    throw new InvalidOptionError('options', 'The options of startTestTransaction() must be an object.')
  }
  const { using, ...characteristics } = options ?? {}
  const db = requireDatabase(using ?? 'default')
  if (db.testRoot !== undefined && !db.testRoot.ended) {
    throw new TransactionManagementError(
      `A test transaction is already open on database '${db.alias}': end it first (one per file or worker).`,
    )
  }
  const root = openTestRoot(db, resolveAtomicOptions({ ...characteristics, name: 'test transaction' }))
  return new TestTransactionImpl(db, root)
}

/**
 * Registers a test transaction with a runner: opened before the file's tests (fixtures created in
 * the runner's `beforeAll` after this call stay for all tests), a savepoint per test rolled back
 * after it, and everything rolled back after the file. Works with jest and vitest (pass their
 * functions, or jest's globals) and node:test (`before` / `after`).
 *
 * @returns a function giving the current {@link TestTransaction} (inside hooks and tests).
 */
export function useTestTransaction(hooks: RunnerHooks, options?: TestTransactionOptions): () => TestTransaction {
  let current: TestTransaction | undefined
  hooks.beforeAll(async () => {
    current = await startTestTransaction(options)
  })
  hooks.beforeEach(async () => {
    await (current as TestTransaction).beginTest()
  })
  hooks.afterEach(async () => {
    await current?.endTest()
  })
  hooks.afterAll(async () => {
    await current?.end()
  })
  return () => {
    if (current === undefined) throw new TransactionManagementError('The test transaction is not open yet.')
    return current
  }
}

/** Options of {@link captureOnCommit}. */
export interface CaptureOnCommitOptions {
  /** Run the captured hooks, in order (hooks registered by hooks included), after `fn`. Default: `false`. */
  execute?: boolean
  /** Alias of the database. Default: `'default'`. */
  using?: string
}

/**
 * Django's `captureOnCommitCallbacks`: runs `fn` and returns the onCommit hooks that the blocks it
 * ran would have run at COMMIT (and those registered outside blocks), in registration order. With
 * `execute: true` they run after `fn`, in order — hooks registered by hooks too — and the list
 * includes them. Outside a test transaction it is a `TransactionManagementError`.
 */
export async function captureOnCommit(fn: () => unknown, options?: CaptureOnCommitOptions): Promise<Hook[]> {
  const db = requireDatabase(options?.using ?? 'default')
  if (db.testRoot === undefined || db.testRoot.ended) {
    throw new TransactionManagementError(
      'captureOnCommit() captures the hooks of a test transaction of pg-atomic/testing, and none is open on ' +
        `database '${db.alias}': call it inside a test that uses one.`,
    )
  }
  const previous = db.testHooks
  const captured: CapturedHook[] = []
  db.testHooks = (hooks) => {
    captured.push(...hooks)
  }
  try {
    await fn()
    if (options?.execute === true) {
      // Hooks registered while a hook runs are captured too, and run after it (Django >= 4.0).
      for (let i = 0; i < captured.length; i++) await (captured[i] as CapturedHook).fn()
    }
  } finally {
    db.testHooks = previous
  }
  return captured.map((h) => h.fn)
}
