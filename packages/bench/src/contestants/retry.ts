/**
 * The retry a user writes by hand around a library that has none: run the whole transaction again,
 * at once, on a serialization failure (40001) or a deadlock (40P01).
 *
 * @module
 */
import { MAX_ATTEMPTS } from './types'

/** Serialization failure and deadlock. */
export const RETRYABLE: ReadonlySet<string> = new Set(['40001', '40P01'])

/** The SQLSTATE of a driver error (pg, postgres.js and the libraries above them all use `code`). */
export function sqlState(error: unknown): string | undefined {
  if (typeof error !== 'object' || error === null || !('code' in error)) return undefined
  return typeof error.code === 'string' ? error.code : undefined
}

/** Runs `transaction` until it succeeds, fails otherwise, or has run {@link MAX_ATTEMPTS} times. */
export async function retryLoop(transaction: () => Promise<void>): Promise<void> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await transaction()
    } catch (error) {
      if (attempt >= MAX_ATTEMPTS || !RETRYABLE.has(sqlState(error) ?? '')) throw error
    }
  }
}
