/**
 * Connection hygiene: lazy checkout, return to the pool only when idle, transaction control refused
 * outside a block, connections left in a transaction destroyed, lost connections (the crash test),
 * and work that outlives its block.
 */
import vm from 'node:vm'
import type pg from 'pg'
import {
  ConnectionLostError,
  TransactionManagementError,
  atomic,
  createDatabase,
  onCommit,
  onRollback,
} from 'pg-atomic'
import type { TransactionHandle } from 'pg-atomic'
import { rejection, setupHarness, testDirect } from './support/harness'
import type { Harness } from './support/harness'
import { Boom } from './support/errors'
import { sleep } from './support/wait'

/**
 * jest gives each test file a copy of `process` with its own listeners; pg's deprecation warnings
 * and uncaught exceptions go to the real one.
 */
const realProcess = vm.runInThisContext('process') as NodeJS.Process

const logged: Array<{ message: string; error: unknown }> = []
const uncaught = jest.fn()
let h: Harness

beforeAll(async () => {
  h = await setupHarness('connection', { logger: { error: (message, error) => logged.push({ message, error }) } })
  await h.admin.query('create table t (x int not null)')
  realProcess.on('uncaughtException', uncaught)
})
afterAll(async () => {
  realProcess.off('uncaughtException', uncaught)
  await h.close()
})
beforeEach(async () => {
  await h.admin.query('truncate t')
  logged.length = 0
  uncaught.mockClear()
  h.reset()
})
afterEach(() => {
  // Whatever a test did, no connection may stay checked out, and nothing may crash the process.
  expect(h.pool.idleCount).toBe(h.pool.totalCount)
  expect(uncaught).not.toHaveBeenCalled()
})

const INSERT = 'insert into t (x) values ($1)'
const insert = (x: number) => h.db.query(INSERT, [x])
const checkedOut = () => h.pool.totalCount - h.pool.idleCount
const counts = () => ({ total: h.pool.totalCount, idle: h.pool.idleCount })
const pidOf = async (run: (text: string) => Promise<pg.QueryResult>) =>
  (await run('select pg_backend_pid() as pid')).rows[0]?.pid as number

/** Polls `predicate` every 10 ms; fails after `timeoutMs` (a bound, not a timing assertion). */
async function waitUntil(predicate: () => boolean | Promise<boolean>, what: string, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs
  while (!(await predicate())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)
    await sleep(10)
  }
}

const backendAlive = async (pid: number) =>
  (await h.rows('select 1 from pg_stat_activity where pid = $1', [pid])).length === 1

/** The pid and transaction status of the connection the pool hands out next (the last one returned). */
async function nextIdleConnection(): Promise<{ pid: number; status: string | null }> {
  expect(h.pool.idleCount).toBe(h.pool.totalCount)
  const client = await h.pool.connect()
  try {
    return { pid: (client as unknown as { processID: number }).processID, status: client.getTransactionStatus() }
  } finally {
    client.release()
  }
}

/** Resolves with the next client the recorded pool checks out. */
function nextCheckout(): Promise<pg.PoolClient> {
  return new Promise((resolve) => h.pool.once('acquire', resolve))
}

