/**
 * The propagation option (issue 12 §1): requiresNew (an independent transaction on another
 * connection, the enclosing one suspended), notSupported (outside any transaction, suspended),
 * mandatory and never; hooks of a requiresNew block at its own COMMIT; pool exhaustion bounded; the
 * cross-session self-deadlock detected and named. Real concurrent sessions on real PostgreSQL.
 */
import {
  AcquireTimeoutError,
  Atomic,
  InvalidOptionError,
  SuspendedTransactionDeadlockError,
  TransactionManagementError,
  atomic,
  createDatabase,
  onCommit,
} from 'pg-atomic'
import { Boom, rejection } from './support/errors'
import { setupHarness, testDirect } from './support/harness'
import { sleep, waitUntil } from './support/wait'
import type { Harness } from './support/harness'

let h: Harness

const pid = async () => (await h.db.query<{ pid: number }>('select pg_backend_pid() as pid')).rows[0]?.pid
const committed = () => h.column<string>('select note from audit order by id')

beforeAll(async () => {
  h = await setupHarness('propagation')
  await h.admin.query('create table audit (id serial primary key, note text not null)')
  await h.admin.query('create table account (id int primary key, balance int not null)')
})

beforeEach(async () => {
  await h.admin.query('truncate audit; truncate account; insert into account values (1, 100)')
  h.reset()
})

afterAll(async () => {
  await h.close()
})

test('requiresNew commits on its own: the audit row survives the rollback of the enclosing transaction', async () => {
  const error = await rejection(
    atomic(async () => {
      await h.db.query("insert into audit (note) values ('outer')")
      await atomic({ propagation: 'requiresNew' }, async () => {
        await h.db.query("insert into audit (note) values ('inner')")
      })
      throw new Boom()
    }),
  )
  expect(error).toBeInstanceOf(Boom)
  expect(await committed()).toEqual(['inner'])
  // Two transactions: the inner one began and committed while the outer one was open.
  expect(h.statements).toEqual([
    'BEGIN',
    "insert into audit (note) values ('outer')",
    'BEGIN',
    "insert into audit (note) values ('inner')",
    'COMMIT',
    'ROLLBACK',
  ])
})

test('requiresNew rolls back on its own: the enclosing transaction goes on and commits', async () => {
  await atomic(async () => {
    await h.db.query("insert into audit (note) values ('outer')")
    const error = await rejection(
      atomic({ propagation: 'requiresNew' }, async () => {
        await h.db.query("insert into audit (note) values ('inner')")
        throw new Boom()
      }),
    )
    expect(error).toBeInstanceOf(Boom)
    await h.db.query("insert into audit (note) values ('after')")
  })
  expect(await committed()).toEqual(['outer', 'after'])
})

test('inside requiresNew, queries and db.pool use its own connection; afterwards the outer one', async () => {
  const seen: Record<string, number | undefined> = {}
  await atomic(async () => {
    seen['outer'] = await pid()
    await atomic({ propagation: 'requiresNew' }, async (tx) => {
      seen['inner'] = await pid()
      seen['handle'] = (await tx.query<{ pid: number }>('select pg_backend_pid() as pid')).rows[0]?.pid
      const client = await h.db.pool.connect()
      try {
        seen['pool'] = (await client.query<{ pid: number }>('select pg_backend_pid() as pid')).rows[0]?.pid
      } finally {
        client.release()
      }
      // Nested in the independent transaction: a savepoint of it.
      await atomic(() => h.db.query("insert into audit (note) values ('nested in inner')"))
    })
    seen['resumed'] = await pid()
  })
  expect(seen['inner']).not.toBe(seen['outer'])
  expect(seen['handle']).toBe(seen['inner'])
  expect(seen['pool']).toBe(seen['inner'])
  expect(seen['resumed']).toBe(seen['outer'])
  expect(h.statements.filter((s) => s.startsWith('SAVEPOINT') || s === 'BEGIN')).toEqual([
    'BEGIN',
    'BEGIN',
    'SAVEPOINT "pga_1"',
  ])
})

