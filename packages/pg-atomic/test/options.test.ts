/**
 * Bad input: every invalid option of atomic(), createDatabase(), @Atomic(), onCommit() and
 * cursor() is an InvalidOptionError naming the field and what is allowed, raised before anything
 * is sent to the server or a connection is opened.
 */
import { inspect } from 'node:util'
import {
  Atomic,
  InvalidOptionError,
  TransactionManagementError,
  atomic,
  createDatabase,
  currentTransaction,
  getDatabase,
  onCommit,
  onRollback,
  setRollback,
} from 'pg-atomic'
import type { AtomicOptions, DatabaseConfig, IsolationLevel } from 'pg-atomic'
import { rejection, setupHarness } from './support/harness'
import type { Harness } from './support/harness'
import { thrown } from './support/errors'

let h: Harness
/** Connections of the recorded pool when the test started. */
let connectionsBefore: number

beforeAll(async () => {
  h = await setupHarness('options')
})
afterAll(() => h.close())
beforeEach(() => {
  h.reset()
  connectionsBefore = h.pool.totalCount
})

/** Nothing reached the server and no connection was opened since the test started. */
function expectNothingSent(): void {
  expect(h.statements).toEqual([])
  expect(h.roundTrips()).toBe(0)
  expect(h.pool.totalCount).toBe(connectionsBefore)
}

function expectInvalid(error: unknown, field: string, allowed: RegExp, subject = 'atomic()'): void {
  expect(error).toBeInstanceOf(InvalidOptionError)
  expect(error).toMatchObject({ name: 'InvalidOptionError', field })
  const message = (error as Error).message
  expect(message).toContain(`"${field}"`)
  expect(message).toContain(subject)
  expect(message).toMatch(allowed)
}

const BOOLEAN = /true or false/
const LEVELS = /one of 'read committed', 'repeatable read', 'serializable', 'read uncommitted'/
const MILLISECONDS = /whole number of milliseconds from 0 to 2147483647/

const invalidAtomicOptions: Array<[string, Record<string, unknown>, string, RegExp]> = [
  ['savepoint: "yes"', { savepoint: 'yes' }, 'savepoint', BOOLEAN],
  ['savepoint: 1', { savepoint: 1 }, 'savepoint', BOOLEAN],
  ['durable: "true"', { durable: 'true' }, 'durable', BOOLEAN],
  ['durable: null', { durable: null }, 'durable', BOOLEAN],
  ['readOnly: 1', { readOnly: 1 }, 'readOnly', BOOLEAN],
  ['readOnly: "on"', { readOnly: 'on' }, 'readOnly', BOOLEAN],
  ['deferrable: 0', { deferrable: 0 }, 'deferrable', BOOLEAN],
  ['deferrable: null', { deferrable: null }, 'deferrable', BOOLEAN],
  ['isolationLevel: "snapshot"', { isolationLevel: 'snapshot' }, 'isolationLevel', LEVELS],
  ['isolationLevel: 42', { isolationLevel: 42 }, 'isolationLevel', LEVELS],
  ['isolationLevel: ""', { isolationLevel: '' }, 'isolationLevel', LEVELS],
  ['isolationLevel: "read-committed"', { isolationLevel: 'read-committed' }, 'isolationLevel', LEVELS],
  ['isolationLevel: " serializable"', { isolationLevel: ' serializable' }, 'isolationLevel', LEVELS],
  ['using: ""', { using: '' }, 'using', /non-empty string naming a registered database/],
  ['using: 42', { using: 42 }, 'using', /non-empty string naming a registered database/],
  ['name: 42', { name: 42 }, 'name', /a string/],
  [
    'retry: 0',
    { retry: 0 },
    'retry',
    /a whole number of attempts of at least 1, or \{ maxAttempts, baseDelayMs, maxDelayMs, retryOn \}/,
  ],
  ['retry: true', { retry: true }, 'retry', /a whole number of attempts of at least 1/],
  ['retry: 1.5', { retry: 1.5 }, 'retry', /a whole number of attempts of at least 1/],
  [
    'retry: { attempts: 3 }',
    { retry: { attempts: 3 } },
    'retry.attempts',
    /^Unknown option "retry.attempts" for .*: "retry" must be a whole number of attempts of at least 1/,
  ],
  [
    'retry: { retryOn: ["serialization"] }',
    { retry: { retryOn: ['serialization'] } },
    'retry.retryOn',
    /a list of 5-character SQLSTATE codes such as 40001, or a function/,
  ],
  [
    'retry: { maxDelayMs: -1 }',
    { retry: { maxDelayMs: -1 } },
    'retry.maxDelayMs',
    /a whole number of milliseconds of at least 0/,
  ],
]
for (const option of ['statementTimeout', 'lockTimeout', 'idleInTransactionSessionTimeout']) {
  for (const [label, value] of [
    ['-1', -1],
    ['1.5', 1.5],
    ['"100"', '100'],
    ['2**31', 2 ** 31],
    ['NaN', NaN],
    ['Infinity', Infinity],
  ] as const) {
    invalidAtomicOptions.push([`${option}: ${label}`, { [option]: value }, option, MILLISECONDS])
  }
}