describe('lazy checkout', () => {
  test('a block that runs no query sends nothing and checks out no connection', async () => {
    await h.db.query('select 1') // leave one idle connection in the pool, so the counts are not trivially 0
    h.reset()
    const before = counts()
    expect(before.total).toBeGreaterThan(0)
    const hook = jest.fn()
    await atomic(async () => {
      expect(counts()).toEqual(before)
      await atomic(async () => {
        await sleep(5)
        expect(counts()).toEqual(before)
      })
      onCommit(hook)
      await sleep(5)
      expect(counts()).toEqual(before)
    })
    expect(counts()).toEqual(before)
    expect(h.statements).toEqual([])
    expect(h.roundTrips()).toBe(0)
    expect(hook).toHaveBeenCalledTimes(1)
  })

  test('the connection is checked out, and BEGIN sent, at the first query of the outermost block', async () => {
    await atomic(async () => {
      await sleep(10)
      expect(checkedOut()).toBe(0)
      expect(h.statements).toEqual([])
      await atomic(async () => {
        await sleep(5)
        expect(checkedOut()).toBe(0)
        expect(h.statements).toEqual([])
        await insert(1)
        expect(checkedOut()).toBe(1)
        // BEGIN and the SAVEPOINT of the nested block entered before the first query share a round trip.
        expect(h.statements).toEqual(['BEGIN', 'SAVEPOINT "pga_1"', INSERT])
      })
      expect(checkedOut()).toBe(1)
    })
    expect(checkedOut()).toBe(0)
    expect(h.statements).toEqual(['BEGIN', 'SAVEPOINT "pga_1"', INSERT, 'COMMIT'])
    expect(await h.column('select x from t')).toEqual([1])
  })

  // Not through PgBouncer: compares pg's processID (there the bouncer's cancel key) with pg_backend_pid().
  testDirect('outside a block db.query checks out a connection per statement and runs it in autocommit', async () => {
    const pid = await pidOf((text) => h.db.query(text))
    h.reset()
    await insert(1)
    expect(checkedOut()).toBe(0)
    // Committed at once: another session sees it.
    expect(await h.column('select x from t')).toEqual([1])
    expect(h.statements).toEqual([INSERT])
    expect(await nextIdleConnection()).toEqual({ pid, status: 'I' })
  })

  // Not through PgBouncer: compares pg's processID (there the bouncer's cancel key) with pg_backend_pid().
  testDirect(
    'a failing statement outside a block rejects with the untouched pg error and the connection is reused',
    async () => {
      const pid = await pidOf((text) => h.db.query(text))
      const error = await rejection(h.db.query('select 1/0'))
      expect(error).toMatchObject({ code: '22012', message: 'division by zero' })
      expect(error).not.toBeInstanceOf(TransactionManagementError)
      expect(await nextIdleConnection()).toEqual({ pid, status: 'I' })
    },
  )
})

describe('the connection goes back to the pool idle', () => {
  const endings: Array<[string, (pid: (p: number) => void) => Promise<unknown>]> = [
    [
      'COMMIT',
      (keep) =>
        atomic(async () => {
          keep(await pidOf((text) => h.db.query(text)))
          await insert(1)
        }),
    ],
    [
      'ROLLBACK after a thrown error',
      (keep) =>
        rejection(
          atomic(async () => {
            keep(await pidOf((text) => h.db.query(text)))
            await insert(1)
            throw new Boom('no')
          }),
        ),
    ],
    [
      'ROLLBACK after a query error',
      (keep) =>
        rejection(
          atomic(async () => {
            keep(await pidOf((text) => h.db.query(text)))
            await h.db.query('select 1/0')
          }),
        ),
    ],
    [
      'ROLLBACK after setRollback(true)',
      (keep) =>
        atomic(async (tx) => {
          keep(await pidOf((text) => h.db.query(text)))
          await insert(1)
          tx.setRollback(true)
        }),
    ],
    [
      'COMMIT after a failed nested block',
      (keep) =>
        atomic(async () => {
          keep(await pidOf((text) => h.db.query(text)))
          await expect(
            atomic(async () => {
              await insert(1)
              await h.db.query('select 1/0')
            }),
          ).rejects.toMatchObject({ code: '22012' })
          await insert(2)
        }),
    ],
  ]

  // Not through PgBouncer: compares pg's processID (there the bouncer's cancel key) with pg_backend_pid().
  testDirect.each(endings)('after %s: same connection, transaction status I', async (_label, run) => {
    let pid: number | undefined
    await run((p) => {
      pid = p
    })
    expect(typeof pid).toBe('number')
    expect(h.pool.idleCount).toBe(h.pool.totalCount)
    expect(await nextIdleConnection()).toEqual({ pid, status: 'I' })
    expect(logged).toEqual([])
  })
})

