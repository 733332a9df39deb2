/**
 * Errors and error captures shared by the test files: a distinct error class for "the user's
 * code threw", and helpers that return what a call threw or a promise rejected with, so that a
 * test can assert its class *and* fields (a bare `.catch(() => ...)` would pass on any error).
 */

/** What a test's own code throws; distinct from every error the library or pg raises. */
export class Boom extends Error {
  override name = 'Boom'
}

/** Captures what `promise` rejects with (fails the test if it resolves). */
export async function rejection(promise: Promise<unknown>): Promise<unknown> {
  try {
    await promise
  } catch (error) {
    return error
  }
  throw new Error('expected the promise to reject, but it resolved')
}

/** Captures what `fn` throws synchronously (fails the test if it returns). */
export function thrown(fn: () => unknown): unknown {
  try {
    fn()
  } catch (error) {
    return error
  }
  throw new Error('expected the call to throw, but it returned')
}
