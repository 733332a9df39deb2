/**
 * Whole-transaction retry: an outermost block that failed with a retryable error (by default a
 * serialization failure or a deadlock) runs again in a fresh transaction, after an exponential
 * backoff with full jitter. PostgreSQL can only retry whole transactions: a savepoint retry would
 * keep the old snapshot and its locks.
 *
 * @module
 * @internal
 */
import {
  CommitOutcomeUnknownError,
  OnCommitHookError,
  SuspendedTransactionDeadlockError,
  TransactionManagementError,
  sqlState,
} from '../errors'
import { retryChannel } from '../events'
import type { RetryPolicy } from '../options'

/** The SQLSTATE that decides a retry: the error's own, or that of the swallowed error a block rejected with. */
function retryCode(error: unknown): string | undefined {
  const own = sqlState(error)
  if (own !== undefined) return own
  return error instanceof TransactionManagementError ? sqlState(error.cause) : undefined
}

function shouldRetry(policy: RetryPolicy, error: unknown): boolean {
  // An ambiguous commit may have committed, and a failed onCommit hook ran after a commit: never
  // run the work again on our own.
  if (
    error instanceof CommitOutcomeUnknownError ||
    error instanceof OnCommitHookError ||
    error instanceof SuspendedTransactionDeadlockError
  )
    return false
  if (typeof policy.retryOn === 'function') return policy.retryOn(error)
  const code = retryCode(error)
  return code !== undefined && policy.retryOn.has(code)
}

/** What a retry event names. */
export interface RetryLabel {
  readonly database: string
  readonly name: string | undefined
}

/**
 * Runs `attempt` until it succeeds, fails with an error `policy` does not retry, or runs out of
 * attempts. The last error reaches the caller unchanged, with `attempts` on it when there was more
 * than one.
 */
export async function runWithRetry<T>(policy: RetryPolicy, label: RetryLabel, attempt: () => Promise<T>): Promise<T> {
  for (let n = 1; ; n++) {
    try {
      return await attempt()
    } catch (error) {
      if (n >= policy.maxAttempts || !shouldRetry(policy, error)) {
        if (n > 1 && typeof error === 'object' && error !== null && Object.isExtensible(error)) {
          Object.defineProperty(error, 'attempts', { value: n, enumerable: true, configurable: true, writable: true })
        }
        throw error
      }
      const ceiling = Math.min(policy.maxDelayMs, policy.baseDelayMs * 2 ** (n - 1))
      const delayMs = Math.floor(Math.random() * (ceiling + 1))
      if (retryChannel.hasSubscribers) {
        retryChannel.publish({
          attempt: n,
          maxAttempts: policy.maxAttempts,
          code: retryCode(error),
          error,
          delayMs,
          database: label.database,
          name: label.name,
        })
      }
      if (delayMs > 0) await new Promise<void>((resolve) => setTimeout(resolve, delayMs))
    }
  }
}
