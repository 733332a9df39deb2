/**
 * Jest globalTeardown: stops the server globalSetup started (a no-op when it
 * came from DATABASE_URL / PG* variables).
 */
export default async function globalTeardown(): Promise<void> {
  const database = globalThis.__pgAtomicDevDatabase
  globalThis.__pgAtomicDevDatabase = undefined
  await database?.stop()
}
