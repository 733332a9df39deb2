/**
 * WAL positions (LSNs) as PostgreSQL prints them (`16/B374D848`) and as numbers to compare.
 *
 * @module
 * @internal
 */

/** Parses `'16/B374D848'` into a number that orders like the WAL; `undefined` for anything else. @internal */
export function parseLsn(text: unknown): bigint | undefined {
  if (typeof text !== 'string') return undefined
  const match = /^([0-9A-Fa-f]{1,8})\/([0-9A-Fa-f]{1,8})$/.exec(text)
  if (match === null) return undefined
  return (BigInt(`0x${match[1] as string}`) << 32n) + BigInt(`0x${match[2] as string}`)
}

/** Formats a WAL position as PostgreSQL does (`16/B374D848`). @internal */
export function formatLsn(lsn: bigint): string {
  return `${(lsn >> 32n).toString(16).toUpperCase()}/${(lsn & 0xffffffffn).toString(16).toUpperCase()}`
}
