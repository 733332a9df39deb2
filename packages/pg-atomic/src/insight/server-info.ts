/**
 * `serverInfo()`: which database, role and server version a database object reaches.
 *
 * @module
 */
import { SERVER_INFO_SQL } from '../sql/insight'
import { insightDatabase, insightFields, inspect, parseInsightOptions } from './options'
import type { InsightOptions, ServerInfo } from './types'

/**
 * The database, role and server version the database's connections reach (`current_database()`,
 * `current_user`, `server_version_num`): one statement, also a check that the server answers.
 * Inside a block of the database it runs in the block.
 *
 * Default: the database of the innermost active block, else `'default'`.
 *
 * @example
 * ```ts
 * const { database, serverVersion } = await serverInfo()
 * console.log(database, serverVersion >= 140000 ? 'waitstart available' : 'PostgreSQL 13 or older')
 * ```
 */
export async function serverInfo(options?: InsightOptions): Promise<ServerInfo> {
  const o = parseInsightOptions({ using: insightFields.using }, options, 'serverInfo()')
  const db = insightDatabase(o.using)
  const { rows } = await inspect<{ database: string; role: string; version: number }>(db, SERVER_INFO_SQL)
  const row = rows[0] as { database: string; role: string; version: number }
  return Object.freeze({ database: row.database, role: row.role, serverVersion: row.version })
}
