/**
 * Control statements ride in the same round trip as the statement that follows them, before one
 * Sync (issue 8 §1), and a statement never runs outside the transaction or savepoint it was issued
 * in: when `BEGIN`, a `SET LOCAL` or a `SAVEPOINT` sent with it fails — or the connection is cut
 * between them — the statement did not run at all on the server.
 *
 * "Did not run" is observed through a sequence: the statement takes `nextval('seq')`, and a
 * sequence advances even when the transaction that advanced it rolls back. The statements reach
 * the server through a fault proxy that rewrites a control statement so that it fails, or cuts
 * the connection before or after it.
 */
import pg from 'pg'
import diagnostics_channel from 'node:diagnostics_channel'
import { ConnectionLostError, STATEMENT_CHANNEL, TransactionManagementError, atomic, createDatabase } from 'pg-atomic'
import type { Database, StatementEvent } from 'pg-atomic'
import { INJECTED_FAILURE_SQL, startFaultProxy, targetOf } from './support/fault-proxy'
import type { FaultProxy, StatementFault } from './support/fault-proxy'
import { rejection, setupHarness } from './support/harness'
import type { Harness } from './support/harness'
import { waitUntil } from './support/wait'

let h: Harness
let proxy: FaultProxy
let db: Database
const events: StatementEvent[] = []
const onEvent = (message: unknown): void => void events.push(message as StatementEvent)

const INSERT = "insert into t (x) values (nextval('seq'))"

beforeAll(async () => {
  h = await setupHarness('pipelining')
  await h.admin.query('create table t (x int primary key); create sequence seq')
  proxy = await startFaultProxy(targetOf(h.testDb.directUrl))
  db = createDatabase({ connectionString: proxy.urlFor(h.testDb.directUrl), alias: 'proxied', max: 2 })
  diagnostics_channel.subscribe(STATEMENT_CHANNEL, onEvent)
})

afterAll(async () => {
  diagnostics_channel.unsubscribe(STATEMENT_CHANNEL, onEvent)
  await db.close()
  await proxy.close()
  await h.close()
})

beforeEach(async () => {
  await h.admin.query("truncate t; select setval('seq', 1, false)")
  h.reset()
  events.length = 0
})

afterEach(async () => {
  // Nothing is left idle in transaction, and the pool holds only healthy idle connections.
  await waitUntil(async () => (await idle()).length === 0, 'no session idle in transaction')
  expect(db.pool.waitingCount).toBe(0)
  expect(db.pool.idleCount).toBe(db.pool.totalCount)
})

const idle = () =>
  h.column<number>(
    "select pid from pg_stat_activity where datname = current_database() and state like 'idle in transaction%'",
  )
/** Whether `nextval('seq')` was ever called since the reset: the statement ran. */
const sequenceUsed = async () => (await h.rows<{ is_called: boolean }>('select is_called from seq'))[0]?.is_called

interface Case {
  readonly label: string
  /** The control statement the fault hits. */
  readonly target: RegExp
  /** Runs the transaction whose statement must not run. */
  readonly run: () => Promise<unknown>
}

const cases: readonly Case[] = [
  {
    label: 'BEGIN',
    target: /^BEGIN ISOLATION LEVEL REPEATABLE READ$/,
    run: () => db.atomic({ isolationLevel: 'repeatable read' }, () => db.query(INSERT)),
  },
  {
    label: 'a SET LOCAL after BEGIN',
    target: /^SET LOCAL lock_timeout = 1234$/,
    run: () => db.atomic({ lockTimeout: 1234 }, () => db.query(INSERT)),
  },
  {
    label: 'the SAVEPOINT of a nested block',
    target: /^SAVEPOINT "pga_1"$/,
    run: () =>
      db.atomic(async () => {
        await db.query('select 1')
        await db.atomic(() => db.query(INSERT))
      }),
  },
]