describe('atomic() options', () => {
  test.each(invalidAtomicOptions)(
    'atomic({ %s }) rejects with InvalidOptionError and sends nothing',
    async (_label, options, field, allowed) => {
      const body = jest.fn()
      const promise = atomic(options as AtomicOptions, body)
      expect(promise).toBeInstanceOf(Promise)
      expectInvalid(await rejection(promise), field, allowed)
      expect(body).not.toHaveBeenCalled()
      expectNothingSent()
    },
  )

  test.each(invalidAtomicOptions)(
    'db.atomic({ %s }) rejects with InvalidOptionError and sends nothing',
    async (_label, options, field, allowed) => {
      const body = jest.fn()
      expectInvalid(await rejection(h.db.atomic(options as AtomicOptions, body)), field, allowed)
      expect(body).not.toHaveBeenCalled()
      expectNothingSent()
    },
  )

  test.each(invalidAtomicOptions)('atomic.wrap(fn, { %s }) throws at once', (_label, options, field, allowed) => {
    const body = jest.fn(async () => undefined)
    expectInvalid(
      thrown(() => atomic.wrap(body, options as AtomicOptions)),
      field,
      allowed,
    )
    expect(body).not.toHaveBeenCalled()
    expectNothingSent()
  })

  test('an invalid option on a nested block rejects before its SAVEPOINT; the enclosing block carries on', async () => {
    await atomic(async () => {
      await h.db.query('select 1')
      const body = jest.fn()
      expectInvalid(await rejection(atomic({ lockTimeout: -1 }, body)), 'lockTimeout', MILLISECONDS)
      expect(body).not.toHaveBeenCalled()
      await h.db.query('select 2')
    })
    expect(h.statements).toEqual(['BEGIN', 'select 1', 'select 2', 'COMMIT'])
  })

  test('an unknown option is refused, named in field and message', async () => {
    const error = await rejection(atomic({ isolation: 'serializable' } as AtomicOptions, jest.fn()))
    expect(error).toBeInstanceOf(InvalidOptionError)
    expect(error).toMatchObject({ field: 'isolation' })
    expect((error as Error).message).toContain('"isolation"')
    expect((error as Error).message).toContain('atomic()')
    expectNothingSent()
  })

  test('the message for an unknown option says which options are accepted', async () => {
    const error = await rejection(atomic({ isolation: 'serializable' } as AtomicOptions, jest.fn()))
    expect(error).toBeInstanceOf(InvalidOptionError)
    // "what is allowed": the accepted names (or at least the one that was meant) are in the message.
    expect((error as Error).message).toContain('isolationLevel')
    expectNothingSent()
  })

  test('an unregistered alias is a TransactionManagementError naming the alias', async () => {
    const body = jest.fn()
    const error = await rejection(atomic({ using: 'nowhere' }, body))
    expect(error).toBeInstanceOf(TransactionManagementError)
    expect((error as Error).message).toContain("'nowhere'")
    expect((error as Error).message).toContain('createDatabase(')
    expect(body).not.toHaveBeenCalled()
    expectNothingSent()
  })

  test('db.atomic() refuses using another database', async () => {
    const error = await rejection(h.db.atomic({ using: 'other' } as AtomicOptions, jest.fn()))
    expectInvalid(error, 'using', /this database is 'default'/, 'db.atomic()')
    expectNothingSent()
  })

  test.each([
    ['a number', 42],
    ['a string', 'serializable'],
    ['null', null],
    ['an array', [{ readOnly: true }]],
    ['true', true],
  ])('options that are %s are refused', async (_label, options) => {
    const body = jest.fn()
    const error = await rejection(atomic(options as unknown as AtomicOptions, body))
    expect(error).toBeInstanceOf(InvalidOptionError)
    expect(error).toMatchObject({ field: 'options', message: 'The options of atomic() must be an object.' })
    expect(body).not.toHaveBeenCalled()
    expectNothingSent()
  })

  test('atomic(fn, options) in the wrong order is refused', async () => {
    const body = jest.fn()
    const call = atomic as unknown as (fn: () => unknown, options: AtomicOptions) => Promise<unknown>
    const error = await rejection(call(body, { readOnly: true }))
    expect(error).toBeInstanceOf(InvalidOptionError)
    expect(error).toMatchObject({ field: 'options' })
    expect((error as Error).message).toContain('atomic(options, fn)')
    expect(body).not.toHaveBeenCalled()
    const dbError = await rejection((h.db.atomic as unknown as typeof call)(body, { readOnly: true }))
    expect(dbError).toBeInstanceOf(InvalidOptionError)
    expect(dbError).toMatchObject({ field: 'options' })
    expect((dbError as Error).message).toContain('db.atomic(options, fn)')
    expect(body).not.toHaveBeenCalled()
    expectNothingSent()
  })

  test.each([
    ['atomic()', () => (atomic as unknown as () => Promise<unknown>)()],
    ['atomic(options)', () => (atomic as unknown as (o: AtomicOptions) => Promise<unknown>)({ readOnly: true })],
    [
      'atomic(options, "not a function")',
      () => (atomic as unknown as (o: AtomicOptions, f: unknown) => Promise<unknown>)({}, 'select 1'),
    ],
    ['db.atomic(options)', () => (h.db.atomic as unknown as (o: AtomicOptions) => Promise<unknown>)({ name: 'x' })],
  ])('%s without a function is refused', async (_label, call) => {
    const error = await rejection(call())
    expect(error).toBeInstanceOf(InvalidOptionError)
    expect(error).toMatchObject({ field: 'fn' })
    expect((error as Error).message).toContain('function')
    expectNothingSent()
  })

  test('atomic.wrap() without a function throws at once', () => {
    const error = thrown(() => atomic.wrap(undefined as unknown as () => Promise<void>))
    expect(error).toBeInstanceOf(InvalidOptionError)
    expect(error).toMatchObject({ field: 'fn' })
    expectNothingSent()
  })

  test('valid options are accepted as they are (explicit undefined included)', async () => {
    await expect(
      atomic(
        {
          isolationLevel: undefined,
          name: 'ok',
          savepoint: true,
          durable: false,
          lockTimeout: 0,
          statementTimeout: 2147483647,
        },
        () => 'done',
      ),
    ).resolves.toBe('done')
    expectNothingSent()
  })
})

