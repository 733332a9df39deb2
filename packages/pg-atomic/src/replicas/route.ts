/**
 * Which server an outermost block checks out its connection from: the one place it is decided.
 *
 * @module
 * @internal
 */
import type { ResolvedOptions, TransactionDefaults } from '../options'

/** The server a transaction runs on. @internal */
export type Server = 'primary' | 'replica'

/**
 * The server of a new outermost block of `db` with `options`:
 *
 * 1. no replicas configured: the primary;
 * 2. read-write (or the server's default mode): the primary — it may write;
 * 3. read-only but `serializable`: the primary — a standby refuses serializable transactions
 *    ("cannot use serializable mode in a hot standby");
 * 4. read-only otherwise: a replica — which one, and whether it has replayed the context's last
 *    commit, is decided at checkout (router.ts), where the primary may still serve it.
 *
 * Nested blocks never get here: they run in their outermost block's transaction, on its server.
 * @internal
 */
export function outermostBlockServer(
  db: { readonly hasReplicas: boolean; readonly defaults: Readonly<TransactionDefaults> },
  options: ResolvedOptions,
): Server {
  if (!db.hasReplicas) return 'primary'
  if ((options.readOnly ?? db.defaults.readOnly) !== true) return 'primary'
  if ((options.isolationLevel ?? db.defaults.isolationLevel) === 'serializable') return 'primary'
  return 'replica'
}
