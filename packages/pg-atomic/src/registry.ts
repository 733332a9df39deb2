/**
 * Databases by alias: `createDatabase()` registers, `db.close()` unregisters, and the module-level
 * functions (`atomic({ using })`, the lock helpers) look databases up here.
 *
 * @module
 * @internal
 */
import type { Block } from './atomic/block'
import type { DatabaseImpl } from './database'
import { TransactionManagementError } from './errors'

const databases = new Map<string, DatabaseImpl>()

/** Registers `db` under its alias; `false` when the alias is taken. @internal */
export function register(db: DatabaseImpl): boolean {
  if (databases.has(db.alias)) return false
  databases.set(db.alias, db)
  return true
}

/** Frees the alias of `db` (only if it is still registered under it). @internal */
export function unregister(db: DatabaseImpl): void {
  if (databases.get(db.alias) === db) databases.delete(db.alias)
}

/** The open test transaction of pg-atomic/testing: the default database's, else the first found. @internal */
export function findTestRoot(): Block | undefined {
  const preferred = databases.get('default')?.testRoot
  if (preferred !== undefined) return preferred
  for (const db of databases.values()) if (db.testRoot !== undefined) return db.testRoot
  return undefined
}

/** The database registered under `alias`, or `undefined`. @internal */
export function findDatabase(alias: string): DatabaseImpl | undefined {
  return databases.get(alias)
}

/** The database registered under `alias`; a `TransactionManagementError` naming the fix otherwise. @internal */
export function requireDatabase(alias: string): DatabaseImpl {
  const db = databases.get(alias)
  if (db === undefined) {
    const call = alias === 'default' ? 'createDatabase()' : `createDatabase({ alias: '${alias}', ... })`
    throw new TransactionManagementError(`No database is registered under the alias '${alias}': call ${call} first.`)
  }
  return db
}

/** Every registered database (the pool gauges of pg-atomic/otel read them). @internal */
export function registeredDatabases(): IterableIterator<DatabaseImpl> {
  return databases.values()
}
