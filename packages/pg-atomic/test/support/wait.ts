/**
 * Polling for a condition the test cannot await directly (a backend exiting, a pool noticing a
 * dead connection), bounded so that a test fails with what it waited for instead of hanging.
 */

/** Resolves once `predicate` holds; rejects naming `what` after `timeoutMs` (default 5 s). */
export async function waitUntil(
  predicate: () => boolean | Promise<boolean>,
  what: string,
  timeoutMs = 5000,
): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!(await predicate())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
}

/** Resolves after `ms` milliseconds: for tests that let time pass on purpose (timeouts, backoff, races). */
export const sleep = (ms: number): Promise<void> => new Promise<void>((resolve) => setTimeout(resolve, ms))
