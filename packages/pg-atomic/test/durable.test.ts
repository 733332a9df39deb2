/**
 * Durable blocks (django-semantics.md §1.9): a durable block must be the outermost one; nesting it is
 * a TransactionManagementError raised before any SQL, and the enclosing block is untouched.
 */
import { Atomic, TransactionManagementError, atomic, inAtomicBlock, onCommit } from 'pg-atomic'
import type { AtomicOptions } from 'pg-atomic'
import { rejection, setupHarness } from './support/harness'
import type { Harness } from './support/harness'
import { Boom } from './support/errors'

let h: Harness

beforeAll(async () => {
  h = await setupHarness('durable')
  await h.admin.query('create table t (x int not null)')
})
afterAll(() => h.close())
beforeEach(async () => {
  await h.admin.query('truncate t')
  h.reset()
})

const DURABLE_MESSAGE = 'A durable atomic block cannot be nested within another atomic block.'
const INSERT = 'insert into t (x) values ($1)'
const insert = (x: number) => h.db.query(INSERT, [x])
const committed = () => h.column<number>('select x from t order by x')

function expectDurableError(error: unknown): void {
  expect(error).toBeInstanceOf(TransactionManagementError)
  expect(error).toMatchObject({ name: 'TransactionManagementError', message: DURABLE_MESSAGE })
}

type Runner = (fn: () => Promise<unknown>, options: AtomicOptions) => Promise<unknown>

const styles: Record<string, Runner> = {
  'atomic()': (fn, options) => atomic(options, fn),
  'db.atomic()': (fn, options) => h.db.atomic(options, fn),
  'atomic.wrap()': (fn, options) => atomic.wrap(fn, options)(),
  '@Atomic()': (fn, options) => {
    class Service {
      @Atomic(options)
      async run() {
        return fn()
      }
    }
    return new Service().run()
  },
}

describe.each(Object.entries(styles))('%s', (_style, run) => {
  test('a durable outermost block commits with BEGIN .. COMMIT', async () => {
    await expect(
      run(
        async () => {
          expect(inAtomicBlock()).toBe(true)
          await insert(1)
          return 'done'
        },
        { durable: true },
      ),
    ).resolves.toBe('done')
    expect(await committed()).toEqual([1])
    expect(h.statements).toEqual(['BEGIN', INSERT, 'COMMIT'])
  })

  test('a durable outermost block that throws rolls back and rethrows', async () => {
    const boom = new Boom('durable fails')
    await expect(
      run(
        async () => {
          await insert(1)
          throw boom
        },
        { durable: true },
      ),
    ).rejects.toBe(boom)
    expect(await committed()).toEqual([])
    expect(h.statements).toEqual(['BEGIN', INSERT, 'ROLLBACK'])
  })

  test(
    'durable nested in a block: TransactionManagementError before any SQL; the ' +
      'enclosing block catches it and commits',
    async () => {
      let bodyRan = false
      await atomic(async () => {
        await insert(1)
        const sentBefore = h.statements.length
        const error = await rejection(
          run(
            async () => {
              bodyRan = true
              await insert(2)
            },
            { durable: true },
          ),
        )
        expectDurableError(error)
        expect(h.statements.length).toBe(sentBefore)
        expect(inAtomicBlock()).toBe(true)
        await insert(3)
      })
      expect(bodyRan).toBe(false)
      expect(await committed()).toEqual([1, 3])
      // No SAVEPOINT, no ROLLBACK TO: the durable block never started.
      expect(h.statements).toEqual(['BEGIN', INSERT, INSERT, 'COMMIT'])
    },
  )

  test("durable nested before the enclosing block's first query: nothing is sent for it", async () => {
    await atomic(async () => {
      expectDurableError(await rejection(run(() => insert(2), { durable: true })))
      expect(h.statements).toEqual([])
      await insert(1)
    })
    expect(h.statements).toEqual(['BEGIN', INSERT, 'COMMIT'])
    expect(await committed()).toEqual([1])
  })

  test('durable inside durable raises', async () => {
    let innerRan = false
    await run(
      async () => {
        await insert(1)
        expectDurableError(
          await rejection(
            run(
              async () => {
                innerRan = true
              },
              { durable: true },
            ),
          ),
        )
      },
      { durable: true },
    )
    expect(innerRan).toBe(false)
    expect(await committed()).toEqual([1])
    expect(h.statements).toEqual(['BEGIN', INSERT, 'COMMIT'])
  })
})

