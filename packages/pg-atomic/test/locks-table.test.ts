/**
 * Table locks: lockTable(), and the internal lockTableStatement() / resolveTableLock(), with a
 * second real session holding and probing locks; identifiers up to 63 bytes and with double
 * quotes; the block a call without `using` acts on when several databases are registered.
 */
import pg from 'pg'
import { InvalidOptionError, LockNotAvailableError, TransactionManagementError, atomic, lockTable } from 'pg-atomic'
import { lockTableStatement, resolveTableLock } from '../src/locks/table-lock'
import { Boom, rejection, thrown } from './support/errors'
import { setupHarness } from './support/harness'
import type { Harness } from './support/harness'
import { heldTableModes, openSession, recordedDatabase, waitForWaiters } from './support/locks'

let h: Harness
let other: pg.Client

/** A name of exactly 63 bytes: PostgreSQL's longest identifier. */
const LONG = 'a'.repeat(63)
/** 31 two-byte characters and one ASCII letter: 63 bytes of UTF-8 in 32 characters. */
const MULTIBYTE_63 = `${'é'.repeat(31)}x`

beforeAll(async () => {
  h = await setupHarness('locks_table')
  await h.admin.query('create table accounts (id int primary key, balance int not null)')
  await h.admin.query('create table ledger (id serial primary key, amount int not null)')
  await h.admin.query('create schema "Billing"')
  await h.admin.query('create table "Billing"."Invoices" (id int primary key)')
  await h.admin.query(`create table ${LONG} (id int)`)
  await h.admin.query('create table "we""ird" (id int)')
  await h.admin.query('create schema "sch""ema"')
  await h.admin.query('create table "sch""ema"."t" (id int)')
  await h.admin.query(`create table "${MULTIBYTE_63}" (id int)`)
  other = await openSession(h)
})
afterAll(async () => {
  await other.end()
  await h.close()
})
beforeEach(async () => {
  await other.query('ROLLBACK')
  h.reset()
})

/** Runs `sql` in a transaction of the other session, always rolled back; returns its error or undefined. */
async function probe(sql: string): Promise<unknown> {
  await other.query('BEGIN')
  try {
    await other.query(sql)
    return undefined
  } catch (error) {
    return error
  } finally {
    await other.query('ROLLBACK')
  }
}

