/**
 * Row locks: forUpdate() (the clause builder) and selectForUpdate() (runs in the current block),
 * against a second real session; `of` names quoted (double quotes doubled) and refused beyond 63
 * bytes; the block a call without `using` acts on when several databases are registered.
 */
import pg from 'pg'
import {
  InvalidOptionError,
  LockNotAvailableError,
  ROW_LOCK_STRENGTHS,
  TransactionManagementError,
  atomic,
  forUpdate,
  selectForUpdate,
} from 'pg-atomic'
import { rejection, thrown } from './support/errors'
import { setupHarness } from './support/harness'
import type { Harness } from './support/harness'
import { openSession, recordedDatabase } from './support/locks'

let h: Harness
let other: pg.Client

beforeAll(async () => {
  h = await setupHarness('locks_rows')
  await h.admin.query('create table accounts (id int primary key, balance int not null)')
  await h.admin.query('create table transfers (id serial primary key, account_id int not null references accounts(id))')
  await h.admin.query('insert into accounts values (1, 100), (2, 200), (3, 300)')
  await h.admin.query('create table "we""ird" (id int primary key); insert into "we""ird" values (1)')
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

const AFTER_FAILURE =
  ' The statement failed, so the enclosing atomic() block must roll back; try again later, or ' +
  'catch the error outside a nested atomic() block to let the rest of the transaction continue.'

describe('forUpdate()', () => {
  test('builds the locking clause (pure, usable anywhere)', () => {
    expect(forUpdate()).toBe('FOR UPDATE')
    expect(ROW_LOCK_STRENGTHS).toEqual(['update', 'no key update', 'share', 'key share'])
    expect(forUpdate({ strength: 'no key update' })).toBe('FOR NO KEY UPDATE')
    expect(forUpdate({ strength: 'SHARE' })).toBe('FOR SHARE')
    expect(forUpdate({ strength: 'key share', nowait: true })).toBe('FOR KEY SHARE NOWAIT')
    expect(forUpdate({ of: 'a', skipLocked: true })).toBe('FOR UPDATE OF "a" SKIP LOCKED')
    expect(forUpdate({ of: ['a', 'Accounts'], nowait: false, skipLocked: false })).toBe('FOR UPDATE OF "a", "Accounts"')
    expect(forUpdate({ of: 'we"ird' })).toBe('FOR UPDATE OF "we""ird"')
    expect(forUpdate({ of: 'b'.repeat(63) })).toBe(`FOR UPDATE OF "${'b'.repeat(63)}"`)
    expect(h.statements).toEqual([])
  })

  test.each<[string, unknown, string]>([
    ['an unknown strength', { strength: 'exclusive' }, 'strength'],
    ['a non-string strength', { strength: 1 }, 'strength'],
    ['nowait with skipLocked', { nowait: true, skipLocked: true }, 'skipLocked'],
    ['a non-boolean nowait', { nowait: 1 }, 'nowait'],
    ['a non-boolean skipLocked', { skipLocked: 'yes' }, 'skipLocked'],
    ['an empty of', { of: '' }, 'of'],
    ['an empty of list', { of: [] }, 'of'],
    ['a qualified of', { of: 'public.accounts' }, 'of'],
    ['an of of 64 bytes', { of: 'b'.repeat(64) }, 'of'],
    ['an of with a NUL character', { of: 'a\0' }, 'of'],
    ['a non-string of', { of: [1] }, 'of'],
    ['an unknown option', { noKey: true }, 'noKey'],
    ['using (selectForUpdate only)', { using: 'default' }, 'using'],
  ])('%s is an InvalidOptionError', (_name, options, field) => {
    const error = thrown(() => forUpdate(options as never))
    expect(error).toBeInstanceOf(InvalidOptionError)
    expect(error).toMatchObject({ name: 'InvalidOptionError', field })
  })

  test('messages name the field and what is allowed', () => {
    const invalid = (options: unknown, field: string, message: string): void => {
      const error = thrown(() => forUpdate(options as never))
      expect(error).toBeInstanceOf(InvalidOptionError)
      expect(error).toMatchObject({ name: 'InvalidOptionError', field, message })
    }
    invalid(
      { nowait: true, skipLocked: true },
      'skipLocked',
      'Invalid option "skipLocked" for forUpdate(): it cannot be combined with "nowait": NOWAIT fails ' +
        'on a locked row, SKIP LOCKED leaves it out. Choose one.',
    )
    invalid(
      { strength: 'exclusive' },
      'strength',
      "Invalid option \"strength\" for forUpdate(): it must be one of 'update', 'no key update', " +
        "'share', 'key share' (upper case accepted).",
    )
    invalid(
      { of: 'public.accounts' },
      'of',
      'Invalid option "of" for forUpdate(): it must be a table name or alias exactly as written in ' +
        'the FROM clause, or a non-empty list of them; each taken literally (quoted by pg-atomic), ' +
        'without schema (no dot), non-empty, without NUL character and at most 63 bytes of UTF-8.',
    )
    invalid(
      { using: 'default' },
      'using',
      'Unknown option "using" for forUpdate(). The accepted options are: strength, of, nowait, skipLocked.',
    )
  })
})

describe('selectForUpdate()', () => {
  test('appends the clause on a new line and runs in the block', async () => {
    const rows = await atomic(
      async () => (await selectForUpdate<{ id: number }>('select id from accounts where id = $1', [1])).rows,
    )
    expect(rows).toEqual([{ id: 1 }])
    expect(h.statements).toEqual(['BEGIN', 'select id from accounts where id = $1\nFOR UPDATE', 'COMMIT'])
  })

  test('trailing semicolons, whitespace and a trailing -- comment do not swallow the clause', async () => {
    await atomic(async () => {
      await selectForUpdate('select id from accounts where id = 1 ; \n', { strength: 'share' })
      await selectForUpdate('select id from accounts where id = 1 -- the first one', [], { strength: 'key share' })
      expect(await probe('select id from accounts where id = 1 for update nowait')).toMatchObject({ code: '55P03' })
    })
    expect(h.statements).toEqual([
      'BEGIN',
      'select id from accounts where id = 1\nFOR SHARE',
      'select id from accounts where id = 1 -- the first one\nFOR KEY SHARE',
      'COMMIT',
    ])
  })

  test("outside a block: Django's TransactionManagementError at execution, nothing sent", async () => {
    const clause = forUpdate({ nowait: true }) // building the clause is fine anywhere
    expect(clause).toBe('FOR UPDATE NOWAIT')
    const error = await rejection(selectForUpdate('select id from accounts', { nowait: true }))
    expect(error).toBeInstanceOf(TransactionManagementError)
    expect(error).toMatchObject({
      message:
        'select_for_update cannot be used outside of a transaction. Call selectForUpdate() inside an ' +
        'atomic() block: in autocommit mode the row locks would be released as soon as the statement ' +
        'ends.',
    })
    expect(h.statements).toEqual([])
  })

  test('invalid options and text are InvalidOptionErrors, before anything is sent', async () => {
    await atomic(async () => {
      await expect(selectForUpdate('select 1', { nowait: true, skipLocked: true })).rejects.toMatchObject({
        name: 'InvalidOptionError',
        field: 'skipLocked',
        message:
          'Invalid option "skipLocked" for selectForUpdate(): it cannot be combined with "nowait": NOWAIT ' +
          'fails on a locked row, SKIP LOCKED leaves it out. Choose one.',
      })
      await expect(selectForUpdate('', [])).rejects.toMatchObject({
        name: 'InvalidOptionError',
        field: 'text',
        message:
          'Invalid option "text" for selectForUpdate(): it must be the SQL text of a SELECT without its ' +
          'locking clause (a non-empty string).',
      })
      await expect(selectForUpdate('select 1', { using: '' })).rejects.toMatchObject({
        name: 'InvalidOptionError',
        field: 'using',
        message:
          'Invalid option "using" for selectForUpdate(): it must be a non-empty string naming a registered database.',
      })
      await expect(selectForUpdate('select 1', { of: 'x' } as never, { of: 'y' })).rejects.toMatchObject({
        name: 'InvalidOptionError',
        field: 'values',
        message:
          'Invalid option "values" for selectForUpdate(): it must be an array of parameters for $1, $2, ' +
          '...: selectForUpdate() takes (text, values, options) or (text, options).',
      })
    })
    expect(h.statements).toEqual([])
  })

  test("FOR UPDATE blocks another session's FOR UPDATE NOWAIT (55P03) until COMMIT", async () => {
    await atomic(async () => {
      await selectForUpdate('select id from accounts where id = 1')
      expect(await probe('select id from accounts where id = 1 for update nowait')).toMatchObject({
        code: '55P03',
        message: 'could not obtain lock on row in relation "accounts"',
      })
      expect(await probe('select id from accounts where id = 2 for update nowait')).toBeUndefined()
    })
    expect(await probe('select id from accounts where id = 1 for update nowait')).toBeUndefined()
  })

  test('nowait against a locked row: LockNotAvailableError naming the relation', async () => {
    await other.query('BEGIN')
    await other.query('select id from accounts where id = 2 for update')
    const error = await rejection(
      atomic(() => selectForUpdate('select id from accounts where id = $1', [2], { nowait: true })),
    )
    expect(error).toBeInstanceOf(LockNotAvailableError)
    expect(error).toMatchObject({
      code: '55P03',
      relation: 'accounts',
      reason: 'nowait',
      message:
        `Could not obtain a row lock in relation "accounts" without waiting (NOWAIT): another transaction ` +
        `holds a conflicting lock.${AFTER_FAILURE}`,
    })
    expect((error as LockNotAvailableError).cause).toBeInstanceOf(pg.DatabaseError)
    expect(h.statements).toEqual(['BEGIN', 'select id from accounts where id = $1\nFOR UPDATE NOWAIT', 'ROLLBACK'])
  })

  test('lock_timeout on a locked row: LockNotAvailableError with the relation from the error context', async () => {
    await other.query('BEGIN')
    await other.query('select id from accounts where id = 2 for update')
    const error = await rejection(
      atomic({ lockTimeout: 50 }, () => selectForUpdate('select id from accounts where id = 2')),
    )
    expect(error).toMatchObject({
      name: 'LockNotAvailableError',
      relation: 'accounts',
      reason: 'lock_timeout',
      message:
        `Gave up waiting for a row lock in relation "accounts" when lock_timeout expired: another transaction ` +
        `holds a conflicting lock.${AFTER_FAILURE}`,
    })
    expect((error as LockNotAvailableError).cause).toMatchObject({
      code: '55P03',
      message: 'canceling statement due to lock timeout',
    })
  })

  test('SKIP LOCKED leaves out the rows another session has locked', async () => {
    await other.query('BEGIN')
    await other.query('select id from accounts where id = 1 for update')
    const ids = await atomic(async () =>
      (await selectForUpdate<{ id: number }>('select id from accounts order by id', { skipLocked: true })).rows.map(
        (r) => r.id,
      ),
    )
    expect(ids).toEqual([2, 3])
  })

  test(
    'NO KEY UPDATE lets KEY SHARE (and foreign-key inserts) through, but not SHARE; FOR UPDATE ' + 'blocks KEY SHARE',
    async () => {
      await atomic(async () => {
        await selectForUpdate('select id from accounts where id = 3', { strength: 'no key update' })
        expect(await probe('select id from accounts where id = 3 for key share nowait')).toBeUndefined()
        expect(await probe('insert into transfers(account_id) values (3)')).toBeUndefined()
        expect(await probe('select id from accounts where id = 3 for share nowait')).toMatchObject({ code: '55P03' })
      })
      await atomic(async () => {
        await selectForUpdate('select id from accounts where id = 3', { strength: 'update' })
        expect(await probe('select id from accounts where id = 3 for key share nowait')).toMatchObject({
          code: '55P03',
        })
      })
      await atomic(async () => {
        await selectForUpdate('select id from accounts where id = 3', { strength: 'key share' })
        expect(await probe('select id from accounts where id = 3 for no key update nowait')).toBeUndefined()
        expect(await probe('select id from accounts where id = 3 for update nowait')).toMatchObject({ code: '55P03' })
      })
    },
  )

  test('OF locks only the named table (the non-nullable side of an outer join)', async () => {
    const sql = 'select a.id from accounts a left join transfers t on t.account_id = a.id where a.id = 1'
    const unsupported = await rejection(atomic(() => selectForUpdate(sql)))
    expect(unsupported).toBeInstanceOf(pg.DatabaseError)
    expect(unsupported).toMatchObject({
      code: '0A000',
      message: 'FOR UPDATE cannot be applied to the nullable side of an outer join',
    })
    await atomic(async () => {
      expect((await selectForUpdate(sql, { of: 'a' })).rows).toEqual([{ id: 1 }])
      expect(await probe('select id from accounts where id = 1 for update nowait')).toMatchObject({ code: '55P03' })
    })
  })

  test('unsupported shapes (0A000) and read-only transactions (25006) pass through unchanged', async () => {
    const aggregate = await rejection(atomic(() => selectForUpdate('select count(*) from accounts')))
    expect(aggregate).toBeInstanceOf(pg.DatabaseError)
    expect(aggregate).toMatchObject({ code: '0A000', message: 'FOR UPDATE is not allowed with aggregate functions' })
    const readOnly = await rejection(
      atomic({ readOnly: true }, () => selectForUpdate('select id from accounts', { strength: 'key share' })),
    )
    expect(readOnly).toBeInstanceOf(pg.DatabaseError)
    expect(readOnly).toMatchObject({
      code: '25006',
      message: 'cannot execute SELECT FOR KEY SHARE in a read-only transaction',
    })
  })

  test('InvalidOptionError is thrown for bad values before the block check', async () => {
    await expect(selectForUpdate('select 1', { strength: 'x' as never })).rejects.toBeInstanceOf(InvalidOptionError)
  })

  test(
    'regression (issue 7, defect 4): OF a table named with a double quote is quoted the standard ' +
      'way and locks its rows',
    async () => {
      await atomic(async () => {
        expect(
          (await selectForUpdate('select w.id from "we""ird" w join accounts a on a.id = w.id', { of: 'w' })).rows,
        ).toEqual([{ id: 1 }])
        expect((await selectForUpdate('select id from "we""ird"', { of: 'we"ird', nowait: true })).rows).toEqual([
          { id: 1 },
        ])
        expect(await probe('select id from "we""ird" for update nowait')).toMatchObject({ code: '55P03' })
        expect(await probe('select id from accounts where id = 1 for update nowait')).toBeUndefined()
      })
      expect(h.statements).toEqual([
        'BEGIN',
        'select w.id from "we""ird" w join accounts a on a.id = w.id\nFOR UPDATE OF "w"',
        'select id from "we""ird"\nFOR UPDATE OF "we""ird" NOWAIT',
        'COMMIT',
      ])
    },
  )

  test(
    "regression (issue 7, defect 6): inside a block of a database registered only as 'reports', " +
      'selectForUpdate() runs in that block',
    async () => {
      const reports = recordedDatabase(h, 'reports')
      try {
        await atomic({ using: 'reports' }, async () => {
          expect((await selectForUpdate<{ id: number }>('select id from accounts where id = $1', [3])).rows).toEqual([
            { id: 3 },
          ])
          expect(await probe('select id from accounts where id = 3 for update nowait')).toMatchObject({ code: '55P03' })
        })
        expect(reports.statements).toEqual(['BEGIN', 'select id from accounts where id = $1\nFOR UPDATE', 'COMMIT'])
        expect(h.statements).toEqual([])
        // Nested in a block of 'default': the innermost block (reports) without using, 'default' with it.
        await atomic(async () => {
          await atomic({ using: 'reports' }, async () => {
            await selectForUpdate('select id from accounts where id = 1')
            await selectForUpdate('select id from accounts where id = 2', { using: 'default' })
          })
        })
        expect(reports.statements.slice(3)).toEqual([
          'BEGIN',
          'select id from accounts where id = 1\nFOR UPDATE',
          'COMMIT',
        ])
        expect(h.statements).toEqual(['BEGIN', 'select id from accounts where id = 2\nFOR UPDATE', 'COMMIT'])
      } finally {
        await reports.close()
      }
    },
  )
})