test("a requiresNew block's hooks run at its COMMIT, outside any transaction; the outer's at the outer's", async () => {
  const order: string[] = []
  await atomic(async () => {
    onCommit(() => void order.push('outer hook'))
    await h.db.query("insert into audit (note) values ('outer')")
    await atomic({ propagation: 'requiresNew' }, async () => {
      await h.db.query("insert into audit (note) values ('inner')")
      onCommit(async () => {
        order.push('inner hook')
        // Outside any transaction: this autocommits at once, even though the outer one is open.
        await h.db.query("insert into audit (note) values ('from inner hook')")
      })
    })
    order.push('inner returned')
    expect(await committed()).toEqual(['inner', 'from inner hook'])
  })
  expect(order).toEqual(['inner hook', 'inner returned', 'outer hook'])
  expect(await committed()).toEqual(['outer', 'inner', 'from inner hook'])
})

test('notSupported: the callback runs in autocommit on another connection; the outer transaction resumes', async () => {
  const order: string[] = []
  const error = await rejection(
    atomic(async () => {
      const outer = await pid()
      await atomic({ propagation: 'notSupported' }, async () => {
        expect(await pid()).not.toBe(outer)
        await h.db.query("insert into audit (note) values ('autocommitted')")
        // No block: the hook runs at once.
        onCommit(() => void order.push('hook at once'))
        order.push('after onCommit')
      })
      expect(await pid()).toBe(outer)
      await h.db.query("insert into audit (note) values ('rolled back')")
      throw new Boom()
    }),
  )
  expect(error).toBeInstanceOf(Boom)
  expect(order).toEqual(['hook at once', 'after onCommit'])
  expect(await committed()).toEqual(['autocommitted'])
})

test('mandatory: refused outside a block before anything runs; inside, a savepoint as usual', async () => {
  let ran = false
  const error = await rejection(
    atomic({ propagation: 'mandatory', name: 'charge' }, () => {
      ran = true
    }),
  )
  expect(ran).toBe(false)
  expect(error).toBeInstanceOf(TransactionManagementError)
  expect((error as Error).message).toBe(
    "This atomic() block has propagation 'mandatory': it must run inside a block of database 'default', and " +
      "there is none here. Call it from inside a block (or use the default, 'nested', to begin a transaction " +
      'when there is none). (block "charge")',
  )
  expect(h.statements).toEqual([])
  await atomic(() =>
    atomic({ propagation: 'mandatory' }, () => h.db.query("insert into audit (note) values ('mandatory')")),
  )
  expect(h.statements).toEqual([
    'BEGIN',
    'SAVEPOINT "pga_1"',
    "insert into audit (note) values ('mandatory')",
    // The RELEASE is unnecessary before COMMIT and dropped.
    'COMMIT',
  ])
})

test('never: refused inside a block before anything runs; outside, the callback runs in autocommit', async () => {
  let ran = false
  const error = await rejection(
    atomic({ name: 'request' }, () =>
      atomic({ propagation: 'never' }, () => {
        ran = true
      }),
    ),
  )
  expect(ran).toBe(false)
  expect(error).toBeInstanceOf(TransactionManagementError)
  expect((error as Error).message).toMatch(
    new RegExp(
      "^This atomic\\(\\) block has propagation 'never': it must not run inside a transaction, but it is " +
        "inside block 'request' \\(transaction \\d+\\) of database 'default'\\.$",
    ),
  )
  h.reset()
  await atomic({ propagation: 'never' }, () => h.db.query("insert into audit (note) values ('never')"))
  expect(h.statements).toEqual(["insert into audit (note) values ('never')"])
  expect(await committed()).toEqual(['never'])
})

test('bad input: an unknown propagation, and a handle parameter where there is no transaction', async () => {
  const unknown = await rejection(atomic({ propagation: 'supports' as never }, () => undefined))
  expect(unknown).toBeInstanceOf(InvalidOptionError)
  expect((unknown as InvalidOptionError).field).toBe('propagation')
  expect((unknown as Error).message).toMatch(/one of 'nested', 'requiresNew', 'mandatory', 'notSupported', 'never'/)
  const handle = await rejection(
    // eslint-disable-next-line @typescript-eslint/no-unused-vars -- the parameter is the mistake
    atomic({ propagation: 'notSupported' }, ((tx: unknown) => undefined) as () => undefined),
  )
  expect(handle).toBeInstanceOf(InvalidOptionError)
  expect((handle as InvalidOptionError).field).toBe('fn')
  expect(h.statements).toEqual([])
})

