/**
 * The messages between the benchmark and its proxy process (over the IPC channel of `fork`).
 *
 * @module
 */

/** Sent by the benchmark. */
export type ProxyCommand =
  | { readonly type: 'start'; readonly host: string; readonly port: number; readonly delayMs: number }
  | { readonly type: 'reset'; readonly id: number; readonly trace: boolean }
  | { readonly type: 'stats'; readonly id: number }

/** Sent by the proxy. */
export type ProxyReply =
  | { readonly type: 'listening'; readonly port: number }
  | { readonly type: 'done'; readonly id: number }
  | { readonly type: 'stats'; readonly id: number; readonly stats: ProxyStats }

/** What the proxy counted since the last reset. */
export interface ProxyStats {
  /** Transactions completed (a run of ReadyForQuery from the first not idle to the next idle). */
  readonly transactions: number
  /** Of which ended with COMMIT. */
  readonly commits: number
  /** ReadyForQuery messages in those transactions: round trips, as issue 8 counts them. */
  readonly z: number
  /** Waits with nothing in flight in those transactions (≤ z; less only when the client pipelines). */
  readonly flights: number
  /** Transactions by their count of ReadyForQuery. */
  readonly zHistogram: Readonly<Record<string, number>>
  /** ReadyForQuery outside transactions (autocommit statements). */
  readonly autocommit: number
  /** Connections that completed their startup. */
  readonly connections: number
  /** Server errors by SQLSTATE. */
  readonly serverErrors: Readonly<Record<string, number>>
  /** The statements of the first transactions after the reset, when tracing. */
  readonly traces: readonly (readonly string[])[]
  /** The delay the proxy actually added per chunk and direction. */
  readonly delay: {
    readonly requestedMs: number
    readonly samples: number
    readonly p50Ms: number
    readonly p99Ms: number
    readonly maxMs: number
  }
}
