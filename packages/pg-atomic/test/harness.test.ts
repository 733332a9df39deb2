/**
 * Self-test of the test harness (support/database.ts), independent of the
 * library: proves a real server is reachable and that drop() catches leaks.
 */
import { Client, Pool } from 'pg'

import { adminUrl, assertPoolIdle, createTestDatabase } from './support/database.js'

async function databaseExists(name: string): Promise<boolean> {
  const client = new Client({ connectionString: adminUrl() })
  await client.connect()
  try {
    const { rowCount } = await client.query('SELECT 1 FROM pg_database WHERE datname = $1', [name])
    return rowCount === 1
  } finally {
    await client.end()
  }
}

describe('test harness', () => {
  it('creates a fresh database, runs a query in it and drops it', async () => {
    const db = await createTestDatabase('Harness: basic!')
    expect(db.name).toMatch(/^pga_harness_basic_[0-9a-f]{12}$/)
    expect(new URL(db.url).searchParams.get('application_name')).toBe(db.applicationName)

    const client = new Client({ connectionString: db.url })
    await client.connect()
    try {
      const { rows } = await client.query<{ db: string; app: string; n: number }>(
        "SELECT current_database() AS db, current_setting('application_name') AS app, 41 + 1 AS n",
      )
      expect(rows).toEqual([{ db: db.name, app: db.applicationName, n: 42 }])
    } finally {
      await client.end()
    }

    expect(await databaseExists(db.name)).toBe(true)
    await db.drop()
    expect(await databaseExists(db.name)).toBe(false)
    await db.drop() // idempotent
  })

  it('drop() refuses while a session is idle in transaction, naming the session', async () => {
    const db = await createTestDatabase('harness leak')
    const leaked = new Client({ connectionString: db.url })
    await leaked.connect()
    try {
      await leaked.query('BEGIN')
      const { rows } = await leaked.query<{ pid: number }>('SELECT pg_backend_pid() AS pid')
      const pid = rows[0]?.pid
      expect(typeof pid).toBe('number')

      const failure = await db.drop().then(
        () => undefined,
        (error: unknown) => error,
      )
      expect(failure).toBeInstanceOf(Error)
      const message = (failure as Error).message
      expect(message).toContain(`session pid ${pid}`)
      expect(message).toContain(db.applicationName)
      expect(message).toContain('idle in transaction')
      expect(await databaseExists(db.name)).toBe(true)
    } finally {
      await leaked.end()
    }
    await db.drop()
    expect(await databaseExists(db.name)).toBe(false)
  })

  it('drop() refuses while an advisory lock is held', async () => {
    const db = await createTestDatabase('harness lock')
    const holder = new Client({ connectionString: db.url })
    await holder.connect()
    try {
      await holder.query('SELECT pg_advisory_lock(4242)')
      await expect(db.drop()).rejects.toThrow(/advisory lock 0:4242:1 \(ExclusiveLock, granted\)/)
      await holder.query('SELECT pg_advisory_unlock(4242)')
    } finally {
      await holder.end()
    }
    await db.drop()
  })

  it('assertPoolIdle() detects checked-out clients', async () => {
    const db = await createTestDatabase('harness pool')
    const pool = new Pool({ connectionString: db.url, max: 2 })
    try {
      assertPoolIdle(pool)
      const client = await pool.connect()
      expect(() => assertPoolIdle(pool)).toThrow(/1 client\(s\) checked out/)
      client.release()
      assertPoolIdle(pool)
    } finally {
      await pool.end()
    }
    await db.drop()
  })
})
