/**
 * Django's AtomicTests matrix (commit/rollback × nested/merged/decorator/wrap) and the exact SQL
 * each case sends; the whole matrix runs a second time inside an outer block, as Django's
 * AtomicInsideTransactionTests does.
 */
import { Atomic, TransactionManagementError, atomic, setRollback } from 'pg-atomic'
import type { AtomicOptions } from 'pg-atomic'
import { rejection, setupHarness } from './support/harness'
import type { Harness } from './support/harness'
import { Boom } from './support/errors'

let h: Harness

beforeAll(async () => {
  h = await setupHarness('semantics')
  await h.admin.query('create table t (x int not null)')
})
afterAll(() => h.close())
beforeEach(async () => {
  await h.admin.query('truncate t')
  h.reset()
})

const insert = (x: number) => h.db.query('insert into t (x) values ($1)', [x])
/** Rows visible from the current context (inside an outer block: that transaction's view). */
const visible = async () => (await h.db.query<{ x: number }>('select x from t order by x')).rows.map((r) => r.x)

type Runner = <T>(fn: () => Promise<T>, options?: AtomicOptions) => Promise<T>

const styles: Record<string, Runner> = {
  'atomic()': (fn, options) => (options === undefined ? atomic(fn) : atomic(options, fn)),
  'db.atomic()': (fn, options) => (options === undefined ? h.db.atomic(fn) : h.db.atomic(options, fn)),
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

const settings: Array<[string, (body: () => Promise<void>) => Promise<void>]> = [
  ['standalone', (body) => body()],
  ['inside an outer block', (body) => atomic(body)],
]

describe.each(settings)('Django matrix, %s', (setting, around) => {
  const standalone = setting === 'standalone'

  describe.each(Object.entries(styles))('%s', (_style, run) => {
    test('commit', async () => {
      await around(async () => {
        await run(() => insert(1))
        expect(await visible()).toEqual([1])
      })
      expect(await h.column('select x from t')).toEqual([1])
      if (standalone)
        expect(h.statements).toEqual(['BEGIN', 'insert into t (x) values ($1)', 'COMMIT', 'select x from t order by x'])
    })

    test('rollback rethrows the same value', async () => {
      const boom = new Boom('oops')
      await around(async () => {
        const error = await rejection(
          run(async () => {
            await insert(1)
            throw boom
          }),
        )
        expect(error).toBe(boom)
        expect(await visible()).toEqual([])
      })
      if (standalone)
        expect(h.statements).toEqual([
          'BEGIN',
          'insert into t (x) values ($1)',
          'ROLLBACK',
          'select x from t order by x',
        ])
    })

    test('nested commit, commit', async () => {
      await around(async () => {
        await run(async () => {
          await insert(1)
          await run(() => insert(2))
        })
        expect(await visible()).toEqual([1, 2])
      })
      if (standalone) {
        expect(h.statements).toEqual([
          'BEGIN',
          'insert into t (x) values ($1)',
          'SAVEPOINT "pga_1"',
          'insert into t (x) values ($1)',
          'COMMIT',
          'select x from t order by x',
        ])
      }
    })

    test('nested commit, rollback', async () => {
      await around(async () => {
        await run(async () => {
          await insert(1)
          await expect(
            run(async () => {
              await insert(2)
              throw new Boom('inner')
            }),
          ).rejects.toThrow(Boom)
        })
        expect(await visible()).toEqual([1])
      })
      if (standalone) {
        expect(h.statements).toEqual([
          'BEGIN',
          'insert into t (x) values ($1)',
          'SAVEPOINT "pga_1"',
          'insert into t (x) values ($1)',
          'ROLLBACK TO SAVEPOINT "pga_1"; RELEASE SAVEPOINT "pga_1"; COMMIT',
          'select x from t order by x',
        ])
      }
    })

    test('nested rollback, commit', async () => {
      await around(async () => {
        await expect(
          run(async () => {
            await insert(1)
            await run(() => insert(2))
            throw new Boom('outer')
          }),
        ).rejects.toThrow(Boom)
        expect(await visible()).toEqual([])
      })
      if (standalone) {
        expect(h.statements).toEqual([
          'BEGIN',
          'insert into t (x) values ($1)',
          'SAVEPOINT "pga_1"',
          'insert into t (x) values ($1)',
          'ROLLBACK',
          'select x from t order by x',
        ])
      }
    })

    test('nested rollback, rollback', async () => {
      await around(async () => {
        await expect(
          run(async () => {
            await insert(1)
            await expect(
              run(async () => {
                await insert(2)
                throw new Boom('inner')
              }),
            ).rejects.toThrow('inner')
            throw new Boom('outer')
          }),
        ).rejects.toThrow('outer')
        expect(await visible()).toEqual([])
      })
      if (standalone) {
        expect(h.statements).toEqual([
          'BEGIN',
          'insert into t (x) values ($1)',
          'SAVEPOINT "pga_1"',
          'insert into t (x) values ($1)',
          // The ROLLBACK TO of the inner block is dropped: the ROLLBACK of the same turn covers it.
          'ROLLBACK',
          'select x from t order by x',
        ])
      }
    })

    test('merged commit, commit', async () => {
      await around(async () => {
        await run(async () => {
          await insert(1)
          await run(() => insert(2), { savepoint: false })
        })
        expect(await visible()).toEqual([1, 2])
      })
      if (standalone)
        expect(h.statements).toEqual([
          'BEGIN',
          'insert into t (x) values ($1)',
          'insert into t (x) values ($1)',
          'COMMIT',
          'select x from t order by x',
        ])
    })

    test(
      'merged commit, rollback: the caught error dooms the enclosing block, which ' + 'rejects (difference 2)',
      async () => {
        const inner = new Boom('inner')
        await around(async () => {
          const error = await rejection(
            run(async () => {
              await insert(1)
              const caught = await rejection(
                run(
                  async () => {
                    await insert(2)
                    throw inner
                  },
                  { savepoint: false },
                ),
              )
              expect(caught).toBe(inner)
              // Poisoned: every query is refused until the block ends (Django's words, cause chained).
              const refused = await rejection(insert(3))
              expect(refused).toBeInstanceOf(TransactionManagementError)
              expect(refused).toMatchObject({
                message:
                  "An error occurred in the current transaction. You can't execute queries until " +
                  "the end of the 'atomic' block.",
                cause: inner,
              })
            }),
          )
          expect(error).toBeInstanceOf(TransactionManagementError)
          expect((error as Error).message).toMatch(
            /^The 'atomic' block finished normally, but an error inside it was caught/,
          )
          expect((error as Error).cause).toBe(inner)
          expect(await visible()).toEqual([])
        })
        if (standalone)
          expect(h.statements).toEqual([
            'BEGIN',
            'insert into t (x) values ($1)',
            'insert into t (x) values ($1)',
            'ROLLBACK',
            'select x from t order by x',
          ])
      },
    )

    test('merged rollback, commit', async () => {
      await around(async () => {
        await expect(
          run(async () => {
            await insert(1)
            await run(() => insert(2), { savepoint: false })
            throw new Boom('outer')
          }),
        ).rejects.toThrow('outer')
        expect(await visible()).toEqual([])
      })
    })

    test('merged rollback, rollback', async () => {
      await around(async () => {
        await expect(
          run(async () => {
            await insert(1)
            await expect(
              run(
                async () => {
                  await insert(2)
                  throw new Boom('inner')
                },
                { savepoint: false },
              ),
            ).rejects.toThrow('inner')
            throw new Boom('outer')
          }),
        ).rejects.toThrow('outer')
        expect(await visible()).toEqual([])
      })
    })

    test('reusing one options object for nested blocks', async () => {
      const options = Object.freeze({ name: 'reused' })
      await around(async () => {
        await run(async () => {
          await insert(1)
          await run(() => insert(2), options)
        }, options)
        expect(await visible()).toEqual([1, 2])
      })
    })

    test('setRollback(true) rolls back silently and returns the value', async () => {
      await around(async () => {
        const value = await run(async () => {
          await insert(1)
          setRollback(true)
          return 'kept'
        })
        expect(value).toBe('kept')
        expect(await visible()).toEqual([])
      })
      if (standalone)
        expect(h.statements).toEqual([
          'BEGIN',
          'insert into t (x) values ($1)',
          'ROLLBACK',
          'select x from t order by x',
        ])
    })
  })
})

describe('merged blocks climb to the nearest savepoint', () => {
  test('a failure in two stacked savepoint:false blocks rolls back to the enclosing savepoint only', async () => {
    const inner = new Boom('deep')
    await atomic(async () => {
      await insert(1)
      const error = await rejection(
        atomic(async () => {
          await insert(2)
          await atomic({ savepoint: false }, async () => {
            await expect(
              atomic({ savepoint: false }, async () => {
                await insert(3)
                throw inner
              }),
            ).rejects.toBe(inner)
          })
        }),
      )
      // The savepoint block finished normally with a swallowed error: it rolled back and rejected.
      expect(error).toBeInstanceOf(TransactionManagementError)
      expect((error as Error).cause).toBe(inner)
      await insert(4)
    })
    expect(await h.column('select x from t order by x')).toEqual([1, 4])
    expect(h.statements).toEqual([
      'BEGIN',
      'insert into t (x) values ($1)',
      'SAVEPOINT "pga_1"',
      'insert into t (x) values ($1)',
      'insert into t (x) values ($1)',
      'ROLLBACK TO SAVEPOINT "pga_1"',
      'RELEASE SAVEPOINT "pga_1"',
      'insert into t (x) values ($1)',
      'COMMIT',
    ])
  })

  test('a block entered while doomed gets no savepoint', async () => {
    await atomic(async () => {
      await insert(1)
      setRollback(true)
      await atomic(async (tx) => {
        expect(tx.savepointName).toBeUndefined()
        expect(tx.depth).toBe(2)
      })
      setRollback(false)
      await insert(2)
    })
    expect(await h.column('select x from t order by x')).toEqual([1, 2])
    expect(h.statements).toEqual(['BEGIN', 'insert into t (x) values ($1)', 'insert into t (x) values ($1)', 'COMMIT'])
  })
})

describe('what is thrown', () => {
  test.each([
    ['a string', 'plain string'],
    ['undefined', undefined],
    ['null', null],
    ['a number', 42],
    ['an object', { reason: 'custom' }],
  ])('throwing %s rolls back and rethrows it unchanged', async (_label, value) => {
    const error = await rejection(
      atomic(async () => {
        await insert(1)
        throw value
      }),
    )
    expect(error).toBe(value)
    expect(await h.column('select count(*)::int from t')).toEqual([0])
    expect(h.statements).toEqual(['BEGIN', 'insert into t (x) values ($1)', 'ROLLBACK'])
  })

  test('a synchronous callback works and its value is returned', async () => {
    await expect(atomic(() => 7)).resolves.toBe(7)
    expect(h.statements).toEqual([])
  })
})