test('@Atomic({ propagation: "requiresNew" }) on a method: the audit survives the caller rolling back', async () => {
  class Audit {
    @Atomic({ propagation: 'requiresNew' })
    async record(note: string): Promise<void> {
      await h.db.query('insert into audit (note) values ($1)', [note])
    }
  }
  const audit = new Audit()
  await rejection(
    atomic(async () => {
      await audit.record('denied')
      throw new Boom()
    }),
  )
  expect(await committed()).toEqual(['denied'])
})

test('pool exhaustion: with max 1 a requiresNew block fails at once, saying why; nothing is left open', async () => {
  const small = createDatabase({ alias: 'propagation-small', connectionString: h.testDb.url, max: 1 })
  try {
    const error = await rejection(
      small.atomic(async () => {
        await small.query('select 1')
        await small.atomic({ propagation: 'requiresNew' }, () => small.query('select 2'))
      }),
    )
    expect(error).toBeInstanceOf(AcquireTimeoutError)
    expect((error as Error).message).toBe(
      "A requiresNew atomic() block of database 'propagation-small' needs a second connection while the " +
        'transaction it suspends holds one, and the pool has max 1: it could never get one. Raise max, or ' +
        'leave out requiresNew.',
    )
  } finally {
    await small.close()
  }
})

test('pool exhaustion: requests that hold a connection and wait for a second are bounded', async () => {
  const pair = createDatabase({
    alias: 'propagation-pair',
    connectionString: h.testDb.url,
    max: 2,
    acquireTimeoutMs: 300,
  })
  try {
    // Each request holds its connection until both have failed: neither can free one for the other.
    let holding = 0
    const errors: unknown[] = []
    let bothHold: () => void = () => undefined
    const holdingBoth = new Promise<void>((resolve) => (bothHold = resolve))
    const request = () =>
      pair.atomic(async () => {
        await pair.query('select 1')
        if (++holding === 2) bothHold()
        await holdingBoth
        errors.push(await rejection(pair.atomic({ propagation: 'requiresNew' }, () => pair.query('select 2'))))
        await waitUntil(() => errors.length === 2, 'both requiresNew blocks to fail')
      })
    await Promise.all([request(), request()])
    expect(errors).toHaveLength(2)
    for (const error of errors) {
      expect(error).toBeInstanceOf(AcquireTimeoutError)
      expect((error as Error).message).toMatch(
        new RegExp(
          "^A requiresNew atomic\\(\\) block of database 'propagation-pair' needs a second connection while " +
            "the transaction it suspends holds one, and none became free within 300 ms: the pool's max is 2, 2 " +
            'connections are checked out \\(2 by atomic\\(\\) blocks\\), and 2 requests are waiting\\. When ' +
            'every request holds a connection and waits for a second, none can go on: raise max above the ' +
            'number of requests that can reach a requiresNew block at the same time\\.$',
        ),
      )
    }
  } finally {
    await pair.close()
  }
})