describe('lockTable()', () => {
  test('sends one LOCK TABLE in the block; the lock is held until COMMIT', async () => {
    await atomic(async () => {
      await lockTable('accounts', 'share')
      expect(await heldTableModes(h, 'accounts')).toEqual(['ShareLock'])
    })
    expect(h.statements).toEqual(['BEGIN', 'LOCK TABLE "accounts" IN SHARE MODE', 'COMMIT'])
    expect(await heldTableModes(h, 'accounts')).toEqual([])
  })

  test('upper-case modes and pg_locks names are accepted; schema-qualified names are quoted per part', async () => {
    await atomic(async () => {
      await lockTable(['Billing.Invoices', 'public.accounts'], 'ACCESS EXCLUSIVE')
      await lockTable('ledger', 'RowExclusiveLock')
    })
    expect(h.statements).toEqual([
      'BEGIN',
      'LOCK TABLE "Billing"."Invoices", "public"."accounts" IN ACCESS EXCLUSIVE MODE',
      'LOCK TABLE "ledger" IN ROW EXCLUSIVE MODE',
      'COMMIT',
    ])
  })

  test('several tables are locked in one canonical order, de-duplicated', async () => {
    await atomic(async () => {
      await lockTable(['ledger', 'accounts', 'ledger', 'public.ledger'], 'exclusive')
    })
    expect(h.statements).toEqual([
      'BEGIN',
      'LOCK TABLE "accounts", "ledger", "public"."ledger" IN EXCLUSIVE MODE',
      'COMMIT',
    ])
  })

  test('two callers listing the tables in opposite orders send the same statement and both succeed', async () => {
    // The other session holds ledger, so both callers queue up; each then gets both tables in turn.
    await other.query('BEGIN')
    await other.query('LOCK TABLE ledger IN ACCESS EXCLUSIVE MODE')
    const first = atomic({ lockTimeout: 10_000 }, async () => {
      await lockTable(['ledger', 'accounts'], 'access exclusive')
      await h.db.query('insert into ledger(amount) values (1)')
    })
    await waitForWaiters(h, 1, 'relation')
    const second = atomic({ lockTimeout: 10_000 }, async () => {
      await lockTable(['accounts', 'ledger'], 'access exclusive')
      await h.db.query('insert into ledger(amount) values (2)')
    })
    await waitForWaiters(h, 2, 'relation')
    await other.query('ROLLBACK')
    await Promise.all([first, second])
    expect(h.statements.filter((s) => s.startsWith('LOCK'))).toEqual([
      'LOCK TABLE "accounts", "ledger" IN ACCESS EXCLUSIVE MODE',
      'LOCK TABLE "accounts", "ledger" IN ACCESS EXCLUSIVE MODE',
    ])
    expect(await h.column('select amount from ledger order by amount')).toEqual([1, 2])
    await h.admin.query('truncate ledger')
  })

  test.each<[string, unknown, unknown, unknown, string]>([
    ['an unknown mode', 'accounts', 'exclusive lock', undefined, 'mode'],
    ['a mode that is not a string', 'accounts', 7, undefined, 'mode'],
    ['an empty table name', '', 'share', undefined, 'tables'],
    ['an empty list', [], 'share', undefined, 'tables'],
    ['an empty schema part', '.accounts', 'share', undefined, 'tables'],
    ['an empty table part', 'public.', 'share', undefined, 'tables'],
    ['three parts', 'db.public.accounts', 'share', undefined, 'tables'],
    ['a NUL character', 'acc\0ounts', 'share', undefined, 'tables'],
    ['a table part of 64 bytes', `${LONG}b`, 'share', undefined, 'tables'],
    ['a schema part of 64 bytes', `${LONG}b.accounts`, 'share', undefined, 'tables'],
    ['a name of 32 characters but 64 bytes', 'é'.repeat(32), 'share', undefined, 'tables'],
    ['a long name in a list', ['accounts', `${LONG}_other`], 'share', undefined, 'tables'],
    ['a number', 42, 'share', undefined, 'tables'],
    ['a non-string in the list', ['accounts', 42], 'share', undefined, 'tables'],
    ['a non-boolean nowait', 'accounts', 'share', { nowait: 'yes' }, 'nowait'],
    ['a negative timeoutMs', 'accounts', 'share', { timeoutMs: -1 }, 'timeoutMs'],
    ['a fractional timeoutMs', 'accounts', 'share', { timeoutMs: 1.5 }, 'timeoutMs'],
    ['nowait with timeoutMs', 'accounts', 'share', { nowait: true, timeoutMs: 10 }, 'timeoutMs'],
    ['the old name timeout', 'accounts', 'share', { timeout: 10 }, 'timeout'],
    ['an unknown option', 'accounts', 'share', { noWait: true }, 'noWait'],
    ['an empty using', 'accounts', 'share', { using: '' }, 'using'],
    ['options that are not an object', 'accounts', 'share', 'nowait', 'options'],
  ])('%s is an InvalidOptionError and nothing is sent', async (_name, tables, mode, options, field) => {
    await atomic(async () => {
      const error = await rejection(lockTable(tables as string, mode as string, options as never))
      expect(error).toBeInstanceOf(InvalidOptionError)
      expect(error).toMatchObject({ name: 'InvalidOptionError', field })
    })
    expect(h.statements).toEqual([])
  })

  test('the messages name the field and what is allowed', async () => {
    const invalid = async (
      tables: unknown,
      mode: unknown,
      options: unknown,
      field: string,
      message: string,
    ): Promise<void> => {
      const error = await rejection(lockTable(tables as string, mode as string, options as never))
      expect(error).toBeInstanceOf(InvalidOptionError)
      expect(error).toMatchObject({ name: 'InvalidOptionError', field, message })
    }
    await invalid(
      'accounts',
      'exclusive lock',
      undefined,
      'mode',
      "Invalid option \"mode\" for lockTable(): it must be one of 'access share', 'row share', 'row " +
        "exclusive', 'share update exclusive', 'share', 'share row exclusive', 'exclusive', 'access " +
        "exclusive' (any case), or a pg_locks name such as 'RowExclusiveLock'.",
    )
    await invalid(
      `${LONG}_other`,
      'share',
      undefined,
      'tables',
      "Invalid option \"tables\" for lockTable(): it must be a table name such as 'accounts' or 'public.accounts', " +
        'or a non-empty list of them; names are taken literally (exact case, quoted by pg-atomic), ' +
        'with at most one dot, and each part is non-empty, without NUL character and at most 63 bytes ' +
        'of UTF-8 (PostgreSQL would cut a longer name and lock another table).',
    )
    await invalid(
      'accounts',
      'share',
      { timeoutMs: -1 },
      'timeoutMs',
      'Invalid option "timeoutMs" for lockTable(): it must be a whole number of milliseconds from ' +
        '0 to 2147483647 (0 waits without limit).',
    )
    await invalid(
      'accounts',
      'share',
      { nowait: true, timeoutMs: 10 },
      'timeoutMs',
      'Invalid option "timeoutMs" for lockTable(): it cannot be combined with "nowait": NOWAIT fails ' +
        'at once, timeoutMs waits up to that long. Choose one.',
    )
    await invalid(
      'accounts',
      'share',
      { noWait: true },
      'noWait',
      'Unknown option "noWait" for lockTable(). The accepted options are: nowait, timeoutMs, using.',
    )
    await invalid(
      'accounts',
      'share',
      { timeout: 10 },
      'timeout',
      'Unknown option "timeout" for lockTable(). The accepted options are: nowait, timeoutMs, using.',
    )
    await invalid('accounts', 'share', null, 'options', 'The options of lockTable() must be an object.')
    expect(h.statements).toEqual([])
  })

  test(
    'regression (issue 7, defect 3): a name longer than 63 bytes is refused instead of locking ' +
      'the table PostgreSQL would cut it to',
    async () => {
      // Sent as is, PostgreSQL truncates "aaa…a_other" to 63 bytes and locks the existing table "aaa…a".
      await atomic(async () => {
        const error = await rejection(lockTable(`${LONG}_other`, 'access exclusive'))
        expect(error).toMatchObject({ name: 'InvalidOptionError', field: 'tables' })
        expect(await heldTableModes(h, `"${LONG}"`)).toEqual([])
        const schemaError = await rejection(lockTable(`${LONG}_other.accounts`, 'access exclusive'))
        expect(schemaError).toMatchObject({ name: 'InvalidOptionError', field: 'tables' })
      })
      expect(h.statements).toEqual([])
    },
  )

  test('names of exactly 63 bytes are accepted, also when their characters take two bytes each', async () => {
    await atomic(async () => {
      await lockTable([LONG, MULTIBYTE_63], 'share')
      expect(await heldTableModes(h, `"${LONG}"`)).toEqual(['ShareLock'])
      expect(await heldTableModes(h, `"${MULTIBYTE_63}"`)).toEqual(['ShareLock'])
    })
    expect(h.statements).toEqual(['BEGIN', `LOCK TABLE "${LONG}", "${MULTIBYTE_63}" IN SHARE MODE`, 'COMMIT'])
  })

  test(
    'regression (issue 7, defect 4): a table named with a double quote is quoted the standard way ' +
      '(doubled) and locked',
    async () => {
      await atomic(async () => {
        await lockTable('we"ird', 'exclusive')
        expect(await heldTableModes(h, '"we""ird"')).toEqual(['ExclusiveLock'])
        await lockTable('sch"ema.t', 'share')
        expect(await heldTableModes(h, '"sch""ema"."t"')).toEqual(['ShareLock'])
      })
      expect(h.statements).toEqual([
        'BEGIN',
        'LOCK TABLE "we""ird" IN EXCLUSIVE MODE',
        'LOCK TABLE "sch""ema"."t" IN SHARE MODE',
        'COMMIT',
      ])
      // Names are taken literally: quotes written around a name are part of it (no table "accounts"
      // with quotes in its name exists).
      const error = await rejection(atomic(() => lockTable('"accounts"', 'share')))
      expect(error).toMatchObject({ code: '42P01', message: 'relation ""accounts"" does not exist' })
    },
  )

  test('outside a block: TransactionManagementError before anything is sent', async () => {
    const error = await rejection(lockTable('accounts', 'share'))
    expect(error).toBeInstanceOf(TransactionManagementError)
    expect(error).toMatchObject({
      message:
        'LOCK TABLE cannot be used outside of a transaction: call lockTable() inside an atomic() block ' +
        '(a lock taken in autocommit mode is released at once).',
    })
    expect(h.statements).toEqual([])
  })

  test('an unregistered database alias is a TransactionManagementError', async () => {
    await expect(lockTable('accounts', 'share', { using: 'nope' })).rejects.toMatchObject({
      name: 'TransactionManagementError',
      message: "No database is registered under the alias 'nope': call createDatabase({ alias: 'nope', ... }) first.",
    })
  })

  test(
    'NOWAIT against a conflicting lock: LockNotAvailableError naming the relation; the block rolls ' + 'back',
    async () => {
      await other.query('BEGIN')
      await other.query('LOCK TABLE accounts IN SHARE MODE')
      let caught: unknown
      const error = await rejection(
        atomic(async () => {
          caught = await rejection(lockTable(['accounts'], 'row exclusive', { nowait: true }))
          throw caught
        }),
      )
      expect(error).toBe(caught)
      expect(error).toBeInstanceOf(LockNotAvailableError)
      expect(error).toMatchObject({
        name: 'LockNotAvailableError',
        code: '55P03',
        relation: 'accounts',
        reason: 'nowait',
        message:
          'Could not obtain a lock on relation "accounts" without waiting (NOWAIT): another transaction ' +
          'holds a conflicting lock. The statement failed, so the enclosing atomic() block must roll ' +
          'back; try again later, or catch the error outside a nested atomic() block to let the rest ' +
          'of the transaction continue.',
      })
      expect((error as LockNotAvailableError).cause).toBeInstanceOf(pg.DatabaseError)
      expect((error as LockNotAvailableError).cause).toMatchObject({
        code: '55P03',
        message: 'could not obtain lock on relation "accounts"',
      })
      expect(h.statements).toEqual(['BEGIN', 'LOCK TABLE "accounts" IN ROW EXCLUSIVE MODE NOWAIT', 'ROLLBACK'])
    },
  )

  test('NOWAIT with several tables names the one PostgreSQL could not lock', async () => {
    await other.query('BEGIN')
    await other.query('LOCK TABLE ledger IN SHARE MODE')
    const error = await rejection(atomic(() => lockTable(['ledger', 'accounts'], 'exclusive', { nowait: true })))
    expect(error).toMatchObject({ name: 'LockNotAvailableError', relation: 'ledger', reason: 'nowait' })
  })

  test(
    'timeoutMs: LockNotAvailableError after lock_timeout, and the previous lock_timeout is back ' + 'afterwards',
    async () => {
      await other.query('BEGIN')
      await other.query('LOCK TABLE accounts IN SHARE MODE')
      await atomic({ lockTimeout: 5000 }, async () => {
        const error = await rejection(atomic(() => lockTable('public.accounts', 'row exclusive', { timeoutMs: 50 })))
        expect(error).toBeInstanceOf(LockNotAvailableError)
        expect(error).toMatchObject({
          code: '55P03',
          relation: 'public.accounts',
          reason: 'lock_timeout',
          message:
            'Gave up waiting for a lock on relation "public.accounts" when lock_timeout expired: another ' +
            'transaction holds a conflicting lock. The statement failed, so the enclosing atomic() block ' +
            'must roll back; try again later, or catch the error outside a nested atomic() block to let ' +
            'the rest of the transaction continue.',
        })
        expect((error as LockNotAvailableError).cause).toMatchObject({
          code: '55P03',
          message: 'canceling statement due to lock timeout',
        })
        expect((await h.db.query('SHOW lock_timeout')).rows).toEqual([{ lock_timeout: '5s' }])
      })
      expect(h.statements).toEqual([
        'BEGIN; SET LOCAL lock_timeout = 5000; SAVEPOINT "pga_1"',
        "SELECT set_config('pga.saved_lock_timeout', current_setting('lock_timeout'), true); SET LOCAL " +
          'lock_timeout = 50; LOCK TABLE "public"."accounts" IN ROW EXCLUSIVE MODE; ' +
          "SELECT set_config('lock_timeout', current_setting('pga.saved_lock_timeout'), true)",
        'ROLLBACK TO SAVEPOINT "pga_1"',
        'RELEASE SAVEPOINT "pga_1"',
        'SHOW lock_timeout',
        'COMMIT',
      ])
    },
  )

  test('timeoutMs: when the lock is obtained, lock_timeout is restored in the same round trip', async () => {
    await atomic({ lockTimeout: 3000 }, async () => {
      await h.db.query('select 1')
      const before = h.roundTrips()
      await lockTable('accounts', 'share', { timeoutMs: 100 })
      expect(h.roundTrips() - before).toBe(1)
      expect((await h.db.query('SHOW lock_timeout')).rows).toEqual([{ lock_timeout: '3s' }])
    })
    await atomic(async () => {
      await lockTable('accounts', 'share', { timeoutMs: 100 })
      expect((await h.db.query('SHOW lock_timeout')).rows).toEqual([{ lock_timeout: '0' }])
    })
  })

  test('a lock taken in a nested block that rolls back is released while the outer block continues', async () => {
    await atomic(async () => {
      await h.db.query('select 1')
      const error = await rejection(
        atomic(async () => {
          await lockTable('accounts', 'access exclusive')
          expect(await probe('LOCK TABLE accounts IN ACCESS SHARE MODE NOWAIT')).toMatchObject({ code: '55P03' })
          throw new Boom('undo')
        }),
      )
      expect(error).toBeInstanceOf(Boom)
      // PostgreSQL releases the lock at ROLLBACK TO SAVEPOINT, which pg-atomic sends within a tick of
      // the nested block failing: another session gets it (waiting at most its lock_timeout for that
      // ROLLBACK TO to arrive) while this transaction is still open, without any further statement here.
      expect(await probe('LOCK TABLE accounts IN ACCESS EXCLUSIVE MODE')).toBeUndefined()
      await h.db.query('insert into ledger(amount) values (7)')
    })
    expect(await h.column('select amount from ledger')).toEqual([7])
    await h.admin.query('truncate ledger')
  })

  test('a lock taken in a nested block that succeeds is kept until the outer block ends', async () => {
    await atomic(async () => {
      await atomic(() => lockTable('accounts', 'access exclusive'))
      expect(await probe('LOCK TABLE accounts IN ACCESS SHARE MODE NOWAIT')).toMatchObject({ code: '55P03' })
    })
    expect(await probe('LOCK TABLE accounts IN ACCESS EXCLUSIVE MODE NOWAIT')).toBeUndefined()
  })

  test('errors other than 55P03 pass through unchanged', async () => {
    const error = await rejection(atomic(() => lockTable('no_such_table', 'share')))
    expect(error).toBeInstanceOf(pg.DatabaseError)
    expect(error).toMatchObject({ code: '42P01', message: 'relation "no_such_table" does not exist' })
  })
})

