/**
 * Transaction characteristics (isolation level, access mode, deferrable) on BEGIN, database-level
 * defaults, the outermost-only rule for nested blocks, and the per-transaction timeouts applied
 * with SET LOCAL in the BEGIN round trip (never session SET), nested timeouts and what the server
 * does when they fire.
 */
import pg from 'pg'
import {
  ConnectionLostError,
  ISOLATION_LEVELS,
  TransactionManagementError,
  atomic,
  currentTransaction,
  isLockNotAvailable,
} from 'pg-atomic'
import type { AtomicOptions, IsolationLevel } from 'pg-atomic'
import { rejection, setupHarness } from './support/harness'
import type { Harness } from './support/harness'
import { sleep } from './support/wait'

/** The default database: one pooled connection, so "after the block" is the same session. */
let h: Harness
/** A second database, 'defaults', with database-level defaults. */
let d: Harness
/** Session values of the timeouts before any block ran. */
let baseline: Record<string, string>

const TIMEOUT_SETTINGS = ['statement_timeout', 'lock_timeout', 'idle_in_transaction_session_timeout'] as const

beforeAll(async () => {
  h = await setupHarness('isolation', { max: 1 })
  d = await setupHarness('isolation_defaults', {
    alias: 'defaults',
    max: 1,
    isolationLevel: 'repeatable read',
    readOnly: true,
    statementTimeout: 1234,
  })
  await h.admin.query('create table t (id int primary key, x int not null)')
  await d.admin.query('create table t (id int primary key, x int not null)')
  baseline = {}
  for (const setting of TIMEOUT_SETTINGS) baseline[setting] = await show(setting)
})
afterAll(async () => {
  try {
    await d?.close()
  } finally {
    await h?.close()
  }
})
beforeEach(async () => {
  await h.admin.query('truncate t')
  await h.admin.query('insert into t (id, x) values (1, 0), (2, 0), (3, 0)')
  h.reset()
  d.reset()
})

/** `SHOW setting` through the default database (in the ambient block, if any). */
async function show(setting: string, db = h.db): Promise<string> {
  const { rows } = await db.query<Record<string, string>>(`SHOW ${setting}`)
  return rows[0]?.[setting] as string
}

async function backendPid(db = h.db): Promise<number> {
  const { rows } = await db.query<{ pid: number }>('select pg_backend_pid() as pid')
  return rows[0]?.pid as number
}

/**
 * Stays idle (in JS) until the server has ended the session `pid`, polling from another connection;
 * bounded. Then gives the client a moment to read the FATAL message from its socket.
 */
async function idleUntilTerminated(pid: number): Promise<void> {
  const deadline = Date.now() + 5000
  for (;;) {
    await sleep(100)
    const alive = await h.column('select pid from pg_stat_activity where pid = $1', [pid])
    if (alive.length === 0) break
    if (Date.now() > deadline) throw new Error(`session ${pid} was not terminated within 5 s`)
  }
  await sleep(50)
}

/** No statement is a session-level SET (only SET LOCAL). */
function expectNoSessionSet(statements: readonly string[]): void {
  const sessionSets = statements
    .flatMap((s) => s.split('; '))
    .filter((s) => /^\s*set\s/i.test(s) && !/^\s*set\s+local\s/i.test(s))
  expect(sessionSets).toEqual([])
}

