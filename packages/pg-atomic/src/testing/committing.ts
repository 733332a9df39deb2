/**
 * The commit-for-real mode of pg-atomic/testing (Django's `TransactionTestCase`): no test
 * transaction, blocks commit, and the tables the tests name are truncated after each test.
 *
 * @module
 */
import { InvalidOptionError, TransactionManagementError } from '../errors'
import { requireDatabase } from '../registry'
import { identifierProblem, quoteIdentifier } from '../sql/identifier'
import type { RunnerHooks } from './runner'

/** Options of {@link useCommittingTests}. */
export interface CommittingTestsOptions {
  /**
   * The tables to empty after each test, e.g. `['users', 'billing.orders']` (a dot separates the
   * schema; names are quoted, so they are case-sensitive). Required, at least one.
   */
  truncate: readonly string[]
  /** Alias of the database. Default: `'default'`. */
  using?: string
  /** Reset the sequences owned by the tables' columns (`RESTART IDENTITY`). Default: `true`. */
  restartIdentity?: boolean
  /**
   * Also truncate the tables that reference them by foreign key (`CASCADE`), named or not.
   * Default: `false` (PostgreSQL then refuses to truncate a table referenced by one left out).
   */
  cascade?: boolean
}

/**
 * The `TRUNCATE` statement that empties `tables`, validated and quoted.
 * @internal
 */
export function truncateStatement(options: CommittingTestsOptions): string {
  const { truncate } = options
  if (!Array.isArray(truncate) || truncate.length === 0) {
    throw new InvalidOptionError(
      'truncate',
      'The option "truncate" of useCommittingTests() must name at least one table, e.g. { truncate: [\'users\'] }: ' +
        'the tables the tests write to, emptied after each test.',
    )
  }
  const names = truncate.map((table: unknown) => {
    const parts = typeof table === 'string' ? table.split('.') : []
    if (parts.length < 1 || parts.length > 2 || parts.some((part) => identifierProblem(part) !== undefined)) {
      throw new InvalidOptionError(
        'truncate',
        `The option "truncate" of useCommittingTests() names the table ${JSON.stringify(table)}, which is not a ` +
          "table name: give 'table' or 'schema.table', each part 1 to 63 bytes without NUL.",
      )
    }
    return parts.map(quoteIdentifier).join('.')
  })
  const identity = options.restartIdentity === false ? '' : ' RESTART IDENTITY'
  const cascade = options.cascade === true ? ' CASCADE' : ''
  return `TRUNCATE TABLE ${names.join(', ')}${identity}${cascade}`
}

/**
 * Registers the commit-for-real mode with a runner (Django's `TransactionTestCase`): the tests run
 * without a test transaction, so their blocks commit, onCommit hooks run, and other sessions see
 * the data; after each test, whatever it did, the tables in `options.truncate` are truncated.
 *
 * Use it for tests that need real commits: code that opens its own connections, visibility from
 * another session, session advisory locks. It is slower than {@link useTestTransaction} and the
 * tests of a database must not run at the same time (use a database per worker).
 *
 * 1. Before each test: a test transaction still open on the database is a
 *    `TransactionManagementError` (blocks would not commit).
 * 2. After each test: `TRUNCATE TABLE … RESTART IDENTITY`, in autocommit.
 *
 * @example
 * ```ts
 * import { afterEach, beforeEach, describe } from 'node:test'
 * import { useCommittingTests } from 'pg-atomic/testing'
 *
 * describe('notifications', () => {
 *   useCommittingTests({ beforeEach, afterEach }, { truncate: ['users', 'outbox'] })
 * })
 * ```
 */
export function useCommittingTests(
  hooks: Pick<RunnerHooks, 'beforeEach' | 'afterEach'>,
  options: CommittingTestsOptions,
): void {
  if (typeof options !== 'object' || options === null) {
    throw new InvalidOptionError('options', 'useCommittingTests() needs options: { truncate: [...table names] }.')
  }
  const statement = truncateStatement(options)
  const alias = options.using ?? 'default'
  hooks.beforeEach(async () => {
    const db = requireDatabase(alias)
    if (db.testRoot !== undefined && !db.testRoot.ended) {
      throw new TransactionManagementError(
        `useCommittingTests() found a test transaction of pg-atomic/testing open on database '${alias}': its ` +
          'blocks would not commit. Register the commit-for-real mode in a describe block (or a file) of its own, ' +
          'outside the one that calls useTestTransaction().',
      )
    }
  })
  hooks.afterEach(async () => {
    await requireDatabase(alias).query(statement)
  })
}