describe('without using: the innermost active block of the current context, whatever its database', () => {
  test(
    "regression (issue 7, defect 6): inside a block of a database registered only as 'reports', " +
      'lockTable() locks in that block',
    async () => {
      const reports = recordedDatabase(h, 'reports')
      try {
        let pid = 0
        await atomic({ using: 'reports' }, async () => {
          pid = (await reports.db.query<{ pid: number }>('select pg_backend_pid() as pid')).rows[0]?.pid ?? 0
          await lockTable('ledger', 'exclusive')
          expect(
            await h.column('select mode from pg_locks where pid = $1 and relation = $2::regclass', [pid, 'ledger']),
          ).toEqual(['ExclusiveLock'])
        })
        expect(reports.statements).toEqual([
          'BEGIN',
          'select pg_backend_pid() as pid',
          'LOCK TABLE "ledger" IN EXCLUSIVE MODE',
          'COMMIT',
        ])
        expect(h.statements).toEqual([])
      } finally {
        await reports.close()
      }
    },
  )

  test('nested blocks of two databases: without using the innermost one, with using the one named', async () => {
    const reports = recordedDatabase(h, 'reports')
    try {
      await atomic(async () => {
        await h.db.query('select 1')
        await atomic({ using: 'reports' }, async () => {
          await lockTable('accounts', 'share')
          await lockTable('ledger', 'share', { using: 'default' })
        })
      })
      expect(reports.statements).toEqual(['BEGIN', 'LOCK TABLE "accounts" IN SHARE MODE', 'COMMIT'])
      expect(h.statements).toEqual(['BEGIN', 'select 1', 'LOCK TABLE "ledger" IN SHARE MODE', 'COMMIT'])
    } finally {
      await reports.close()
    }
  })

  test(
    "with using: a registered database without an active block is 'outside a transaction', even " +
      "inside another database's block",
    async () => {
      const reports = recordedDatabase(h, 'reports')
      try {
        const error = await rejection(
          atomic({ using: 'reports' }, () => lockTable('accounts', 'share', { using: 'default' })),
        )
        expect(error).toBeInstanceOf(TransactionManagementError)
        expect(error).toMatchObject({
          message:
            'LOCK TABLE cannot be used outside of a transaction: call lockTable() inside an atomic() block ' +
            '(a lock taken in autocommit mode is released at once).',
        })
        expect(h.statements).toEqual([])
      } finally {
        await reports.close()
      }
    },
  )
})

