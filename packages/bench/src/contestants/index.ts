/**
 * The contestants by id.
 *
 * @module
 */
import { createKysely } from './kysely'
import { createPg } from './pg'
import { createPgAtomic } from './pg-atomic'
import { createPgPromise } from './pg-promise'
import { createPostgresJs } from './postgres-js'
import type { ConnectOptions, Contestant, ContestantId } from './types'

export { CONTESTANT_IDS, MAX_ATTEMPTS, PlannedFailure } from './types'
export type { ContestantId, Contestant, TpcbParams, TransferParams } from './types'

const FACTORIES: Record<ContestantId, (options: ConnectOptions) => Contestant | Promise<Contestant>> = {
  pg: createPg,
  'pg-atomic': createPgAtomic,
  kysely: createKysely,
  'pg-promise': createPgPromise,
  'postgres.js': createPostgresJs,
}

/** Connects the contestants `ids` to `url`, each with a pool of `poolSize`. */
export async function connectContestants(
  ids: readonly ContestantId[],
  url: string,
  poolSize: number,
): Promise<Contestant[]> {
  const contestants: Contestant[] = []
  for (const id of ids) contestants.push(await FACTORIES[id]({ url, poolSize }))
  return contestants
}

/** Closes them all, even when one fails. */
export async function closeContestants(contestants: readonly Contestant[]): Promise<void> {
  await Promise.allSettled(contestants.map((c) => c.close()))
}
