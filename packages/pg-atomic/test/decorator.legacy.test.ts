/**
 * @Atomic() with legacy decorators (jest project 'legacy-decorators' compiles this file with
 * experimentalDecorators; decorator.test.ts runs the same cases with TC39 standard decorators).
 */
import { Atomic, InvalidOptionError, TransactionManagementError, atomic, currentTransaction } from 'pg-atomic'
import type { AtomicOptions, TransactionInfo } from 'pg-atomic'
import { rejection, setupHarness } from './support/harness'
import type { Harness } from './support/harness'

let h: Harness

beforeAll(async () => {
  h = await setupHarness('decorator legacy')
  await h.admin.query('create table t (x int not null)')
})
afterAll(() => h.close())
beforeEach(async () => {
  await h.admin.query('truncate t')
  h.reset()
})
afterEach(() => {
  expect(h.pool.idleCount).toBe(h.pool.totalCount)
})

class Boom extends Error {
  override name = 'Boom'
}

const INSERT = 'insert into t (x) values ($1)'
const insert = (x: number) => h.db.query(INSERT, [x])
const committed = () => h.column<number>('select x from t order by x')

interface CallResult {
  self: unknown
  args: unknown[]
  info: TransactionInfo | undefined
}

class Ledger {
  lastResult: CallResult | undefined
  constructor(readonly offset: number) {}

  @Atomic()
  async add(x: number, ...rest: number[]): Promise<CallResult> {
    await insert(this.offset + x)
    this.lastResult = { self: this, args: [x, ...rest], info: currentTransaction() }
    return this.lastResult
  }

  @Atomic()
  async fail(x: number): Promise<void> {
    await insert(x)
    throw new Boom(`fail ${x}`)
  }

  @Atomic({ isolationLevel: 'serializable', name: 'audit' })
  async isolation(): Promise<{ level: unknown; info: TransactionInfo | undefined }> {
    const { rows } = await h.db.query('show transaction_isolation')
    return { level: rows[0]?.transaction_isolation, info: currentTransaction() }
  }

  @Atomic({ durable: true })
  async durable(x: number): Promise<number> {
    await insert(x)
    return x
  }

  @Atomic({ readOnly: true })
  async readOnly(): Promise<void> {
    await insert(1)
  }

  // @ts-expect-error -- the types accept async methods only; this checks the runtime guard
  @Atomic()
  notAsync(x: number): number {
    void insert(x)
    return 42
  }

  @Atomic()
  async callsNested(x: number): Promise<number | undefined> {
    return this.nested(x)
  }

  @Atomic()
  async nested(x: number): Promise<number | undefined> {
    await insert(x)
    return currentTransaction()?.depth
  }

  @Atomic()
  static async create(x: number): Promise<unknown> {
    await insert(x)
    return this
  }
}

/** Runs a class definition and returns what it threw. */
function definitionError(define: () => unknown): unknown {
  try {
    define()
  } catch (error) {
    return error
  }
  throw new Error('expected the class definition to throw')
}