describe('BEGIN characteristics', () => {
  test('serializable, read only, deferrable go on BEGIN, and the server confirms them', async () => {
    const seen = await atomic({ isolationLevel: 'serializable', readOnly: true, deferrable: true }, async (tx) => {
      expect(tx.isolationLevel).toBe('serializable')
      expect(currentTransaction()).toMatchObject({ isolationLevel: 'serializable', readOnly: true, deferrable: true })
      return [
        await show('transaction_isolation'),
        await show('transaction_read_only'),
        await show('transaction_deferrable'),
      ]
    })
    expect(seen).toEqual(['serializable', 'on', 'on'])
    expect(h.statements).toEqual([
      'BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY DEFERRABLE',
      'SHOW transaction_isolation',
      'SHOW transaction_read_only',
      'SHOW transaction_deferrable',
      'COMMIT',
    ])
  })

  test.each(ISOLATION_LEVELS.map((l) => [l]))('isolation level %s', async (level) => {
    const seen = await atomic({ isolationLevel: level }, () => show('transaction_isolation'))
    expect(seen).toBe(level)
    expect(h.statements).toEqual([
      `BEGIN ISOLATION LEVEL ${level.toUpperCase()}`,
      'SHOW transaction_isolation',
      'COMMIT',
    ])
  })

  test('readOnly: false sends READ WRITE, deferrable: false sends NOT DEFERRABLE', async () => {
    const seen = await atomic({ readOnly: false, deferrable: false }, async () => [
      await show('transaction_read_only'),
      await show('transaction_deferrable'),
    ])
    expect(seen).toEqual(['off', 'off'])
    expect(h.statements).toEqual([
      'BEGIN READ WRITE NOT DEFERRABLE',
      'SHOW transaction_read_only',
      'SHOW transaction_deferrable',
      'COMMIT',
    ])
  })

  test('readOnly: true alone sends READ ONLY; the session is read-write again after the block', async () => {
    expect(await atomic({ readOnly: true }, () => show('transaction_read_only'))).toBe('on')
    expect(await show('transaction_read_only')).toBe('off')
    expect(h.statements).toEqual([
      'BEGIN READ ONLY',
      'SHOW transaction_read_only',
      'COMMIT',
      'SHOW transaction_read_only',
    ])
  })

  test('without options, BEGIN carries nothing and the server default applies', async () => {
    const serverDefault = (
      await h.rows<{ default_transaction_isolation: string }>('show default_transaction_isolation')
    )[0]?.default_transaction_isolation
    const seen = await atomic(async (tx) => {
      expect(tx.isolationLevel).toBeUndefined()
      expect(currentTransaction()).toMatchObject({
        isolationLevel: undefined,
        readOnly: undefined,
        deferrable: undefined,
      })
      return show('transaction_isolation')
    })
    expect(seen).toBe(serverDefault)
    expect(h.statements).toEqual(['BEGIN', 'SHOW transaction_isolation', 'COMMIT'])
  })

  test('a read-only transaction rejects INSERT with 25006; nothing is written', async () => {
    const error = await rejection(atomic({ readOnly: true }, () => h.db.query('insert into t (id, x) values (10, 1)')))
    expect(error).toBeInstanceOf(pg.DatabaseError)
    expect(error).toMatchObject({ code: '25006', message: 'cannot execute INSERT in a read-only transaction' })
    expect(h.statements).toEqual(['BEGIN READ ONLY', 'insert into t (id, x) values (10, 1)', 'ROLLBACK'])
    expect(await h.column('select id from t order by id')).toEqual([1, 2, 3])
  })
})

