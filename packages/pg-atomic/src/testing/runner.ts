/**
 * What pg-atomic/testing needs of a test runner.
 *
 * @module
 */

/** The hook functions of a test runner: jest's and vitest's names; node:test's `before` / `after` work too. */
export interface RunnerHooks {
  /** Runs once before the file's tests (node:test: `before`). */
  beforeAll(fn: () => Promise<void>): void
  /** Runs once after the file's tests (node:test: `after`). */
  afterAll(fn: () => Promise<void>): void
  /** Runs before each test. */
  beforeEach(fn: () => Promise<void>): void
  /** Runs after each test, whatever it did. */
  afterEach(fn: () => Promise<void>): void
}