describe('@Atomic() on a method (legacy decorators)', () => {
  test('each call enters a fresh block: two calls, two transactions', async () => {
    const ledger = new Ledger(100)
    const first = await ledger.add(1)
    const second = await ledger.add(2)
    expect(first.info).toMatchObject({ depth: 1, savepointNames: [] })
    expect(second.info).toMatchObject({ depth: 1, savepointNames: [] })
    expect(first.info?.id).not.toBe(second.info?.id)
    expect(h.statements).toEqual(['BEGIN', INSERT, 'COMMIT', 'BEGIN', INSERT, 'COMMIT'])
    expect(await committed()).toEqual([101, 102])
  })

  test('concurrent calls run in separate transactions', async () => {
    const ledger = new Ledger(0)
    const [a, b] = await Promise.all([ledger.add(1), ledger.add(2)])
    expect(a.info?.id).not.toBe(b.info?.id)
    expect(await committed()).toEqual([1, 2])
  })

  test('this and the arguments pass through; the return value is returned as is', async () => {
    const ledger = new Ledger(10)
    const result = await ledger.add(5, 6, 7)
    expect(result).toBe(ledger.lastResult)
    expect(result.self).toBe(ledger)
    expect(result.args).toEqual([5, 6, 7])
    expect(await committed()).toEqual([15])
    expect(ledger.add.name).toBe('add')
  })

  test('a static method gets the class as this; a decorated method calling another one nests', async () => {
    await expect(Ledger.create(3)).resolves.toBe(Ledger)
    await expect(new Ledger(0).callsNested(4)).resolves.toBe(2)
    expect(await committed()).toEqual([3, 4])
    expect(h.statements).toEqual(['BEGIN', INSERT, 'COMMIT', 'BEGIN; SAVEPOINT "pga_1"', INSERT, 'COMMIT'])
  })

  test('a throwing method rolls back and rethrows', async () => {
    const error = await rejection(new Ledger(0).fail(1))
    expect(error).toBeInstanceOf(Boom)
    expect((error as Error).message).toBe('fail 1')
    expect(await committed()).toEqual([])
    expect(h.statements).toEqual(['BEGIN', INSERT, 'ROLLBACK'])
  })

  test('inside a block each call is a nested block with its own savepoint', async () => {
    const ledger = new Ledger(0)
    await atomic(async () => {
      await insert(1)
      const a = await ledger.add(2)
      await expect(ledger.fail(3)).rejects.toThrow(Boom)
      const b = await ledger.add(4)
      expect(a.info).toMatchObject({ depth: 2, savepointNames: ['pga_1'] })
      expect(b.info).toMatchObject({ depth: 2, savepointNames: ['pga_3'] })
    })
    expect(await committed()).toEqual([1, 2, 4])
    expect(h.statements).toEqual([
      'BEGIN',
      INSERT,
      'SAVEPOINT "pga_1"',
      INSERT,
      'RELEASE SAVEPOINT "pga_1"; SAVEPOINT "pga_2"',
      INSERT,
      'ROLLBACK TO SAVEPOINT "pga_2"; RELEASE SAVEPOINT "pga_2"; SAVEPOINT "pga_3"',
      INSERT,
      'COMMIT',
    ])
  })

  test('options apply: isolationLevel goes on BEGIN, name is visible', async () => {
    const result = await new Ledger(0).isolation()
    expect(result.level).toBe('serializable')
    expect(result.info).toMatchObject({ isolationLevel: 'serializable', name: 'audit', depth: 1 })
    expect(h.statements).toEqual(['BEGIN ISOLATION LEVEL SERIALIZABLE', 'show transaction_isolation', 'COMMIT'])
  })

  test('options apply: readOnly makes writes fail', async () => {
    const error = await rejection(new Ledger(0).readOnly())
    expect(error).toMatchObject({ code: '25006' })
    expect(h.statements).toEqual(['BEGIN READ ONLY', INSERT, 'ROLLBACK'])
  })

  test('options apply: durable works outermost and raises when nested, before any SQL', async () => {
    const ledger = new Ledger(0)
    await expect(ledger.durable(1)).resolves.toBe(1)
    h.reset()
    await atomic(async () => {
      await insert(2)
      const error = await rejection(ledger.durable(3))
      expect(error).toBeInstanceOf(TransactionManagementError)
      expect((error as Error).message).toBe('A durable atomic block cannot be nested within another atomic block.')
      await insert(4)
    })
    expect(h.statements).toEqual(['BEGIN', INSERT, INSERT, 'COMMIT'])
    expect(await committed()).toEqual([1, 2, 4])
  })

  test('a method that does not return a promise is rejected and its block rolled back', async () => {
    const error = await rejection((new Ledger(0).notAsync as unknown as (x: number) => Promise<unknown>)(7))
    expect(error).toBeInstanceOf(TransactionManagementError)
    expect((error as Error).message).toBe(
      '@Atomic() can only decorate async methods: notAsync() returned a value that is not a promise, so its block was rolled back. Declare the method async.',
    )
    // The statement it started without awaiting ran in the block and was rolled back with it.
    expect(h.statements).toEqual(['BEGIN', INSERT, 'ROLLBACK'])
    expect(await committed()).toEqual([])
  })
})

describe('misuse is reported when the class is defined', () => {
  test.each([
    ['a getter', 'value', () => {
      class Bad {
        // @ts-expect-error -- not a method
        @Atomic()
        get value(): number {
          return 1
        }
      }
      return Bad
    }],
    ['a setter', 'value', () => {
      class Bad {
        // @ts-expect-error -- not a method
        @Atomic()
        set value(_v: number) {}
      }
      return Bad
    }],
    ['an accessor pair', 'value', () => {
      class Bad {
        private stored = 0
        // @ts-expect-error -- not a method
        @Atomic()
        get value(): number {
          return this.stored
        }
        set value(v: number) {
          this.stored = v
        }
      }
      return Bad
    }],
    ['a property', 'handler', () => {
      class Bad {
        // @ts-expect-error -- not a method
        @Atomic()
        handler = async () => 1
      }
      return Bad
    }],
  ])('decorating %s throws TypeError', (_label, key, define) => {
    const error = definitionError(define)
    expect(error).toBeInstanceOf(TypeError)
    expect((error as Error).message).toBe(`@Atomic() can only decorate methods, not a getter, setter, accessor or property (${key}).`)
    expect(h.statements).toEqual([])
  })

  test.each([
    ['isolationLevel', { isolationLevel: 'sometimes' }, /^Invalid option "isolationLevel" for atomic\(\): it must be one of 'read committed', 'repeatable read', 'serializable', 'read uncommitted'\.$/],
    ['lockTimeout', { lockTimeout: -1 }, /^Invalid option "lockTimeout" for atomic\(\): it must be a whole number of milliseconds/],
    ['durable', { durable: 'yes' }, /^Invalid option "durable" for atomic\(\): it must be true or false\.$/],
    ['savepiont', { savepiont: false }, /^Unknown option "savepiont" for atomic\(\)/],
  ])('invalid option %s throws InvalidOptionError naming it', (field, options, message) => {
    const error = definitionError(() => {
      class Bad {
        @Atomic(options as AtomicOptions)
        async run(): Promise<void> {}
      }
      return Bad
    })
    expect(error).toBeInstanceOf(InvalidOptionError)
    expect(error).toMatchObject({ field })
    expect((error as Error).message).toMatch(message)
    expect(h.statements).toEqual([])
  })
})