describe('database-level defaults', () => {
  const defaultBegin = [
    'BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY',
    'SET LOCAL statement_timeout = 1234',
  ] as const

  test('apply to every outermost block', async () => {
    const sessionTimeout = await show('statement_timeout', d.db)
    for (let i = 0; i < 2; i++) {
      const seen = await d.db.atomic(async (tx) => {
        expect(tx.isolationLevel).toBe('repeatable read')
        return [
          await show('transaction_isolation', d.db),
          await show('transaction_read_only', d.db),
          await show('statement_timeout', d.db),
        ]
      })
      expect(seen).toEqual(['repeatable read', 'on', '1234ms'])
    }
    // Never a session SET: outside the block the session value is back.
    expect(await show('statement_timeout', d.db)).toBe(sessionTimeout)
    expect(sessionTimeout).toBe(baseline['statement_timeout'])
    expect(d.statements).toEqual([
      'SHOW statement_timeout',
      ...defaultBegin,
      'SHOW transaction_isolation',
      'SHOW transaction_read_only',
      'SHOW statement_timeout',
      'COMMIT',
      ...defaultBegin,
      'SHOW transaction_isolation',
      'SHOW transaction_read_only',
      'SHOW statement_timeout',
      'COMMIT',
      'SHOW statement_timeout',
    ])
    expectNoSessionSet(d.statements)
  })

  test('apply through atomic({ using }) too', async () => {
    await atomic({ using: 'defaults' }, () => show('transaction_isolation', d.db))
    expect(d.statements).toEqual([...defaultBegin, 'SHOW transaction_isolation', 'COMMIT'])
    expect(h.statements).toEqual([])
  })

  test('are overridden per block', async () => {
    const seen = await d.db.atomic(
      { isolationLevel: 'serializable', readOnly: false, deferrable: true, statementTimeout: 0 },
      async () => [
        await show('transaction_isolation', d.db),
        await show('transaction_read_only', d.db),
        await show('transaction_deferrable', d.db),
        await show('statement_timeout', d.db),
      ],
    )
    expect(seen).toEqual(['serializable', 'off', 'on', '0'])
    expect(d.statements.slice(0, 2)).toEqual([
      'BEGIN ISOLATION LEVEL SERIALIZABLE READ WRITE DEFERRABLE',
      'SET LOCAL statement_timeout = 0',
    ])
  })

  test('a nested block may repeat the defaults but not change them', async () => {
    await d.db.atomic(async () => {
      await show('transaction_isolation', d.db)
      await d.db.atomic({ isolationLevel: 'REPEATABLE READ' as IsolationLevel, readOnly: true }, () =>
        show('transaction_read_only', d.db),
      )
      const body = jest.fn()
      const error = await rejection(d.db.atomic({ readOnly: false }, body))
      expect(error).toBeInstanceOf(TransactionManagementError)
      expect((error as Error).message).toMatch(/^readOnly can only be chosen by the outermost atomic\(\) block/)
      expect(body).not.toHaveBeenCalled()
    })
    expect(d.statements).toEqual([
      ...defaultBegin,
      'SHOW transaction_isolation',
      'SAVEPOINT "pga_1"',
      'SHOW transaction_read_only',
      'COMMIT',
    ])
  })

  test('a nested block restores the database default timeout after changing it', async () => {
    await d.db.atomic(async () => {
      await d.db.atomic({ statementTimeout: 50 }, async () => {
        expect(await show('statement_timeout', d.db)).toBe('50ms')
      })
      expect(await show('statement_timeout', d.db)).toBe('1234ms')
    })
    expect(d.statements).toEqual([
      ...defaultBegin,
      'SAVEPOINT "pga_1"',
      'SET LOCAL statement_timeout = 50',
      'SHOW statement_timeout',
      'RELEASE SAVEPOINT "pga_1"',
      'SET LOCAL statement_timeout = 1234',
      'SHOW statement_timeout',
      'COMMIT',
    ])
  })

  test('a read-only default rejects INSERT with 25006', async () => {
    const error = await rejection(d.db.atomic(() => d.db.query('insert into t (id, x) values ($1, $2)', [1, 1])))
    expect(error).toBeInstanceOf(pg.DatabaseError)
    expect(error).toMatchObject({ code: '25006', message: 'cannot execute INSERT in a read-only transaction' })
    expect(d.statements).toEqual([...defaultBegin, 'insert into t (id, x) values ($1, $2)', 'ROLLBACK'])
    expect(await d.column('select count(*)::int from t')).toEqual([0])
  })
})