describe('transaction control outside a block', () => {
  test.each([
    ['BEGIN', 'BEGIN'],
    ['begin; insert into t (x) values (1)', 'BEGIN'],
    ['  /* why */ start transaction isolation level serializable', 'START'],
    ['select 1; commit', 'COMMIT'],
    ['savepoint s1', 'SAVEPOINT'],
  ])('db.query(%j) is refused before anything is sent', async (sql, command) => {
    const before = counts()
    const error = await rejection(h.db.query(sql))
    expect(error).toBeInstanceOf(TransactionManagementError)
    expect((error as Error).message).toBe(
      `${command} was refused: outside an atomic() block every statement runs in ` +
        `autocommit mode on a pooled connection, and transaction control sent this way ` +
        `would leave the connection idle in transaction. Use atomic() to run a transaction.`,
    )
    expect(h.statements).toEqual([])
    expect(counts()).toEqual(before)
    expect(await h.column('select count(*)::int from t')).toEqual([0])
  })

  test('the QueryConfig form is refused too', async () => {
    const error = await rejection(h.db.query({ text: 'begin', values: [] }))
    expect(error).toBeInstanceOf(TransactionManagementError)
    expect((error as Error).message).toMatch(/^BEGIN was refused: .* Use atomic\(\) to run a transaction\.$/)
    expect(h.statements).toEqual([])
  })

  test('a client from db.pool.connect() released inside a raw transaction is destroyed, not returned', async () => {
    const client = await h.db.pool.connect()
    const pid = (client as unknown as { processID: number }).processID
    await client.query('BEGIN')
    await client.query(INSERT, [1])
    expect(client.getTransactionStatus()).toBe('T')
    const total = h.pool.totalCount
    client.release()
    expect(h.pool.totalCount).toBe(total - 1)
    expect(logged).toHaveLength(1)
    expect(logged[0]?.message).toBe(
      "A connection obtained from the pool of database 'default' was released inside a " +
        "transaction (status 'T'); it was destroyed instead of being returned, which " +
        'rolled the transaction back. Commit or roll back before release(), or use atomic().',
    )
    await waitUntil(async () => !(await backendAlive(pid)), `backend ${pid} to exit`)
    expect((await nextIdleConnection()).pid).not.toBe(pid)
    expect(await h.column('select count(*)::int from t')).toEqual([0])
  })

  test('the same for a client released in a failed raw transaction (status E)', async () => {
    const client = await h.db.pool.connect()
    const pid = (client as unknown as { processID: number }).processID
    await client.query('BEGIN')
    await expect(client.query('select 1/0')).rejects.toMatchObject({ code: '22012' })
    await expect(client.query('select 1')).rejects.toMatchObject({ code: '25P02' })
    const total = h.pool.totalCount
    client.release()
    expect(h.pool.totalCount).toBe(total - 1)
    expect(logged.map((l) => l.message)).toEqual([
      expect.stringContaining("was released inside a transaction (status 'E'); it was destroyed"),
    ])
    await waitUntil(async () => !(await backendAlive(pid)), `backend ${pid} to exit`)
  })

  test('a client from db.pool.connect() that committed its raw transaction is returned as usual', async () => {
    const client = await h.db.pool.connect()
    const pid = (client as unknown as { processID: number }).processID
    await client.query('BEGIN')
    await client.query(INSERT, [1])
    await client.query('COMMIT')
    client.release()
    expect(logged).toEqual([])
    expect(await nextIdleConnection()).toEqual({ pid, status: 'I' })
    expect(await h.column('select x from t')).toEqual([1])
  })
})