describe.each(cases)('$label sent with the statement', ({ target, run }) => {
  test(
    'fails on the server: the statement does not run, the caller gets that error, ' + 'nothing is left open',
    async () => {
      const hit = proxy.armStatementFault(target, 'fail')
      const sent = proxy.queries.length
      const error = await rejection(run())
      const text = await hit
      expect(target.test(text)).toBe(true)
      // The statement was on the wire, in the same round trip, and was skipped by the server.
      const after = proxy.queries.slice(sent)
      expect(after.indexOf(INSERT)).toBeGreaterThan(after.indexOf(text))
      expect(error).toBeInstanceOf(pg.DatabaseError)
      expect(error).toMatchObject({ code: '22012', message: 'division by zero' })
      expect(await sequenceUsed()).toBe(false)
      expect(await h.column('select x from t')).toEqual([])
    },
  )

  test('the connection is cut right before it: the statement does not run, ConnectionLostError', async () => {
    const hit = proxy.armStatementFault(target, 'cut-before')
    const error = await rejection(run())
    expect(target.test(await hit)).toBe(true)
    expect(error).toBeInstanceOf(ConnectionLostError)
    expect(await sequenceUsed()).toBe(false)
    expect(await h.column('select x from t')).toEqual([])
  })

  test('the connection is cut right after it ran: the statement does not run, ConnectionLostError', async () => {
    const hit = proxy.armStatementFault(target, 'cut-after')
    const error = await rejection(run())
    expect(target.test(await hit)).toBe(true)
    expect(error).toBeInstanceOf(ConnectionLostError)
    expect(await sequenceUsed()).toBe(false)
    expect(await h.column('select x from t')).toEqual([])
  })
})

test(
  'without faults the same transactions run the statement, in one round trip with ' + 'their control statements',
  async () => {
    for (const { run } of cases) await run()
    expect(await h.column('select x from t order by x')).toEqual([1, 2, 3])
    expect(events.filter((e) => e.withStatement).map((e) => e.sql)).toEqual([
      'BEGIN ISOLATION LEVEL REPEATABLE READ',
      'BEGIN',
      'SET LOCAL lock_timeout = 1234',
      'BEGIN',
      'SAVEPOINT "pga_1"',
    ])
  },
)

test(
  'a failed control statement makes the transaction unusable: the block rolls back ' +
    'and later statements are refused',
  async () => {
    void proxy.armStatementFault(/^SAVEPOINT "pga_1"$/, 'fail')
    let refused: unknown
    const error = await rejection(
      db.atomic(async () => {
        await db.query(INSERT)
        await rejection(db.atomic(() => db.query(INSERT)))
        refused = await rejection(db.query(INSERT))
      }),
    )
    expect(refused).toBeInstanceOf(TransactionManagementError)
    expect((refused as Error).message).toBe(
      'A transaction control statement failed, so the state of the transaction is ' +
        'unknown; it will be rolled back and no further statements can run in it.',
    )
    expect(error).toBeInstanceOf(TransactionManagementError)
    expect((error as Error).message).toBe((refused as Error).message)
    expect(await h.column('select x from t')).toEqual([])
    // The first statement ran (and was rolled back); the second never ran.
    expect((await h.rows<{ last_value: string }>('select last_value from seq'))[0]?.last_value).toBe('1')
    const savepoint = events.find((e) => e.kind === 'savepoint')
    expect(savepoint).toMatchObject({
      sql: 'SAVEPOINT "pga_1"',
      withStatement: true,
      batchSize: 1,
      error: { code: '22012' },
    })
  },
)