// Identifies the sessions by pg's processID, which through PgBouncer is the bouncer's cancel key.
testDirect(
  'a requiresNew block waiting for a lock its suspended transaction holds fails fast, naming both sessions',
  async () => {
    let innerPid: number | undefined
    let outerPid: number | undefined
    let error: unknown
    const started = Date.now()
    await atomic(async () => {
      outerPid = await pid()
      await h.db.query('update account set balance = balance - 10 where id = 1')
      error = await rejection(
        atomic({ propagation: 'requiresNew' }, async () => {
          innerPid = await pid()
          await h.db.query('update account set balance = balance + 10 where id = 1')
        }),
      )
    })
    expect(error).toBeInstanceOf(SuspendedTransactionDeadlockError)
    const found = error as SuspendedTransactionDeadlockError
    expect({ inner: found.innerPid, outer: found.outerPid }).toEqual({ inner: innerPid, outer: outerPid })
    expect(found.message).toBe(
      `A requiresNew atomic() block of database 'default' (server process ${innerPid}) waited for a lock held by ` +
        `the transaction it suspended (server process ${outerPid}): that transaction resumes only after the ` +
        'block ends, so the wait could never end, and PostgreSQL cannot see it. The block was rolled back; the ' +
        'suspended transaction is untouched. Take the lock in one of the two transactions only, or run the ' +
        'work before the outer one takes it.',
    )
    expect((found.cause as { code?: string }).code).toBe('57014')
    // Found within the watchdog's period (1 s), not after a timeout; the outer transaction committed.
    expect(Date.now() - started).toBeLessThan(5000)
    expect(await h.column<number>('select balance from account')).toEqual([90])
  },
)

// Identifies the sessions by pg's processID, which through PgBouncer is the bouncer's cancel key.
testDirect('a self-deadlock is never retried, even when the retry policy names 57014: one attempt', async () => {
  let attempts = 0
  let error: unknown
  await atomic(async () => {
    await h.db.query('update account set balance = balance - 10 where id = 1')
    error = await rejection(
      atomic({ propagation: 'requiresNew', retry: { maxAttempts: 3, retryOn: ['57014', '40001'] } }, async () => {
        attempts++
        await h.db.query('update account set balance = balance + 10 where id = 1')
      }),
    )
  })
  expect(error).toBeInstanceOf(SuspendedTransactionDeadlockError)
  expect(attempts).toBe(1)
  expect(await h.column<number>('select balance from account')).toEqual([90])
})

test("a requiresNew block holds its enclosing block's turn: a sibling's lock is released first", async () => {
  const order: string[] = []
  await atomic(async () => {
    await Promise.all([
      rejection(
        atomic(async () => {
          await h.db.query('update account set balance = balance - 10 where id = 1')
          order.push('sibling locked the row')
          await sleep(1500)
          order.push('sibling rolls back')
          throw new Boom()
        }),
      ),
      atomic({ propagation: 'requiresNew' }, async () => {
        order.push('requiresNew starts')
        await h.db.query('update account set balance = balance + 1 where id = 1')
      }),
    ])
  })
  // No false self-deadlock: the sibling's savepoint ended (and freed the row) before the block began.
  expect(order).toEqual(['sibling locked the row', 'sibling rolls back', 'requiresNew starts'])
  expect(await h.column<number>('select balance from account')).toEqual([101])
})

test('the handle of a suspended transaction used inside the requiresNew block is refused, not hanging', async () => {
  let error: unknown
  await atomic(async (outer) => {
    await atomic({ propagation: 'requiresNew' }, async () => {
      error = await rejection(outer.query('select 1'))
    })
  })
  expect(error).toBeInstanceOf(TransactionManagementError)
  expect((error as Error).message).toBe(
    'This transaction is suspended by a requiresNew atomic() block that is running: it resumes when that block ' +
      "ends, so work sent to it from inside the block would wait forever. Use the inner block's handle (or " +
      'db.query), or do this work before or after the requiresNew block.',
  )
})

test('notSupported and never refuse the options only a transaction can honour, naming the field', async () => {
  const readOnly = await rejection(atomic({ propagation: 'notSupported', readOnly: true }, () => undefined))
  expect(readOnly).toBeInstanceOf(InvalidOptionError)
  expect((readOnly as InvalidOptionError).field).toBe('readOnly')
  expect((readOnly as Error).message).toBe(
    'With propagation \'notSupported\' the callback runs outside any transaction, so the option "readOnly" has ' +
      'nothing to apply to: leave it out (or use another propagation).',
  )
  const retry = await rejection(atomic({ propagation: 'never', retry: 3 }, () => undefined))
  expect((retry as InvalidOptionError).field).toBe('retry')
  const durable = await rejection(atomic({ propagation: 'never', durable: true }, () => undefined))
  expect((durable as InvalidOptionError).field).toBe('durable')
  expect(h.statements).toEqual([])
})