describe('crash test: the backend of an open block is terminated', () => {
  test(
    'between statements: the block rejects with ConnectionLostError, the connection ' +
      'is destroyed, the next block works',
    async () => {
      const checkout = nextCheckout()
      const rolledBack = jest.fn()
      const committed = jest.fn()
      let pid = 0
      let refused: unknown
      let total = 0
      const error = await rejection(
        atomic(async () => {
          await insert(1)
          pid = await pidOf((text) => h.db.query(text))
          total = h.pool.totalCount
          onRollback(rolledBack)
          onCommit(committed)
          const client = await checkout
          const ended = new Promise((resolve) => client.once('end', resolve))
          await h.admin.query('select pg_terminate_backend($1)', [pid])
          await ended // the client has seen the FATAL error and the socket close
          h.reset()
          refused = await rejection(insert(2))
        }),
      )
      expect(error).toBeInstanceOf(ConnectionLostError)
      expect((error as Error).message).toBe(
        'The connection to PostgreSQL was lost during the transaction: the server rolled ' +
          'it back and nothing of it was committed. The connection was destroyed.',
      )
      expect((error as Error).cause).toBeInstanceOf(Error)
      expect(((error as Error).cause as Error).message).toMatch(/terminat/i)
      // The statement after the loss was refused without being sent.
      expect(refused).toBeInstanceOf(ConnectionLostError)
      expect(h.statements).toEqual([])
      expect(rolledBack).toHaveBeenCalledTimes(1)
      expect(committed).not.toHaveBeenCalled()
      expect(h.pool.totalCount).toBe(total - 1)
      expect(await backendAlive(pid)).toBe(false)

      const next = await atomic(async () => {
        await insert(3)
        return pidOf((text) => h.db.query(text))
      })
      expect(next).not.toBe(pid)
      expect(await h.column('select x from t order by x')).toEqual([3])
      expect(uncaught).not.toHaveBeenCalled()
    },
  )

  test('between statements, noticed only by the next statement: still ConnectionLostError', async () => {
    const rolledBack = jest.fn()
    let pid = 0
    let statementError: unknown
    const error = await rejection(
      atomic(async () => {
        await insert(1)
        pid = await pidOf((text) => h.db.query(text))
        onRollback(rolledBack)
        await h.admin.query('select pg_terminate_backend($1)', [pid])
        await waitUntil(async () => !(await backendAlive(pid)), `backend ${pid} to exit`)
        statementError = await rejection(insert(2))
        throw statementError
      }),
    )
    expect(error).toBeInstanceOf(ConnectionLostError)
    expect((error as Error).cause).toBeDefined()
    expect(statementError).toBeDefined()
    expect(rolledBack).toHaveBeenCalledTimes(1)
    await atomic(() => insert(3))
    expect(await h.column('select x from t order by x')).toEqual([3])
  })

  test('during a long statement: the statement fails with 57P01 and the block with ConnectionLostError', async () => {
    const rolledBack = jest.fn()
    let pid: number | undefined
    let statementError: unknown
    let total = 0
    const block = atomic(async () => {
      await insert(1)
      onRollback(rolledBack)
      total = h.pool.totalCount
      pid = await pidOf((text) => h.db.query(text))
      statementError = await rejection(h.db.query('select pg_sleep(10)'))
      throw statementError
    })
    await waitUntil(
      async () =>
        pid !== undefined &&
        (
          await h.rows(
            "select 1 from pg_stat_activity where pid = $1 and state = 'active' and query like '%pg_sleep%'",
            [pid],
          )
        ).length === 1,
      'the pg_sleep statement to run',
    )
    await h.admin.query('select pg_terminate_backend($1)', [pid])
    const error = await rejection(block)
    expect(statementError).toMatchObject({ code: '57P01' })
    expect(error).toBeInstanceOf(ConnectionLostError)
    expect((error as Error).cause).toBe(statementError)
    expect(rolledBack).toHaveBeenCalledTimes(1)
    expect(h.pool.totalCount).toBe(total - 1)
    expect(h.pool.idleCount).toBe(h.pool.totalCount)

    await atomic(() => insert(2))
    expect(await h.column('select x from t order by x')).toEqual([2])
    expect(uncaught).not.toHaveBeenCalled()
  })

  // Not through PgBouncer: terminates the backend pg's processID names (there the bouncer's cancel key, not a
  // server pid).
  testDirect(
    'lost inside a nested block: both blocks reject with ConnectionLostError and every onRollback hook runs',
    async () => {
      const checkout = nextCheckout()
      const calls: string[] = []
      let nestedError: unknown
      let refused: unknown
      const error = await rejection(
        atomic(async () => {
          await insert(1)
          onRollback(() => calls.push('outer'))
          nestedError = await rejection(
            atomic(async () => {
              await insert(2)
              onRollback(() => calls.push('nested'))
              const client = await checkout
              const ended = new Promise((resolve) => client.once('end', resolve))
              await h.admin.query('select pg_terminate_backend($1)', [
                (client as unknown as { processID: number }).processID,
              ])
              await ended
            }),
          )
          h.reset()
          refused = await rejection(insert(3))
        }),
      )
      expect(nestedError).toBeInstanceOf(ConnectionLostError)
      expect(refused).toBeInstanceOf(ConnectionLostError)
      expect(error).toBeInstanceOf(ConnectionLostError)
      expect(h.statements).toEqual([])
      expect(calls).toEqual(['outer', 'nested'])
      expect(await h.column('select count(*)::int from t')).toEqual([0])
      await atomic(() => insert(4))
      expect(await h.column('select x from t')).toEqual([4])
    },
  )

  test(
    'idleInTransactionSessionTimeout firing while the block awaits something else: ' +
      'ConnectionLostError (cause 25P03)',
    async () => {
      const checkout = nextCheckout()
      const rolledBack = jest.fn()
      let refused: unknown
      const error = await rejection(
        atomic({ idleInTransactionSessionTimeout: 100 }, async () => {
          await insert(1)
          onRollback(rolledBack)
          const client = await checkout
          // The server ends the session on its own; wait until the client has seen it.
          await new Promise((resolve) => client.once('end', resolve))
          refused = await rejection(insert(2))
        }),
      )
      expect(h.statements).toEqual(['BEGIN', 'SET LOCAL idle_in_transaction_session_timeout = 100', INSERT])
      expect(refused).toBeInstanceOf(ConnectionLostError)
      expect(error).toBeInstanceOf(ConnectionLostError)
      expect((error as Error).cause).toMatchObject({ code: '25P03' })
      expect(rolledBack).toHaveBeenCalledTimes(1)
      expect(await h.column('select count(*)::int from t')).toEqual([0])
      await atomic(() => insert(3))
      expect(await h.column('select x from t')).toEqual([3])
    },
  )

  // Not through PgBouncer: terminates the backend pg's processID names (there the bouncer's cancel key, not a
  // server pid).
  testDirect(
    'a block whose body returns normally after its backend was terminated rejects ' +
      'with ConnectionLostError, no COMMIT sent',
    async () => {
      const checkout = nextCheckout()
      const error = await rejection(
        atomic(async () => {
          await insert(1)
          const client = await checkout
          const ended = new Promise((resolve) => client.once('end', resolve))
          await h.admin.query('select pg_terminate_backend($1)', [
            (client as unknown as { processID: number }).processID,
          ])
          await ended
          // The body returns normally: the loss must still fail the block (no COMMIT attempted).
          h.reset()
        }),
      )
      expect(error).toBeInstanceOf(ConnectionLostError)
      expect(h.statements).toEqual([])
      expect(await h.column('select count(*)::int from t')).toEqual([0])
    },
  )
})