describe('nested blocks cannot change the transaction characteristics', () => {
  const outer: AtomicOptions = { isolationLevel: 'repeatable read', readOnly: false, deferrable: false }
  const outerBegin = 'BEGIN ISOLATION LEVEL REPEATABLE READ READ WRITE NOT DEFERRABLE'

  test.each([
    [
      'isolationLevel',
      { isolationLevel: 'serializable' },
      /isolationLevel .* is 'repeatable read', not 'serializable'/,
    ],
    ['readOnly', { readOnly: true }, /readOnly .* is false, not true/],
    ['deferrable', { deferrable: true }, /deferrable .* is false, not true/],
  ] as Array<[string, AtomicOptions, RegExp]>)(
    'a different %s is a TransactionManagementError before any SQL',
    async (key, nested, detail) => {
      const body = jest.fn()
      await atomic(outer, async () => {
        await h.db.query('select 1')
        const error = await rejection(atomic(nested, body))
        expect(error).toBeInstanceOf(TransactionManagementError)
        expect((error as Error).message).toMatch(
          new RegExp(`^${key} can only be chosen by the outermost atomic\\(\\) block`),
        )
        expect((error as Error).message).toMatch(detail)
        // The enclosing block is untouched and goes on.
        await h.db.query('select 2')
      })
      expect(body).not.toHaveBeenCalled()
      expect(h.statements).toEqual([outerBegin, 'select 1', 'select 2', 'COMMIT'])
    },
  )

  test('refused before the outer block sent anything: nothing is sent at all', async () => {
    const body = jest.fn()
    await atomic(outer, async () => {
      const error = await rejection(atomic({ isolationLevel: 'serializable' }, body))
      expect(error).toBeInstanceOf(TransactionManagementError)
    })
    expect(body).not.toHaveBeenCalled()
    expect(h.statements).toEqual([])
  })

  test('a nested block asking for serializable inside a default transaction is refused', async () => {
    await atomic(async () => {
      await h.db.query('select 1')
      const error = await rejection(atomic({ isolationLevel: 'serializable' }, jest.fn()))
      expect(error).toBeInstanceOf(TransactionManagementError)
      expect((error as Error).message).toContain("the server's default")
    })
    expect(h.statements).toEqual(['BEGIN', 'select 1', 'COMMIT'])
  })

  test('the same values on a nested block are fine (isolation level in any case)', async () => {
    await atomic(outer, async () => {
      await h.db.query('select 1')
      const seen = await atomic(
        { isolationLevel: 'Repeatable Read' as IsolationLevel, readOnly: false, deferrable: false },
        async (tx) => {
          expect(tx.depth).toBe(2)
          expect(tx.isolationLevel).toBe('repeatable read')
          return show('transaction_isolation')
        },
      )
      expect(seen).toBe('repeatable read')
    })
    expect(h.statements).toEqual([outerBegin, 'select 1', 'SAVEPOINT "pga_1"', 'SHOW transaction_isolation', 'COMMIT'])
  })
})

