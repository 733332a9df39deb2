/**
 * Regressions found by an independent review of the block state machine split (src/atomic/), the
 * db.pool builder blocks and the test kit; each test failed before its fix and states the expected
 * behaviour: two concurrent builder transactions in one block keep their own outcomes; COPY FROM
 * STDIN as the first statement of a round trip fails instead of hanging the connection; an onCommit
 * hook in a builder transaction directly in a test transaction is captured.
 */
import { Kysely, PostgresDialect } from 'kysely'
import Cursor from 'pg-cursor'
import { atomic, createDatabase, onCommit } from 'pg-atomic'
import { captureOnCommit, startTestTransaction } from 'pg-atomic/testing'
import { setupHarness } from './support/harness'
import type { Harness } from './support/harness'
import { Boom } from './support/errors'
import { sleep } from './support/wait'

interface Tables {
  t: { x: number }
}

let h: Harness
let kdb: Kysely<Tables>

const committed = () => h.column<number>('select x from t order by x')

beforeAll(async () => {
  h = await setupHarness('review findings')
  await h.admin.query('create table t (x int not null)')
  kdb = new Kysely<Tables>({ dialect: new PostgresDialect({ pool: h.db.pool, cursor: Cursor }) })
})

afterAll(async () => {
  await h.close()
})

beforeEach(async () => {
  await h.admin.query('truncate t')
  h.reset()
})

afterEach(() => {
  expect(h.pool.idleCount).toBe(h.pool.totalCount)
})

/** Waits for `signal`, or at most `ms` (so a fix that serializes the two transactions cannot deadlock the test). */
const atMost = (signal: Promise<void>, ms: number) => Promise.race([signal, sleep(ms)])

describe('builder transactions on db.pool clients', () => {
  // Two query-builder transactions running concurrently in one atomic() block (Promise.all of two
  // kdb.transaction() calls, two db.pool clients) are independent transactions for the code: each
  // commits or rolls back its own work. Expected: the second BEGIN waits for the first builder
  // transaction to end (the builder block holds the enclosing block's turn), or is refused; either
  // way A's committed row 1 stays and B's rolled-back row 2 is gone: [1].
  //
  // Actual: B's BEGIN is routed through builderTail() into A's open builder block (B becomes a
  // savepoint *inside* A), and A's statements are routed into B's savepoint (BlockClient.target
  // -> Block.query -> route() -> builderTail()). A's COMMIT then closes B (closeBuilderBlock closes
  // builderChild with A's outcome), so B's later ROLLBACK is a no-op and B's row commits; or, when
  // B's ROLLBACK comes first, it rolls back A's row. Either way the result is not [1].
  test('two concurrent Kysely transactions in one block keep their own outcomes', async () => {
    let bInserted!: () => void
    const bReady = new Promise<void>((resolve) => (bInserted = resolve))
    let aInserted!: () => void
    const aDone = new Promise<void>((resolve) => (aInserted = resolve))
    const outcomes = await atomic(async () =>
      Promise.allSettled([
        kdb.transaction().execute(async (trx) => {
          await atMost(bReady, 300)
          await trx.insertInto('t').values({ x: 1 }).execute()
          aInserted()
        }),
        (async () => {
          await sleep(20) // A's BEGIN first
          return kdb.transaction().execute(async (trx) => {
            await trx.insertInto('t').values({ x: 2 }).execute()
            bInserted()
            await atMost(aDone, 300)
            throw new Boom('B rolls back its own transaction')
          })
        })(),
      ]),
    )
    expect(outcomes.map((o) => o.status)).toEqual(['fulfilled', 'rejected'])
    expect(await committed()).toEqual([1])
  })
})

describe('pipelining', () => {
  // `COPY ... FROM STDIN` through query() has no data source: pg answers the server's
  // CopyInResponse with CopyFail('No source stream defined') and the statement fails at once. That is
  // what happens when the statement is not the first of its round trip (simple protocol), and what
  // happened for every statement before pipelining. Expected: the same prompt error when the
  // statement rides with BEGIN.
  //
  // Actual: PipelinedQuery forces `queryMode: 'extended'` (canPipeline() accepts COPY). In the
  // extended protocol the server ignores the Sync that pg wrote right after Execute while it is in
  // copy-in mode (protocol docs, "COPY Operations"), so after the CopyFail it waits for a Sync that
  // never comes: the round trip, the block and its connection hang forever.
  test('COPY FROM STDIN as the first statement of a block fails instead of hanging the connection', async () => {
    const db = createDatabase({ connectionString: h.testDb.url, alias: 'copy-in', max: 1 })
    try {
      // Control: as the second statement of the block (not pipelined) it fails at once.
      const control = await Promise.race([
        db
          .atomic(async () => {
            await db.query('select 1')
            await db.query('copy t from stdin')
          })
          .then(
            () => 'resolved',
            (e: Error) => e.message,
          ),
        sleep(2000).then(() => 'hung'),
      ])
      expect(control).toMatch(/No source stream defined/)
      const pipelined = await Promise.race([
        db
          .atomic(() => db.query('copy t from stdin'))
          .then(
            () => 'resolved',
            (e: Error) => e.message,
          ),
        sleep(2000).then(() => 'hung'),
      ])
      expect(pipelined).toMatch(/No source stream defined/)
    } finally {
      // At its deadline close() cancels and destroys the hung connection.
      await db.close({ timeoutMs: 100 })
    }
  })
})

describe('pg-atomic/testing', () => {
  // In production, a Kysely transaction outside atomic() is a real transaction on a pooled client,
  // and an onCommit() called in its callback finds no block: it runs at once. In a test transaction
  // the kit promises (docs/guide/testing.md, "Hooks") that the onCommit hooks that would have run are
  // captured, and captureOnCommit() returns them. Expected: [hook].
  //
  // Actual: the builder's BEGIN opens a plain nested block under the test's block (openBuilderBlock,
  // never `outermostForCode`), the ambient onCommit() is routed to it (testRootBlock() ->
  // builderTail()) and registered as an ordinary hook of that savepoint; the builder's COMMIT only
  // queues a RELEASE, and the hook is dropped with the test's rollback: neither captured nor run.
  test('onCommit inside a Kysely transaction outside atomic() is captured in a test transaction', async () => {
    const kit = await startTestTransaction()
    try {
      await kit.beginTest()
      const hook = (): void => undefined
      const captured = await captureOnCommit(() =>
        kdb.transaction().execute(async (trx) => {
          await trx.insertInto('t').values({ x: 1 }).execute()
          onCommit(hook)
        }),
      )
      expect(captured).toEqual([hook])
    } finally {
      await kit.endTest()
      await kit.end()
    }
  })
})
