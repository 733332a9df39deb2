/**
 * Durations on the command line (`500ms`, `30s`, `5m`, `1h`) and in the output (`5m 3s`).
 *
 * @module
 */
import { usageError } from './errors'

const UNITS: Readonly<Record<string, number>> = Object.freeze({ ms: 1, s: 1000, m: 60_000, h: 3_600_000 })

/**
 * Parses `500ms`, `30s`, `1.5s`, `5m`, `1h` (and `0`) into milliseconds (rounded). Anything else
 * is a usage error naming `option`.
 */
export function parseDuration(text: string, option: string): number {
  const trimmed = text.trim()
  if (trimmed === '0') return 0
  const match = /^(\d+(?:\.\d+)?)(ms|s|m|h)$/.exec(trimmed)
  if (match === null) {
    throw usageError(`invalid value for ${option}: '${text}' is not a duration; write it like 500ms, 30s, 5m or 1h.`)
  }
  const ms = Math.round(Number(match[1]) * (UNITS[match[2] as string] as number))
  if (!Number.isSafeInteger(ms) || ms > 2_147_483_647)
    throw usageError(`invalid value for ${option}: '${text}' is too long (at most 596h).`)
  return ms
}

/** `450ms`, `12.3s`, `5m 3s`, `2h 5m`, `3d 4h`. */
export function formatDuration(ms: number | null | undefined): string {
  if (ms === null || ms === undefined || !Number.isFinite(ms)) return '-'
  const value = Math.max(0, ms)
  if (value < 1000) return `${Math.round(value)}ms`
  if (value < 60_000) return `${(Math.floor(value / 100) / 10).toFixed(1)}s`
  const totalSeconds = Math.floor(value / 1000)
  const days = Math.floor(totalSeconds / 86_400)
  const hours = Math.floor((totalSeconds % 86_400) / 3600)
  const minutes = Math.floor((totalSeconds % 3600) / 60)
  const seconds = totalSeconds % 60
  if (days > 0) return `${days}d ${hours}h`
  if (hours > 0) return `${hours}h ${minutes}m`
  return `${minutes}m ${seconds}s`
}