describe('timeouts', () => {
  test.each([
    ['statementTimeout', 'statement_timeout', 150, '150ms'],
    ['lockTimeout', 'lock_timeout', 2000, '2s'],
    ['idleInTransactionSessionTimeout', 'idle_in_transaction_session_timeout', 60000, '1min'],
  ])(
    '%s goes as SET LOCAL in the BEGIN round trip and ends with the transaction',
    async (option, setting, ms, shown) => {
      const pidOutside = await backendPid()
      h.reset()
      const inside = await atomic({ [option]: ms }, async () => [await show(setting), await backendPid()])
      expect(inside).toEqual([shown, pidOutside])
      expect(h.batches).toEqual([
        ['BEGIN', `SET LOCAL ${setting} = ${ms}`, `SHOW ${setting}`],
        ['select pg_backend_pid() as pid'],
        ['COMMIT'],
      ])
      expect(h.roundTrips()).toBe(3)
      // Outside a transaction, through the same pooled connection: the session value again.
      expect(await backendPid()).toBe(pidOutside)
      expect(await show(setting)).toBe(baseline[setting])
      expectNoSessionSet(h.statements)
    },
  )

  test('all three timeouts go in one round trip with BEGIN, and end with a rollback too', async () => {
    const boom = new Error('boom')
    const error = await rejection(
      atomic(
        {
          isolationLevel: 'read committed',
          statementTimeout: 5000,
          lockTimeout: 1000,
          idleInTransactionSessionTimeout: 60000,
        },
        async () => {
          expect([
            await show('statement_timeout'),
            await show('lock_timeout'),
            await show('idle_in_transaction_session_timeout'),
          ]).toEqual(['5s', '1s', '1min'])
          throw boom
        },
      ),
    )
    expect(error).toBe(boom)
    expect(h.batches).toEqual([
      [
        'BEGIN ISOLATION LEVEL READ COMMITTED',
        'SET LOCAL statement_timeout = 5000',
        'SET LOCAL lock_timeout = 1000',
        'SET LOCAL idle_in_transaction_session_timeout = 60000',
        'SHOW statement_timeout',
      ],
      ['SHOW lock_timeout'],
      ['SHOW idle_in_transaction_session_timeout'],
      ['ROLLBACK'],
    ])
    expect(h.roundTrips()).toBe(4)
    for (const setting of TIMEOUT_SETTINGS) expect(await show(setting)).toBe(baseline[setting])
    expectNoSessionSet(h.statements)
  })

  test('statementTimeout cancels a long statement with 57014; the block rejects with that error', async () => {
    const error = await rejection(atomic({ statementTimeout: 100 }, () => h.db.query('select pg_sleep(5)')))
    expect(error).toBeInstanceOf(pg.DatabaseError)
    expect(error).toMatchObject({ code: '57014', message: 'canceling statement due to statement timeout' })
    expect(h.statements).toEqual(['BEGIN', 'SET LOCAL statement_timeout = 100', 'select pg_sleep(5)', 'ROLLBACK'])
    // The connection survived and is clean.
    await expect(atomic(async () => (await h.db.query<{ n: number }>('select 1 as n')).rows)).resolves.toEqual([
      { n: 1 },
    ])
    expect(await show('statement_timeout')).toBe(baseline['statement_timeout'])
  })

  test('lockTimeout gives up waiting for a row lock held by another session with 55P03', async () => {
    const holder = new pg.Client({ connectionString: h.testDb.url })
    await holder.connect()
    try {
      await holder.query('begin')
      await holder.query('select * from t where id = 1 for update')
      // statementTimeout only bounds the test if lockTimeout were ignored (it would then fail with 57014).
      const error = await rejection(
        atomic({ lockTimeout: 100, statementTimeout: 10000 }, () => h.db.query('update t set x = x + 1 where id = 1')),
      )
      expect(error).toBeInstanceOf(pg.DatabaseError)
      expect(error).toMatchObject({ code: '55P03', message: 'canceling statement due to lock timeout' })
      expect(isLockNotAvailable(error)).toBe(true)
      expect(h.statements).toEqual([
        'BEGIN',
        'SET LOCAL statement_timeout = 10000',
        'SET LOCAL lock_timeout = 100',
        'update t set x = x + 1 where id = 1',
        'ROLLBACK',
      ])
    } finally {
      await holder.query('rollback')
      await holder.end()
    }
    expect(await h.column('select x from t where id = 1')).toEqual([0])
  })

  describe('on nested blocks', () => {
    test(
      'SET LOCAL after the SAVEPOINT; the outer value is restored with the RELEASE ' + 'before the next outer query',
      async () => {
        await atomic({ lockTimeout: 1000 }, async () => {
          expect(await show('lock_timeout')).toBe('1s')
          await atomic({ lockTimeout: 100 }, async () => {
            expect(await show('lock_timeout')).toBe('100ms')
          })
          expect(await show('lock_timeout')).toBe('1s')
        })
        expect(h.statements).toEqual([
          'BEGIN',
          'SET LOCAL lock_timeout = 1000',
          'SHOW lock_timeout',
          'SAVEPOINT "pga_1"',
          'SET LOCAL lock_timeout = 100',
          'SHOW lock_timeout',
          'RELEASE SAVEPOINT "pga_1"',
          'SET LOCAL lock_timeout = 1000',
          'SHOW lock_timeout',
          'COMMIT',
        ])
      },
    )

    test('when the outer block set no timeout, the session default is restored', async () => {
      await atomic(async () => {
        await h.db.query('select 1')
        await atomic({ lockTimeout: 100, statementTimeout: 2000 }, async () => {
          expect([await show('statement_timeout'), await show('lock_timeout')]).toEqual(['2s', '100ms'])
        })
        expect([await show('statement_timeout'), await show('lock_timeout')]).toEqual([
          baseline['statement_timeout'],
          baseline['lock_timeout'],
        ])
      })
      expect(h.statements).toEqual([
        'BEGIN',
        'select 1',
        'SAVEPOINT "pga_1"',
        'SET LOCAL statement_timeout = 2000',
        'SET LOCAL lock_timeout = 100',
        'SHOW statement_timeout',
        'SHOW lock_timeout',
        'RELEASE SAVEPOINT "pga_1"',
        'SET LOCAL statement_timeout TO DEFAULT',
        'SET LOCAL lock_timeout TO DEFAULT',
        'SHOW statement_timeout',
        'SHOW lock_timeout',
        'COMMIT',
      ])
    })

    test('a nested timeout really applies inside the nested block only', async () => {
      await atomic({ statementTimeout: 10000 }, async () => {
        const error = await rejection(atomic({ statementTimeout: 50 }, () => h.db.query('select pg_sleep(5)')))
        expect(error).toMatchObject({ code: '57014' })
        // 10 s outside the nested block: this short sleep is not cancelled.
        await h.db.query('select pg_sleep(0.1)')
        expect(await show('statement_timeout')).toBe('10s')
      })
      expect(h.statements).toEqual([
        'BEGIN',
        'SET LOCAL statement_timeout = 10000',
        'SAVEPOINT "pga_1"',
        'SET LOCAL statement_timeout = 50',
        'select pg_sleep(5)',
        'ROLLBACK TO SAVEPOINT "pga_1"',
        'RELEASE SAVEPOINT "pga_1"',
        'select pg_sleep(0.1)',
        'SHOW statement_timeout',
        'COMMIT',
      ])
    })

    test('a failed nested block needs no restore: ROLLBACK TO undoes its SET LOCAL', async () => {
      const boom = new Error('boom')
      await atomic({ lockTimeout: 1000 }, async () => {
        await h.db.query('select 1')
        await expect(
          atomic({ lockTimeout: 100 }, async () => {
            await show('lock_timeout')
            throw boom
          }),
        ).rejects.toBe(boom)
        expect(await show('lock_timeout')).toBe('1s')
      })
      expect(h.statements).toEqual([
        'BEGIN',
        'SET LOCAL lock_timeout = 1000',
        'select 1',
        'SAVEPOINT "pga_1"',
        'SET LOCAL lock_timeout = 100',
        'SHOW lock_timeout',
        'ROLLBACK TO SAVEPOINT "pga_1"',
        'RELEASE SAVEPOINT "pga_1"',
        'SHOW lock_timeout',
        'COMMIT',
      ])
    })

    test('when the outer block commits right after, the RELEASE and the restore are dropped', async () => {
      await atomic(async () => {
        await h.db.query('select 1')
        await atomic({ lockTimeout: 100 }, () => h.db.query('select 2'))
      })
      expect(h.statements).toEqual([
        'BEGIN',
        'select 1',
        'SAVEPOINT "pga_1"',
        'SET LOCAL lock_timeout = 100',
        'select 2',
        'COMMIT',
      ])
    })

    test('two levels: each level gets back its own value', async () => {
      await atomic({ statementTimeout: 5000 }, async () => {
        await atomic({ statementTimeout: 3000 }, async () => {
          await atomic({ statementTimeout: 2000 }, async () => {
            expect(await show('statement_timeout')).toBe('2s')
          })
          expect(await show('statement_timeout')).toBe('3s')
        })
        expect(await show('statement_timeout')).toBe('5s')
      })
      expect(h.statements).toEqual([
        'BEGIN',
        'SET LOCAL statement_timeout = 5000',
        'SAVEPOINT "pga_1"',
        'SET LOCAL statement_timeout = 3000',
        'SAVEPOINT "pga_2"',
        'SET LOCAL statement_timeout = 2000',
        'SHOW statement_timeout',
        'RELEASE SAVEPOINT "pga_2"',
        'SET LOCAL statement_timeout = 3000',
        'SHOW statement_timeout',
        'RELEASE SAVEPOINT "pga_1"',
        'SET LOCAL statement_timeout = 5000',
        'SHOW statement_timeout',
        'COMMIT',
      ])
    })

    test('a nested block with the same value as the enclosing one sends no SET LOCAL', async () => {
      await atomic({ lockTimeout: 1000 }, async () => {
        await h.db.query('select 1')
        await atomic({ lockTimeout: 1000 }, () => show('lock_timeout'))
        await h.db.query('select 2')
      })
      expect(h.statements).toEqual([
        'BEGIN',
        'SET LOCAL lock_timeout = 1000',
        'select 1',
        'SAVEPOINT "pga_1"',
        'SHOW lock_timeout',
        // The RELEASE waits for the next control statement; COMMIT makes it unnecessary.
        'select 2',
        'COMMIT',
      ])
    })

    test('timeouts on a nested block with savepoint: false are a TransactionManagementError', async () => {
      const body = jest.fn()
      await atomic({ lockTimeout: 1000 }, async () => {
        await h.db.query('select 1')
        const error = await rejection(atomic({ savepoint: false, lockTimeout: 100 }, body))
        expect(error).toBeInstanceOf(TransactionManagementError)
        expect((error as Error).message).toMatch(/Timeouts on a nested atomic\(\) block need a savepoint/)
        // The same value as the enclosing block changes nothing, so it is allowed.
        await atomic({ savepoint: false, lockTimeout: 1000 }, () => h.db.query('select 2'))
        expect(await show('lock_timeout')).toBe('1s')
      })
      expect(body).not.toHaveBeenCalled()
      expect(h.statements).toEqual([
        'BEGIN',
        'SET LOCAL lock_timeout = 1000',
        'select 1',
        'select 2',
        'SHOW lock_timeout',
        'COMMIT',
      ])
    })
  })

  test(
    'idleInTransactionSessionTimeout: a block idle too long loses its connection; ' +
      'nothing is committed and the pool recovers',
    async () => {
      let pid = 0
      const error = await rejection(
        atomic({ idleInTransactionSessionTimeout: 150 }, async () => {
          await h.db.query('insert into t (id, x) values (100, 1)')
          pid = await backendPid()
          await idleUntilTerminated(pid)
          await h.db.query('insert into t (id, x) values (101, 1)')
        }),
      )
      expect(error).toBeInstanceOf(ConnectionLostError)
      expect((error as Error).message).toMatch(/nothing of it was committed/)
      expect((error as Error).cause).toBeInstanceOf(pg.DatabaseError)
      expect((error as Error).cause).toMatchObject({ code: '25P03' })
      expect(h.statements).toEqual([
        'BEGIN',
        'SET LOCAL idle_in_transaction_session_timeout = 150',
        'insert into t (id, x) values (100, 1)',
        'select pg_backend_pid() as pid',
      ])
      expect(await h.column('select id from t where id >= 100')).toEqual([])
      // The lost connection was destroyed, not returned: the single pooled connection is a new one.
      expect(h.pool.totalCount).toBe(h.pool.idleCount)
      const next = await atomic(async () => {
        await h.db.query('insert into t (id, x) values (102, 1)')
        return backendPid()
      })
      expect(next).not.toBe(pid)
      expect(await h.column('select id from t where id >= 100')).toEqual([102])
    },
  )
  test(
    'idleInTransactionSessionTimeout after the last query: the block rejects with ' +
      'ConnectionLostError instead of committing',
    async () => {
      const error = await rejection(
        atomic({ idleInTransactionSessionTimeout: 150 }, async () => {
          await h.db.query('insert into t (id, x) values (200, 1)')
          await idleUntilTerminated(await backendPid())
          return 'finished'
        }),
      )
      expect(error).toBeInstanceOf(ConnectionLostError)
      expect((error as Error).cause).toMatchObject({ code: '25P03' })
      expect(h.statements).toEqual([
        'BEGIN',
        'SET LOCAL idle_in_transaction_session_timeout = 150',
        'insert into t (id, x) values (200, 1)',
        'select pg_backend_pid() as pid',
      ])
      expect(await h.column('select id from t where id >= 100')).toEqual([])
      await expect(atomic(() => backendPid())).resolves.toEqual(expect.any(Number))
      expect(h.pool.totalCount).toBe(h.pool.idleCount)
    },
  )
})