describe('durable rules', () => {
  test('an uncaught durable error rolls back the enclosing block and comes out unchanged', async () => {
    let durableError: unknown
    const error = await rejection(
      atomic(async () => {
        await insert(1)
        durableError = await rejection(atomic({ durable: true }, () => insert(2)))
        throw durableError
      }),
    )
    expectDurableError(error)
    expect(error).toBe(durableError)
    expect(await committed()).toEqual([])
    expect(h.statements).toEqual(['BEGIN', INSERT, 'ROLLBACK'])
  })

  test('the durable error does not doom the enclosing block (it was not a query error)', async () => {
    await atomic(async (tx) => {
      await insert(1)
      expectDurableError(await rejection(atomic({ durable: true }, () => insert(2))))
      expect(tx.getRollback()).toBe(false)
    })
    expect(await committed()).toEqual([1])
  })

  test(
    'durable nested deeper (inside a savepoint block, inside a savepoint:false ' +
      'block) raises; the nested blocks carry on',
    async () => {
      await atomic(async () => {
        await insert(1)
        await atomic(async () => {
          await insert(2)
          expectDurableError(await rejection(atomic({ durable: true }, () => insert(99))))
          await atomic({ savepoint: false }, async () => {
            expectDurableError(await rejection(atomic({ durable: true }, () => insert(98))))
            await insert(3)
          })
        })
      })
      expect(await committed()).toEqual([1, 2, 3])
      expect(h.statements).toEqual(['BEGIN', INSERT, 'SAVEPOINT "pga_1"', INSERT, INSERT, 'COMMIT'])
    },
  )

  test('durable nested in a doomed block still reports the durable rule, not the doom', async () => {
    const error = await rejection(
      atomic(async () => {
        await expect(h.db.query('select 1/0')).rejects.toMatchObject({ code: '22012' })
        expectDurableError(await rejection(atomic({ durable: true }, () => insert(1))))
      }),
    )
    expect(error).toBeInstanceOf(TransactionManagementError)
    expect((error as Error).cause).toMatchObject({ code: '22012' })
    expect(h.statements).toEqual(['BEGIN', 'select 1/0', 'ROLLBACK'])
  })

  test('a sequence of durable blocks is fine: each is its own transaction', async () => {
    await atomic({ durable: true }, () => insert(1))
    await atomic({ durable: true }, async () => {
      await insert(2)
      await insert(3)
    })
    await h.db.atomic({ durable: true }, () => insert(4))
    expect(await committed()).toEqual([1, 2, 3, 4])
    expect(h.statements).toEqual([
      'BEGIN',
      INSERT,
      'COMMIT',
      'BEGIN',
      INSERT,
      INSERT,
      'COMMIT',
      'BEGIN',
      INSERT,
      'COMMIT',
    ])
  })

  test('concurrent durable blocks started outside any block are each outermost', async () => {
    const depths = await Promise.all(
      [1, 2, 3].map((x) =>
        atomic({ durable: true }, async (tx) => {
          await insert(x)
          return tx.depth
        }),
      ),
    )
    expect(depths).toEqual([1, 1, 1])
    expect(await committed()).toEqual([1, 2, 3])
    expect(h.statements.filter((s) => s === 'BEGIN')).toHaveLength(3)
    expect(h.statements.filter((s) => s === 'COMMIT')).toHaveLength(3)
  })

  test('plain blocks nested in a durable block are fine (savepoints), including rollback of one', async () => {
    await atomic({ durable: true }, async () => {
      await insert(1)
      await atomic(async (tx) => {
        expect(tx.depth).toBe(2)
        expect(tx.savepointName).toBe('pga_1')
        await insert(2)
      })
      await expect(
        atomic(async () => {
          await insert(3)
          throw new Boom('inner')
        }),
      ).rejects.toThrow('inner')
      await atomic({ savepoint: false }, () => insert(4))
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
      INSERT,
      'COMMIT',
    ])
  })

  test('@Atomic({ durable: true }) method: works when called outside, raises when called inside a block', async () => {
    class Accounts {
      calls = 0
      @Atomic({ durable: true })
      async transfer(x: number): Promise<number> {
        this.calls++
        await insert(x)
        return x * 10
      }
    }
    const accounts = new Accounts()
    await expect(accounts.transfer(1)).resolves.toBe(10)
    await atomic(async () => {
      await insert(2)
      expectDurableError(await rejection(accounts.transfer(3)))
    })
    expect(accounts.calls).toBe(1)
    expect(await committed()).toEqual([1, 2])
    expect(h.statements).toEqual(['BEGIN', INSERT, 'COMMIT', 'BEGIN', INSERT, 'COMMIT'])
  })

  test.each([[{ durable: true, savepoint: false }], [{ durable: true, savepoint: true }]])(
    'the savepoint option has no effect on a durable outermost block (%o)',
    async (options) => {
      await atomic(options, async (tx) => {
        expect(tx.depth).toBe(1)
        expect(tx.savepointName).toBeUndefined()
        await insert(1)
      })
      await expect(
        atomic(options, async () => {
          await insert(2)
          throw new Boom('rolled back')
        }),
      ).rejects.toThrow('rolled back')
      expect(await committed()).toEqual([1])
      expect(h.statements).toEqual(['BEGIN', INSERT, 'COMMIT', 'BEGIN', INSERT, 'ROLLBACK'])
    },
  )

  test('a durable block opened from an onCommit hook is outermost (hooks run outside the transaction)', async () => {
    const depths: number[] = []
    await atomic(async () => {
      await insert(1)
      onCommit(() =>
        atomic({ durable: true }, async (tx) => {
          depths.push(tx.depth)
          await insert(2)
        }),
      )
    })
    expect(depths).toEqual([1])
    expect(await committed()).toEqual([1, 2])
    expect(h.statements).toEqual(['BEGIN', INSERT, 'COMMIT', 'BEGIN', INSERT, 'COMMIT'])
  })

  test('a durable block entered from a timer after its parent block ended is outermost', async () => {
    let fromTimer: Promise<number> | undefined
    await atomic(async () => {
      await insert(1)
      fromTimer = new Promise<number>((resolve, reject) => {
        setTimeout(() => {
          atomic({ durable: true }, async (tx) => {
            await insert(2)
            return tx.depth
          }).then(resolve, reject)
        }, 20)
      })
    })
    await expect(fromTimer).resolves.toBe(1)
    expect(await committed()).toEqual([1, 2])
    expect(h.statements).toEqual(['BEGIN', INSERT, 'COMMIT', 'BEGIN', INSERT, 'COMMIT'])
  })
})
