/**
 * `pg-atomic/insight`: lock insight for DBA tooling. What the current transaction holds
 * (`locksHeld`), who waits for whom (`lockWaits`), sessions idle in a transaction
 * (`idleInTransaction`, `terminateSessions`), which locks a statement takes (`explainLocks`),
 * and PostgreSQL's lock modes as data (the conflict matrix). The `pg-atomic` command line is
 * built on it.
 *
 * @example
 * ```ts
 * import { createDatabase } from 'pg-atomic'
 * import { lockWaits } from 'pg-atomic/insight'
 *
 * createDatabase({ connectionString: process.env.DATABASE_URL })
 * for (const root of await lockWaits()) console.log(root.pid, root.state, root.blocking.length)
 * ```
 *
 * @packageDocumentation
 */
export { locksHeld } from './locks-held'
export { lockWaits } from './lock-waits'
export { idleInTransaction, terminateSessions } from './idle'
export { explainLocks } from './explain'
export { assertExplainable } from './classify'
export { serverInfo } from './server-info'
export { describeAdvisoryKey } from './pg-locks'
export { INSIGHT_DEFAULTS } from './options'
export { LOCK_CONFLICT_MATRIX, LOCK_TAKEN_BY, blockedStatements, conflictingModes, conflicts } from './conflicts'
export { parseLockMode } from '../locks/modes'
export { PG_LOCK_MODE_NAMES } from '../vocabulary'
export type {
  ExplainLocksOptions,
  ExplainedLock,
  IdleInTransactionOptions,
  IdleSession,
  InsightOptions,
  LockInfo,
  LockReport,
  LockWaitNode,
  LockWaitsOptions,
  RelationRef,
  RowLockInfo,
  RowLocksReport,
  ServerInfo,
  SessionTermination,
  TerminateSessionsOptions,
} from './types'
