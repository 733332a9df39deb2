/**
 * The server and the benchmark's own database on it: `startDatabase()` (DATABASE_URL / PG*, else an
 * embedded PostgreSQL), then a fresh database `pga_bench_<hex>`, dropped at the end.
 *
 * @module
 */
import { randomBytes } from 'node:crypto'
import pg from 'pg'
import { startDatabase } from '@pg-atomic/devdb'
import type { DevDatabase } from '@pg-atomic/devdb'

export interface BenchDatabase {
  readonly server: DevDatabase
  /** The benchmark database, directly. */
  readonly url: string
  readonly host: string
  readonly port: number
  readonly serverVersion: string
  /** The same database through a proxy listening on 127.0.0.1:`port`. */
  through(port: number): string
  drop(): Promise<void>
}

export async function openBenchDatabase(): Promise<BenchDatabase> {
  const server = await startDatabase()
  const name = `pga_bench_${randomBytes(4).toString('hex')}`
  const admin = new pg.Client({ connectionString: server.url })
  await admin.connect()
  let serverVersion: string
  try {
    serverVersion = (await admin.query<{ v: string }>('select version() as v')).rows[0]?.v ?? 'unknown'
    await admin.query(`create database ${name}`)
  } finally {
    await admin.end()
  }
  const url = new URL(server.url)
  url.pathname = `/${name}`
  const host = url.hostname === '' || url.hostname === 'localhost' ? '127.0.0.1' : url.hostname
  const port = Number(url.port || 5432)
  return {
    server,
    url: url.toString(),
    host,
    port,
    serverVersion,
    through(proxyPort: number) {
      const proxied = new URL(url.toString())
      proxied.hostname = '127.0.0.1'
      proxied.port = String(proxyPort)
      return proxied.toString()
    },
    async drop() {
      const client = new pg.Client({ connectionString: server.url })
      try {
        await client.connect()
        await client.query(`drop database if exists ${name} with (force)`)
      } finally {
        await client.end().catch(() => undefined)
        await server.stop()
      }
    },
  }
}