describe('lost connections outside a block', () => {
  // Not through PgBouncer: terminates the backend pg's processID names (there the bouncer's cancel key, not a
  // server pid).
  testDirect(
    'a statement outside a block whose backend is terminated rejects with the pg error; the connection is destroyed',
    async () => {
      const checkout = nextCheckout()
      const sleeping = h.db.query('select pg_sleep(10)')
      const client = await checkout
      const pid = (client as unknown as { processID: number }).processID
      await waitUntil(
        async () =>
          (
            await h.rows(
              "select 1 from pg_stat_activity where pid = $1 and state = 'active' and query like '%pg_sleep%'",
              [pid],
            )
          ).length === 1,
        'the pg_sleep statement to run',
      )
      const total = h.pool.totalCount
      await h.admin.query('select pg_terminate_backend($1)', [pid])
      await expect(sleeping).rejects.toMatchObject({ code: '57P01' })
      expect(h.pool.totalCount).toBe(total - 1)
      await expect(h.db.query('select 1 as one')).resolves.toMatchObject({ rows: [{ one: 1 }] })
      expect(uncaught).not.toHaveBeenCalled()
    },
  )

  // Not through PgBouncer: a server connection dying while no client uses it is replaced by the
  // bouncer; pg's client never notices, so there is nothing for pg-atomic to remove or log.
  testDirect(
    'an idle connection of a pool pg-atomic created that dies is removed and logged, without crashing',
    async () => {
      const owned = createDatabase({
        connectionString: h.testDb.url,
        alias: 'connection_owned',
        logger: { error: (message, error) => logged.push({ message, error }) },
      })
      try {
        const pid = (await owned.query<{ pid: number }>('select pg_backend_pid() as pid')).rows[0]?.pid
        expect(owned.pool.idleCount).toBe(1)
        await h.admin.query('select pg_terminate_backend($1)', [pid])
        await waitUntil(() => owned.pool.totalCount === 0, 'the dead idle connection to be removed')
        expect(logged.map((l) => l.message)).toEqual([
          "An idle connection of database 'connection_owned' failed and was removed from " +
            'the pool; the error is attached.',
        ])
        await expect(owned.atomic(() => owned.query('select 1 as one'))).resolves.toMatchObject({ rows: [{ one: 1 }] })
        expect(uncaught).not.toHaveBeenCalled()
      } finally {
        await owned.close()
      }
    },
  )
})

