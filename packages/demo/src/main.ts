/**
 * A tour of pg-atomic on a real PostgreSQL: every statement the library sends is printed as it
 * goes, followed by what happened to the data.
 *
 * Uses DATABASE_URL (or PG* variables) when set; otherwise starts an embedded PostgreSQL in a
 * temporary folder and removes it afterwards.
 */
import pg from 'pg'
import { startDatabase } from '@pg-atomic/devdb'
import diagnostics_channel from 'node:diagnostics_channel'
import {
  Atomic,
  RETRY_CHANNEL,
  TransactionManagementError,
  atomic,
  createDatabase,
  lockTable,
  onCommit,
  setRollback,
} from 'pg-atomic'
import { locksHeld } from 'pg-atomic/insight'
import { atomicListener } from 'pg-atomic/web'
import { createServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import type { RetryEvent } from 'pg-atomic'

const dim = (s: string): string => (process.stdout.isTTY ? `\x1b[2m${s}\x1b[0m` : s)
const bold = (s: string): string => (process.stdout.isTTY ? `\x1b[1m${s}\x1b[0m` : s)

let roundTrips = 0

/** The protocol messages of pg's connection that carry SQL text. */
interface TracedConnection {
  query(text: string): void
  parse(query: { text: string }): void
  on(event: string, fn: () => void): void
}

/**
 * A pg Client that prints every statement it sends, at the protocol level, one line per round trip
 * (statements that share a round trip, before one Sync, are joined with ⏎), and counts round trips
 * (ReadyForQuery).
 */
class TracingClient extends pg.Client {
  constructor(config?: string | pg.ClientConfig) {
    super(config)
    const connection = (this as unknown as { connection: TracedConnection }).connection
    let batch: string[] = []
    const query = connection.query.bind(connection)
    const parse = connection.parse.bind(connection)
    connection.query = (text: string): void => {
      batch.push(text)
      query(text)
    }
    connection.parse = (q: { text: string }): void => {
      batch.push(q.text)
      parse(q)
    }
    connection.on('readyForQuery', () => {
      roundTrips++
      if (batch.length > 0) console.log(dim(`     → ${batch.map((t) => t.replace(/\s+/g, ' ')).join(' ⏎ ')}`))
      batch = []
    })
  }
}

function section(title: string): void {
  roundTrips = 0
  console.log(`\n${bold(title)}`)
}

function outcome(text: string): void {
  console.log(`   ✓ ${text} ${dim(`(${roundTrips} round trips)`)}`)
}

async function main(): Promise<void> {
  const server = await startDatabase()
  const tracingPool = new pg.Pool({
    connectionString: server.url,
    max: 4,
    Client: TracingClient as unknown as typeof pg.Client,
  })
  const setup = new pg.Pool({ connectionString: server.url, max: 2 })
  // Pools created by the application need an 'error' listener, or a server restart crashes Node.
  // pg's end() can resolve before the sockets of idle connections have closed: the server stopping
  // right after can still end one of them, which is expected then and not worth printing.
  let stopping = false
  for (const pool of [tracingPool, setup])
    pool.on('error', (error) => {
      if (!stopping) console.error(`   (idle connection closed: ${error.message})`)
    })
  const db = createDatabase({ pool: tracingPool, lockTimeout: 2000 })
  try {
    const version = (await setup.query<{ v: string }>("select current_setting('server_version') as v")).rows[0]?.v
    console.log(
      `pg-atomic demo — PostgreSQL ${version ?? '?'} ` +
        `(${server.source === 'env' ? 'from DATABASE_URL' : server.source})`,
    )
    await setup.query(`
      drop table if exists demo_audit, demo_accounts;
      create table demo_accounts (id int primary key, owner text not null, balance int not null check (balance >= 0));
      create table demo_audit (id serial primary key, note text not null);
      insert into demo_accounts values (1, 'alice', 100), (2, 'bob', 50);`)
    const balances = async (): Promise<string> =>
      (
        await setup.query<{ owner: string; balance: number }>('select owner, balance from demo_accounts order by id')
      ).rows
        .map((r) => `${r.owner}=${r.balance}`)
        .join(', ')

    section('1. A transfer: one transaction; BEGIN and its SET LOCAL ride with the first statement; an onCommit hook')
    const sent: string[] = []
    await atomic(async () => {
      await db.query('update demo_accounts set balance = balance - $1 where id = $2', [30, 1])
      await db.query('update demo_accounts set balance = balance + $1 where id = $2', [30, 2])
      onCommit(() => {
        sent.push('receipt for transfer of 30')
      })
    })
    outcome(`committed: ${await balances()}; hook ran after COMMIT: ${JSON.stringify(sent)}`)

    section(
      '2. Nested blocks are savepoints: the failing one is rolled back, the rest ' +
        'commits (ROLLBACK TO merged with COMMIT)',
    )
    await atomic(async () => {
      await db.query("insert into demo_audit(note) values ('outer')")
      await atomic(() => db.query("insert into demo_audit(note) values ('first nested')"))
      await atomic(() => db.query("insert into demo_audit(note) values ('second nested')"))
      try {
        await atomic(async () => {
          await db.query('insert into demo_audit(note) values (null)') // violates NOT NULL
        })
      } catch (error) {
        console.log(`   ✗ third nested block failed: ${(error as Error).message}`)
      }
    })
    const notes = (await setup.query<{ note: string }>('select note from demo_audit order by id')).rows.map(
      (r) => r.note,
    )
    outcome(`committed audit rows: ${JSON.stringify(notes)} — hand-written pg needs 12 round trips for this`)

    section('3. A swallowed error never commits silently')
    try {
      await atomic(async () => {
        await db.query("insert into demo_audit(note) values ('lost?')")
        try {
          await db.query('select 1/0')
        } catch {
          // swallowed on purpose
        }
      })
    } catch (error) {
      const e = error as TransactionManagementError
      console.log(`   ✗ ${e.name}: ${e.message}`)
      console.log(`     cause: ${(e.cause as Error).message}`)
    }
    outcome(`audit rows still ${(await setup.query('select count(*)::int as n from demo_audit')).rows[0].n}`)

    section('4. setRollback(true): an intentional, silent rollback (a dry run)')
    const preview = await atomic(async () => {
      await db.query('update demo_accounts set balance = balance * 2')
      const doubled = await balances().then(() =>
        db.query<{ total: number }>('select sum(balance)::int as total from demo_accounts'),
      )
      setRollback(true)
      return doubled.rows[0]?.total
    })
    outcome(`inside the dry run the total was ${preview}; after it: ${await balances()}`)

    section('5. @Atomic({ durable: true }) refuses to run nested, before sending anything')
    class Payments {
      @Atomic({ durable: true, isolationLevel: 'serializable' })
      async settle(): Promise<void> {
        await db.query('update demo_accounts set balance = balance where id = 1')
      }
    }
    await new Payments().settle()
    try {
      await atomic(() => new Payments().settle())
    } catch (error) {
      console.log(`   ✗ ${(error as Error).name}: ${(error as Error).message}`)
    }
    outcome('the durable block committed on its own; nested, it was refused')

    section('6. Promise.all of sibling blocks in one transaction: serialized, never interleaved')
    await atomic(async () => {
      await Promise.all([
        atomic(() => db.query("insert into demo_audit(note) values ('sibling A')")),
        atomic(async () => {
          await db.query("insert into demo_audit(note) values ('sibling B')")
          throw new Error('B fails')
        }).catch((error: Error) => console.log(`   ✗ sibling B: ${error.message}`)),
        atomic(() => db.query("insert into demo_audit(note) values ('sibling C')")),
      ])
    })
    const siblings = (
      await setup.query<{ note: string }>("select note from demo_audit where note like 'sibling%' order by id")
    ).rows.map((r) => r.note)
    outcome(`committed: ${JSON.stringify(siblings)}`)

    section('7. A read-only serializable snapshot for reports')
    const total = await atomic({ isolationLevel: 'serializable', readOnly: true, deferrable: true }, async () => {
      const r = await db.query<{ total: number }>('select sum(balance)::int as total from demo_accounts')
      return r.rows[0]?.total
    })
    outcome(`total balance ${total}`)

    section('8. Two serializable transfers collide: the loser is retried as a whole, with backoff')
    const retries: RetryEvent[] = []
    const onRetry = (event: unknown): void => {
      retries.push(event as RetryEvent)
      console.log(
        `   ↻ attempt ${(event as RetryEvent).attempt} failed with ` +
          `${(event as RetryEvent).code}; retrying after ${(event as RetryEvent).delayMs} ms`,
      )
    }
    diagnostics_channel.subscribe(RETRY_CHANNEL, onRetry)
    let bothRead!: () => void
    let reads = 0
    const barrier = new Promise<void>((resolve) => {
      bothRead = resolve
    })
    const transfer = (amount: number): Promise<void> =>
      atomic({ isolationLevel: 'serializable', retry: { maxAttempts: 5, baseDelayMs: 10 } }, async () => {
        const balance =
          (await db.query<{ balance: number }>('select balance from demo_accounts where id = 1')).rows[0]?.balance ?? 0
        if (++reads === 2) bothRead()
        // Both read before either writes.
        await Promise.race([barrier, new Promise((resolve) => setTimeout(resolve, 200))])
        await db.query('update demo_accounts set balance = $1 where id = 1', [balance - amount])
      })
    await Promise.all([transfer(5), transfer(7)])
    diagnostics_channel.unsubscribe(RETRY_CHANNEL, onRetry)
    outcome(`both applied exactly once (${retries.length} retry): ${await balances()} — no lost update`)

    section('9. A table lock, and what the transaction holds (pg_locks, decoded)')
    await atomic(async () => {
      await lockTable(['demo_audit', 'demo_accounts'], 'share row exclusive', { nowait: true })
      const held = await locksHeld()
      for (const lock of held)
        console.log(`   🔒 ${lock.target}: ${lock.mode} (${lock.granted ? 'granted' : 'waiting'})`)
    })
    outcome('both tables locked in one canonical order, released at COMMIT')

    section('10. A transaction per HTTP request: the response leaves only after COMMIT')
    await setup.query(
      'alter table demo_audit add constraint demo_audit_note unique (note) deferrable initially deferred',
    )
    const web = createServer(
      atomicListener({}, async (req, res) => {
        // A deferred unique constraint is checked at COMMIT: the second request's COMMIT fails.
        await db.query('insert into demo_audit (note) values ($1)', ['request ' + (req.url ?? '')])
        res.setHeader('content-type', 'text/plain')
        res.end('saved\n')
      }),
    )
    await new Promise<void>((resolve) => web.listen(0, '127.0.0.1', resolve))
    const { port } = web.address() as AddressInfo
    try {
      const first = await fetch(`http://127.0.0.1:${port}/a`)
      console.log(`   ${first.status} ${(await first.text()).trim()}`)
      await setup.query("insert into demo_audit (note) values ('request /b')")
      const second = await fetch(`http://127.0.0.1:${port}/b`)
      console.log(`   ${second.status} ${(await second.text()).trim()}`)
    } finally {
      await new Promise<void>((resolve) => web.close(() => resolve()))
    }
    outcome('the first was committed, then answered 200; the second failed at COMMIT and was answered 500')

    section("11. propagation: 'requiresNew': an audit row that survives the caller's rollback")
    class AuditLog {
      // An independent transaction on another connection; the caller's is suspended meanwhile.
      @Atomic({ propagation: 'requiresNew' })
      async record(note: string): Promise<void> {
        await db.query('insert into demo_audit (note) values ($1)', [note])
      }
    }
    try {
      await atomic(async () => {
        await db.query('update demo_accounts set balance = balance - 10 where id = 2')
        await new AuditLog().record('refund attempted')
        throw new Error('the payment provider said no')
      })
    } catch (error) {
      console.log(`   ✗ ${(error as Error).message}: the caller's transaction rolled back`)
    }
    const audit = (
      await setup.query<{ note: string }>("select note from demo_audit where note = 'refund attempted'")
    ).rows.map((r) => r.note)
    outcome(`audit ${JSON.stringify(audit)} committed on its own; balances unchanged: ${await balances()}`)

    const idle = (
      await setup.query("select count(*)::int as n from pg_stat_activity where state like 'idle in transaction%'")
    ).rows[0].n
    console.log(
      `\n${bold('Done.')} Sessions idle in transaction: ${idle}. Pool: ` +
        `${tracingPool.totalCount} connections, ${tracingPool.idleCount} idle.`,
    )
    await setup.query('drop table demo_audit, demo_accounts')
  } finally {
    stopping = true
    await db.close()
    await tracingPool.end()
    await setup.end()
    await server.stop()
  }
}

main().catch((error: unknown) => {
  console.error(error)
  process.exitCode = 1
})