describe('lockTableStatement() and resolveTableLock() (internal: the statement builder and the lock option)', () => {
  test('lockTableStatement() builds the SQL without sending anything', () => {
    expect(lockTableStatement(['ledger', 'accounts'], 'share row exclusive', { nowait: true })).toBe(
      'LOCK TABLE "accounts", "ledger" IN SHARE ROW EXCLUSIVE MODE NOWAIT',
    )
    expect(lockTableStatement('Ledger Entries', 'Share')).toBe('LOCK TABLE "Ledger Entries" IN SHARE MODE')
    expect(lockTableStatement('we"ird', 'share')).toBe('LOCK TABLE "we""ird" IN SHARE MODE')
    expect(lockTableStatement('accounts', 'access share', { timeoutMs: 0 })).toBe(
      "SELECT set_config('pga.saved_lock_timeout', current_setting('lock_timeout'), true); SET LOCAL " +
        'lock_timeout = 0; LOCK TABLE "accounts" IN ACCESS SHARE MODE; SELECT set_config(\'lock_timeout\', ' +
        "current_setting('pga.saved_lock_timeout'), true)",
    )
    expect(thrown(() => lockTableStatement('accounts', 'nope'))).toBeInstanceOf(InvalidOptionError)
    expect(h.statements).toEqual([])
  })

  test('canonical order: by table name, then schema (unqualified first), in code-unit order', () => {
    expect(lockTableStatement(['b.t', 'a.t', 't', 'Z', 'a'], 'share')).toBe(
      'LOCK TABLE "Z", "a", "t", "a"."t", "b"."t" IN SHARE MODE',
    )
  })

  test('resolveTableLock() returns a frozen, validated lock with its statement', () => {
    const lock = resolveTableLock({ tables: ['ledger', 'public.accounts'], mode: 'EXCLUSIVE', nowait: true })
    expect(lock).toEqual({
      tables: ['public.accounts', 'ledger'],
      mode: 'exclusive',
      nowait: true,
      timeoutMs: undefined,
      statement: 'LOCK TABLE "public"."accounts", "ledger" IN EXCLUSIVE MODE NOWAIT',
    })
    expect(Object.isFrozen(lock)).toBe(true)
    expect(Object.isFrozen(lock.tables)).toBe(true)
  })

  test.each<[string, unknown, string, string]>([
    [
      'a bad mode',
      { tables: 'a', mode: 'x' },
      'lock.mode',
      "Invalid option \"lock.mode\" for atomic(): it must be one of 'access share', 'row share', " +
        "'row exclusive', 'share update exclusive', 'share', 'share row exclusive', 'exclusive', 'access " +
        "exclusive' (any case), or a pg_locks name such as 'RowExclusiveLock'.",
    ],
    [
      'missing tables',
      { mode: 'share' },
      'lock.tables',
      'Invalid option "lock.tables" for atomic(): it must be a table name such as \'accounts\' or ' +
        "'public.accounts', or a non-empty list of them; names are taken literally (exact case, quoted " +
        'by pg-atomic), with at most one dot, and each part is non-empty, without NUL character and ' +
        'at most 63 bytes of UTF-8 (PostgreSQL would cut a longer name and lock another table).',
    ],
    [
      'missing mode',
      { tables: 'a' },
      'lock.mode',
      "Invalid option \"lock.mode\" for atomic(): it must be one of 'access share', 'row share', " +
        "'row exclusive', 'share update exclusive', 'share', 'share row exclusive', 'exclusive', 'access " +
        "exclusive' (any case), or a pg_locks name such as 'RowExclusiveLock'.",
    ],
    [
      'a table of 64 bytes',
      { tables: [`${LONG}_`], mode: 'share' },
      'lock.tables',
      'Invalid option "lock.tables" for atomic(): it must be a table name such as \'accounts\' or ' +
        "'public.accounts', or a non-empty list of them; names are taken literally (exact case, quoted " +
        'by pg-atomic), with at most one dot, and each part is non-empty, without NUL character and ' +
        'at most 63 bytes of UTF-8 (PostgreSQL would cut a longer name and lock another table).',
    ],
    [
      'an unknown key',
      { tables: 'a', mode: 'share', using: 'x' },
      'lock.using',
      'Unknown option "lock.using" for atomic(): "lock" must be an object { tables, mode, nowait?, ' +
        "timeoutMs? }, e.g. { tables: 'accounts', mode: 'share row exclusive' }.",
    ],
    [
      'nowait with timeoutMs',
      { tables: 'a', mode: 'share', nowait: true, timeoutMs: 5 },
      'lock.timeoutMs',
      'Invalid option "lock.timeoutMs" for atomic(): it cannot be combined with "lock.nowait": NOWAIT ' +
        'fails at once, timeoutMs waits up to that long. Choose one.',
    ],
    [
      'not an object',
      'a',
      'lock',
      'Invalid option "lock" for atomic(): it must be an object { tables, mode, nowait?, timeoutMs? ' +
        "}, e.g. { tables: 'accounts', mode: 'share row exclusive' }.",
    ],
  ])('resolveTableLock() with %s: InvalidOptionError with a prefixed field', (_name, input, field, message) => {
    const error = thrown(() => resolveTableLock(input as never))
    expect(error).toBeInstanceOf(InvalidOptionError)
    expect(error).toMatchObject({ name: 'InvalidOptionError', field, message })
  })

  test('resolveTableLock() uses the given field name', () => {
    expect(thrown(() => resolveTableLock({ tables: 'a', mode: 'x' }, 'options.lock'))).toMatchObject({
      field: 'options.lock.mode',
      message:
        "Invalid option \"options.lock.mode\" for atomic(): it must be one of 'access share', 'row " +
        "share', 'row exclusive', 'share update exclusive', 'share', 'share row exclusive', 'exclusive', " +
        "'access exclusive' (any case), or a pg_locks name such as 'RowExclusiveLock'.",
    })
  })
})