describe('work that outlives its block', () => {
  test('a query through the handle after the block ended is refused and nothing is sent', async () => {
    let saved: TransactionHandle | undefined
    await atomic(async (tx) => {
      saved = tx
      await tx.query(INSERT, [1])
    })
    h.reset()
    const before = counts()
    const error = await rejection((saved as TransactionHandle).query(INSERT, [2]))
    expect(error).toBeInstanceOf(TransactionManagementError)
    expect((error as Error).message).toBe(
      "This 'atomic' block has already ended, so its transaction can no longer be used " +
        'and the statement was not run. Await all work of a block inside that block.',
    )
    expect(h.statements).toEqual([])
    expect(counts()).toEqual(before)
    expect(await h.column('select x from t')).toEqual([1])
  })

  test('a nested handle used after its block ended, while the outer block runs, is refused too', async () => {
    let inner: TransactionHandle | undefined
    await atomic(async () => {
      await insert(1)
      await atomic(async (tx) => {
        inner = tx
        await tx.query(INSERT, [2])
      })
      const error = await rejection((inner as TransactionHandle).query(INSERT, [3]))
      expect(error).toBeInstanceOf(TransactionManagementError)
      expect((error as Error).message).toMatch(/^This 'atomic' block has already ended/)
      await insert(4)
    })
    expect(await h.column('select x from t order by x')).toEqual([1, 2, 4])
    expect(h.statements).toEqual(['BEGIN', INSERT, 'SAVEPOINT "pga_1"', INSERT, INSERT, 'COMMIT'])
  })

  test.each([
    ['committed', false],
    ['rolled back', true],
  ])(
    'db.query from a timer scheduled in a block that fires after the block %s is refused, never autocommitted',
    async (_label, fail) => {
      let open!: () => void
      const blockEnded = new Promise<void>((resolve) => {
        open = resolve
      })
      let late: Promise<unknown> | undefined
      const block = atomic(async () => {
        await insert(1)
        late = new Promise((resolve) => {
          setTimeout(() => {
            // Still in the block's async context, but the block is over by now.
            void blockEnded.then(() => resolve(rejection(insert(99))))
          }, 0)
        })
        if (fail) throw new Boom('fail')
      })
      if (fail) await expect(block).rejects.toThrow(Boom)
      else await block
      open()
      h.reset()
      const error = await late
      expect(error).toBeInstanceOf(TransactionManagementError)
      expect((error as Error).message).toMatch(/^This 'atomic' block has already ended/)
      expect(h.statements).toEqual([])
      expect(await h.column('select x from t order by x')).toEqual(fail ? [] : [1])
    },
  )
})