describe('isolation level spelling', () => {
  test.each([
    ['SERIALIZABLE', 'serializable', 'BEGIN ISOLATION LEVEL SERIALIZABLE'],
    ['Repeatable Read', 'repeatable read', 'BEGIN ISOLATION LEVEL REPEATABLE READ'],
    ['READ committed', 'read committed', 'BEGIN ISOLATION LEVEL READ COMMITTED'],
  ])('%j is accepted and normalized to %j', async (given, normalized, begin) => {
    await atomic({ isolationLevel: given as IsolationLevel }, async (tx) => {
      expect(tx.isolationLevel).toBe(normalized)
      expect(currentTransaction()?.isolationLevel).toBe(normalized)
      const { rows } = await h.db.query<{ transaction_isolation: string }>('show transaction_isolation')
      expect(rows).toEqual([{ transaction_isolation: normalized }])
    })
    expect(h.statements).toEqual([begin, 'show transaction_isolation', 'COMMIT'])
  })

  test('a database default is normalized too', async () => {
    const db = createDatabase({
      alias: 'spelling',
      connectionString: h.testDb.url,
      isolationLevel: 'REPEATABLE READ' as IsolationLevel,
    })
    try {
      await db.atomic(async (tx) => {
        expect(tx.isolationLevel).toBe('repeatable read')
        expect(db.currentTransaction()?.isolationLevel).toBe('repeatable read')
      })
    } finally {
      await db.close()
    }
  })
})

