/**
 * The specification of `@Atomic()`, run in both compile modes: decorator.test.ts (TC39 standard
 * decorators) and decorator.legacy.test.ts (`experimentalDecorators`, jest project
 * 'legacy-decorators') only define the decorated classes in their syntax and call
 * {@link describeAtomicDecorator}; every case lives here, once.
 */
import { InvalidOptionError, TransactionManagementError, atomic, currentTransaction } from 'pg-atomic'
import type { AtomicOptions, TransactionInfo } from 'pg-atomic'
import { Boom, rejection, thrown } from './errors'
import { setupHarness } from './harness'
import type { Harness } from './harness'

export const INSERT = 'insert into t (x) values ($1)'

/** What a decorated method of the ledger reports about its call. */
export interface CallResult {
  self: unknown
  args: unknown[]
  info: TransactionInfo | undefined
}

/** The class each file decorates in its own syntax, every method with `@Atomic(...)`. */
export interface Ledger {
  lastResult: CallResult | undefined
  /** `@Atomic()`: inserts `offset + x`, reports this, the arguments and the block. */
  add(x: number, ...rest: number[]): Promise<CallResult>
  /** `@Atomic()`: inserts x, then throws `Boom('fail <x>')`. */
  fail(x: number): Promise<void>
  /** `@Atomic({ isolationLevel: 'serializable', name: 'audit' })`: runs `show transaction_isolation`. */
  isolation(): Promise<{ level: unknown; info: TransactionInfo | undefined }>
  /** `@Atomic({ durable: true })`: inserts x and returns it. */
  durable(x: number): Promise<number>
  /** `@Atomic({ readOnly: true })`: inserts 1. */
  readOnly(): Promise<void>
  /** `@Atomic()` on a method that is not async: starts an insert of x without awaiting it, returns 42. */
  notAsync(x: number): number
  /**
   * `@Atomic()`: calls another decorated method (private where the syntax has them) that inserts x
   * and returns its depth.
   */
  nested(x: number): Promise<number | undefined>
}

export interface LedgerClass {
  new (offset: number): Ledger
  /** A static `@Atomic()` method: inserts x and returns `this`. */
  create(x: number): Promise<unknown>
}

/** What the methods of the ledger use; the file's classes call these. */
export interface SuiteTools {
  insert(x: number): Promise<unknown>
  query(sql: string): Promise<{ rows: Record<string, unknown>[] }>
  currentTransaction: typeof currentTransaction
  Boom: typeof Boom
}

export interface DecoratorSuite {
  Ledger: LedgerClass
  /** The test name of what `nested()` proves in this syntax. */
  nestedCase: string
  /** Decorating something other than a method: [what, definition, expected TypeError message]. */
  misuse: [label: string, define: () => unknown, message: string][]
  /** A class whose method is decorated with `@Atomic(options)`. */
  defineWithOptions(options: AtomicOptions): unknown
}

/**
 * Defines the whole `@Atomic()` suite for one compile mode. `define` is called at once with the
 * tools the decorated methods use, and returns the classes written in the file's syntax.
 */
export function describeAtomicDecorator(mode: 'TC39' | 'legacy', define: (tools: SuiteTools) => DecoratorSuite): void {
  let h: Harness
  const tools: SuiteTools = {
    insert: (x) => h.db.query(INSERT, [x]),
    query: (sql) => h.db.query(sql),
    currentTransaction,
    Boom,
  }
  const { Ledger, nestedCase, misuse, defineWithOptions } = define(tools)
  const insert = tools.insert
  const committed = () => h.column<number>('select x from t order by x')

  beforeAll(async () => {
    h = await setupHarness(mode === 'TC39' ? 'decorator' : 'decorator legacy')
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

  describe(`@Atomic() on a method (${mode} decorators)`, () => {
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

    test(`a static method gets the class as this; ${nestedCase}`, async () => {
      await expect(Ledger.create(3)).resolves.toBe(Ledger)
      await expect(new Ledger(0).nested(4)).resolves.toBe(2)
      expect(await committed()).toEqual([3, 4])
      expect(h.statements).toEqual(['BEGIN', INSERT, 'COMMIT', 'BEGIN', 'SAVEPOINT "pga_1"', INSERT, 'COMMIT'])
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
        'RELEASE SAVEPOINT "pga_1"',
        'SAVEPOINT "pga_2"',
        INSERT,
        'ROLLBACK TO SAVEPOINT "pga_2"',
        'RELEASE SAVEPOINT "pga_2"',
        'SAVEPOINT "pga_3"',
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
        '@Atomic() can only decorate async methods: notAsync() returned a value that is not a promise, so its block ' +
          'was rolled back. Declare the method async.',
      )
      // The statement it started without awaiting ran in the block and was rolled back with it.
      expect(h.statements).toEqual(['BEGIN', INSERT, 'ROLLBACK'])
      expect(await committed()).toEqual([])
    })
  })

  describe('misuse is reported when the class is defined', () => {
    test.each(misuse)('decorating %s throws TypeError', (_label, define, message) => {
      const error = thrown(define)
      expect(error).toBeInstanceOf(TypeError)
      expect((error as Error).message).toBe(message)
      expect(h.statements).toEqual([])
    })

    test.each([
      [
        'isolationLevel',
        { isolationLevel: 'sometimes' },
        new RegExp(
          '^Invalid option "isolationLevel" for atomic\\(\\): it must be one of ' +
            "'read committed', 'repeatable read', 'serializable', 'read uncommitted'\\.$",
        ),
      ],
      [
        'lockTimeout',
        { lockTimeout: -1 },
        /^Invalid option "lockTimeout" for atomic\(\): it must be a whole number of milliseconds/,
      ],
      ['durable', { durable: 'yes' }, /^Invalid option "durable" for atomic\(\): it must be true or false\.$/],
      ['savepiont', { savepiont: false }, /^Unknown option "savepiont" for atomic\(\)/],
    ])('invalid option %s throws InvalidOptionError naming it', (field, options, message) => {
      const error = thrown(() => defineWithOptions(options as AtomicOptions))
      expect(error).toBeInstanceOf(InvalidOptionError)
      expect(error).toMatchObject({ name: 'InvalidOptionError', field })
      expect((error as Error).message).toMatch(message)
      expect(h.statements).toEqual([])
    })
  })
}