describe('what is pipelined and what keeps a round trip of its own', () => {
  test('parameters, rowMode and result fields behave as with client.query()', async () => {
    const result = await atomic(() =>
      h.db.query({ text: 'select $1::int as n, $2::text as s', values: [7, 'x'], rowMode: 'array' } as pg.QueryConfig),
    )
    expect(result.rows).toEqual([[7, 'x']])
    expect(result.fields.map((f) => f.name)).toEqual(['n', 's'])
    expect(result).toMatchObject({ command: 'SELECT', rowCount: 1 })
    expect(h.batches).toEqual([['BEGIN', 'select $1::int as n, $2::text as s'], ['COMMIT']])
  })

  test(
    'several statements in one string keep the simple protocol: the control ' + 'statements go first, on their own',
    async () => {
      await atomic(() => h.db.query('select 1; select 2'))
      expect(h.batches).toEqual([['BEGIN'], ['select 1; select 2'], ['COMMIT']])
    },
  )

  test('a named prepared statement keeps its own round trip', async () => {
    await atomic(() => h.db.query({ name: 'pga_test_named', text: 'select $1::int as n', values: [1] }))
    expect(h.batches).toEqual([['BEGIN'], ['select $1::int as n'], ['COMMIT']])
  })

  test('a cursor gets its control statements in a round trip of their own, then its portal', async () => {
    const rows: unknown[] = []
    await atomic(async () => {
      for await (const row of h.db.cursor('select g from generate_series(1, 3) g', [], { batchSize: 10 }))
        rows.push(row)
    })
    expect(rows).toEqual([{ g: 1 }, { g: 2 }, { g: 3 }])
    expect(h.batches[0]).toEqual(['BEGIN'])
    expect(h.batches.at(-1)).toEqual(['COMMIT'])
  })

  test('a value pg cannot serialise fails before anything is sent', async () => {
    const circular: Record<string, unknown> = {}
    circular['self'] = circular
    const error = await rejection(atomic(() => h.db.query('select $1::jsonb', [circular])))
    expect(error).toBeInstanceOf(TypeError)
    expect(h.statements).toEqual([])
  })
})

test.each<[string, StatementFault]>([
  ['fail', 'fail'],
  ['cut-after', 'cut-after'],
])(
  'a ROLLBACK TO that rides with the next statement (%s): the statement does not run in the wrong savepoint',
  async (_label, mode) => {
    void proxy.armStatementFault(/^ROLLBACK TO SAVEPOINT "pga_1"$/, mode)
    const error = await rejection(
      db.atomic(async () => {
        await db.query('select 1')
        await rejection(
          db.atomic(async () => {
            await db.query('select 2')
            throw new Error('roll back the nested block')
          }),
        )
        // Same turn: the pending ROLLBACK TO + RELEASE ride with this statement.
        await db.query(INSERT)
      }),
    )
    expect(error).toBeInstanceOf(mode === 'fail' ? pg.DatabaseError : ConnectionLostError)
    expect(await sequenceUsed()).toBe(false)
    expect(await h.column('select x from t')).toEqual([])
    expect(INJECTED_FAILURE_SQL).toBe('SELECT 1/0')
  },
)

test(
  "negative control: pg's own pipeline mode (one Sync per query) lets the " +
    'statement run in autocommit when BEGIN fails',
  async () => {
    const client = new pg.Client({
      connectionString: proxy.urlFor(h.testDb.directUrl),
      pipeline: true,
    } as pg.ClientConfig)
    await client.connect()
    try {
      void proxy.armStatementFault(/^BEGIN ISOLATION LEVEL REPEATABLE READ$/, 'fail')
      const begin = client.query({
        text: 'BEGIN ISOLATION LEVEL REPEATABLE READ',
        queryMode: 'extended',
      } as pg.QueryConfig)
      const insert = client.query({ text: INSERT, queryMode: 'extended' } as pg.QueryConfig)
      const outcomes = await Promise.allSettled([begin, insert])
      expect(outcomes.map((o) => o.status)).toEqual(['rejected', 'fulfilled'])
    } finally {
      await client.end()
    }
    // What pg-atomic's single Sync prevents: the statement ran, outside any transaction, and stays.
    expect(await sequenceUsed()).toBe(true)
    expect(await h.column('select x from t')).toEqual([1])
  },
)