describe('createDatabase() configuration', () => {
  const invalidConfigs: Array<[string, Record<string, unknown>, string, RegExp]> = [
    ['isolationLevel: "snapshot"', { isolationLevel: 'snapshot' }, 'isolationLevel', LEVELS],
    ['readOnly: "yes"', { readOnly: 'yes' }, 'readOnly', BOOLEAN],
    ['deferrable: 1', { deferrable: 1 }, 'deferrable', BOOLEAN],
    ['statementTimeout: -1', { statementTimeout: -1 }, 'statementTimeout', MILLISECONDS],
    ['lockTimeout: 1.5', { lockTimeout: 1.5 }, 'lockTimeout', MILLISECONDS],
    [
      'idleInTransactionSessionTimeout: "100"',
      { idleInTransactionSessionTimeout: '100' },
      'idleInTransactionSessionTimeout',
      MILLISECONDS,
    ],
    ['max: 0', { max: 0 }, 'max', /whole number of at least 1/],
    ['max: 2.5', { max: 2.5 }, 'max', /whole number of at least 1/],
    ['min: -1', { min: -1 }, 'min', /whole number of at least 0/],
    ['port: 70000', { port: 70000 }, 'port', /whole number from 1 to 65535/],
    ['port: 0', { port: 0 }, 'port', /whole number from 1 to 65535/],
    ['port: "5432"', { port: '5432' }, 'port', /whole number from 1 to 65535/],
    ['alias: ""', { alias: '' }, 'alias', /non-empty string/],
    ['closeTimeoutMs: -5', { closeTimeoutMs: -5 }, 'closeTimeoutMs', /whole number of milliseconds of at least 0/],
    ['logger: {}', { logger: {} }, 'logger', /error\(message\) method/],
    ['pool: {}', { pool: {} }, 'pool', /pg\.Pool/],
  ]

  test.each(invalidConfigs)(
    'createDatabase({ %s }) throws InvalidOptionError naming the field',
    (_label, config, field, allowed) => {
      const error = thrown(() =>
        createDatabase({ alias: 'invalid', connectionString: h.testDb.url, ...config } as DatabaseConfig),
      )
      expectInvalid(error, field, allowed, 'createDatabase()')
      expect(getDatabase('invalid')).toBeUndefined()
      expectNothingSent()
    },
  )

  test('an unknown field is refused and named', () => {
    const error = thrown(() => createDatabase({ alias: 'invalid', hostname: 'localhost' } as DatabaseConfig))
    expect(error).toBeInstanceOf(InvalidOptionError)
    expect(error).toMatchObject({ field: 'hostname' })
    expect((error as Error).message).toContain('"hostname"')
    expect((error as Error).message).toContain('createDatabase()')
    expect(getDatabase('invalid')).toBeUndefined()
  })

  test.each([
    ['statement_timeout', /statementTimeout/],
    ['lock_timeout', /lockTimeout/],
    ['idle_in_transaction_session_timeout', /idleInTransactionSessionTimeout/],
    ['query_timeout', /client-side.*statementTimeout/],
    ['pipeline', /pipeline mode is not supported/],
  ])('the pg field %s is refused with a message that says what to use instead', (field, explanation) => {
    const error = thrown(() =>
      createDatabase({
        alias: 'invalid',
        connectionString: h.testDb.url,
        [field]: field === 'pipeline' ? true : 1000,
      } as DatabaseConfig),
    )
    expect(error).toBeInstanceOf(InvalidOptionError)
    expect(error).toMatchObject({ field })
    expect((error as Error).message).toContain(`"${field}"`)
    expect((error as Error).message).toMatch(explanation)
    expect(getDatabase('invalid')).toBeUndefined()
  })

  test.each([
    ['connectionString', { connectionString: 'postgres://localhost/x' }],
    ['max', { max: 3 }],
    ['host', { host: 'localhost' }],
  ])('"pool" cannot be combined with the connection field %s', (field, extra) => {
    const error = thrown(() => createDatabase({ alias: 'invalid', pool: h.pool, ...extra }))
    expect(error).toBeInstanceOf(InvalidOptionError)
    expect(error).toMatchObject({ field })
    expect((error as Error).message).toContain('"pool"')
    expect((error as Error).message).toContain(`"${field}"`)
    expect(getDatabase('invalid')).toBeUndefined()
    expectNothingSent()
  })

  // A bare string is a connection string (see regressions.test.ts); other non-objects are refused.
  test.each([
    ['null', null],
    ['an array', []],
  ])('a configuration that is %s is refused', (_label, config) => {
    const error = thrown(() => createDatabase(config as unknown as DatabaseConfig))
    expect(error).toBeInstanceOf(InvalidOptionError)
    expect(error).toMatchObject({ field: 'options', message: 'The options of createDatabase() must be an object.' })
  })

  test('an alias already used by an open database is refused; close() frees it', async () => {
    const duplicate = thrown(() => createDatabase({ connectionString: h.testDb.url }))
    expect(duplicate).toBeInstanceOf(InvalidOptionError)
    expect(duplicate).toMatchObject({ field: 'alias' })
    expect((duplicate as Error).message).toContain("'default'")
    expect(getDatabase('default')).toBe(h.db)

    const first = createDatabase({ alias: 'reusable', connectionString: h.testDb.url })
    expect(getDatabase('reusable')).toBe(first)
    const again = thrown(() => createDatabase({ alias: 'reusable', connectionString: h.testDb.url }))
    expect(again).toBeInstanceOf(InvalidOptionError)
    expect(again).toMatchObject({ field: 'alias' })
    expect((again as Error).message).toContain("'reusable'")
    expect(getDatabase('reusable')).toBe(first)

    await first.close()
    expect(getDatabase('reusable')).toBeUndefined()
    const second = createDatabase({ alias: 'reusable', connectionString: h.testDb.url })
    try {
      expect(getDatabase('reusable')).toBe(second)
      await expect(
        atomic({ using: 'reusable' }, async () => (await second.query<{ n: number }>('select 41 + 1 as n')).rows[0]?.n),
      ).resolves.toBe(42)
    } finally {
      await second.close()
    }
    expect(getDatabase('reusable')).toBeUndefined()
    expectNothingSent()
  })

  describe('errors never contain a password', () => {
    const secret = 'S3cr3t-Pa55word'
    const url = `postgres://alice:${secret}@127.0.0.1:5432/somedb`
    test.each([
      ['an invalid field next to a connection string', { connectionString: url, max: 0 }],
      ['an unknown field next to a connection string', { connectionString: url, bogus: secret }],
      ['a refused pg field next to a connection string', { connectionString: url, statement_timeout: 5 }],
      ['an invalid field next to a password', { password: secret, port: 70000 }],
      ['a password of the wrong type', { password: [secret] }],
      ['a connection string of the wrong type', { connectionString: [url] }],
      ['a pool next to a password', { pool: 'not a pool', password: secret }],
    ])('%s', (_label, config) => {
      const error = thrown(() => createDatabase({ alias: 'secret', ...config } as DatabaseConfig))
      expect(error).toBeInstanceOf(InvalidOptionError)
      expect((error as Error).message).not.toContain(secret)
      expect(String(error)).not.toContain(secret)
      expect(inspect(error, { depth: 5 })).not.toContain(secret)
      expect(JSON.stringify(error)).not.toContain(secret)
      expect(getDatabase('secret')).toBeUndefined()
    })
  })
})

describe('@Atomic() options', () => {
  test.each([
    [{ isolationLevel: 'snapshot' }, 'isolationLevel', LEVELS],
    [{ lockTimeout: -1 }, 'lockTimeout', MILLISECONDS],
    [{ durable: 'yes' }, 'durable', BOOLEAN],
    [{ retry: 0 }, 'retry', /a whole number of attempts of at least 1/],
  ])('@Atomic(%j) throws when the class is defined', (options, field, allowed) => {
    const error = thrown(() => {
      class Service {
        @Atomic(options as AtomicOptions)
        async run(): Promise<void> {}
      }
      return Service
    })
    expectInvalid(error, field, allowed)
    expectNothingSent()
  })

  test('an unknown option throws when the class is defined', () => {
    const error = thrown(() => {
      class Service {
        @Atomic({ readonly: true } as AtomicOptions)
        async run(): Promise<void> {}
      }
      return Service
    })
    expect(error).toBeInstanceOf(InvalidOptionError)
    expect(error).toMatchObject({ field: 'readonly' })
  })
})

describe('hooks, rollback flag and cursor arguments', () => {
  test.each([
    ['a string', 'send mail'],
    ['a number', 42],
    ['null', null],
    ['undefined', undefined],
    ['a promise', Promise.resolve()],
  ])('onCommit(%s) outside a block is refused', (_label, value) => {
    const error = thrown(() => onCommit(value as unknown as () => void))
    expect(error).toBeInstanceOf(InvalidOptionError)
    expect(error).toMatchObject({ field: 'callback', message: "onCommit()'s callback must be a function." })
    const rollbackError = thrown(() => onRollback(value as unknown as () => void))
    expect(rollbackError).toBeInstanceOf(InvalidOptionError)
    expect(rollbackError).toMatchObject({ field: 'callback', message: "onRollback()'s callback must be a function." })
    expectNothingSent()
  })

  test(
    'non-function hooks and a non-boolean rollback flag are refused inside a block, ' + 'which still commits',
    async () => {
      await atomic(async (tx) => {
        for (const register of [
          () => onCommit(42 as unknown as () => void),
          () => tx.onCommit('x' as unknown as () => void),
          () => onRollback({} as unknown as () => void),
          () => tx.onRollback(null as unknown as () => void),
        ]) {
          const error = thrown(register)
          expect(error).toBeInstanceOf(InvalidOptionError)
          expect(error).toMatchObject({ field: 'callback' })
        }
        const flag = thrown(() => setRollback('yes' as unknown as boolean))
        expect(flag).toBeInstanceOf(InvalidOptionError)
        expect(flag).toMatchObject({ field: 'flag' })
        expect(tx.getRollback()).toBe(false)
      })
      expectNothingSent()
    },
  )

  test.each([
    ['0', 0],
    ['-1', -1],
    ['1.5', 1.5],
    ['"10"', '10'],
    ['NaN', NaN],
  ])('cursor batchSize %s is refused before anything is sent', async (_label, batchSize) => {
    const options = { batchSize: batchSize as number }
    const outside = thrown(() => h.db.cursor('select 1', [], options))
    expect(outside).toBeInstanceOf(InvalidOptionError)
    expect(outside).toMatchObject({ field: 'batchSize' })
    expect((outside as Error).message).toMatch(/"batchSize".*whole number of at least 1/)
    await atomic(async (tx) => {
      const inside = thrown(() => tx.cursor('select 1', [], options))
      expect(inside).toBeInstanceOf(InvalidOptionError)
      expect(inside).toMatchObject({ field: 'batchSize' })
      const ambient = thrown(() => h.db.cursor('select 1', [], options))
      expect(ambient).toBeInstanceOf(InvalidOptionError)
      expect(ambient).toMatchObject({ field: 'batchSize' })
    })
    expectNothingSent()
  })
})
