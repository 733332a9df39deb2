/**
 * onCommit / onRollback: Django's on_commit rules (django-semantics.md §1.11) and pg-atomic's
 * onRollback (issue 2 §3, differences 4 and 5).
 */
import diagnostics_channel from 'node:diagnostics_channel'
import {
  AtomicError,
  HOOK_ERROR_CHANNEL,
  InvalidOptionError,
  OnCommitHookError,
  TransactionManagementError,
  atomic,
  currentTransaction,
  inAtomicBlock,
  onCommit,
  onRollback,
  setRollback,
} from 'pg-atomic'
import type { HookErrorEvent, TransactionHandle } from 'pg-atomic'
import { rejection, setupHarness } from './support/harness'
import type { Harness } from './support/harness'
import { Boom } from './support/errors'

let h: Harness
const logged: Array<{ message: string; error: unknown }> = []
const logger = {
  error(message: string, error?: unknown) {
    logged.push({ message, error })
  },
}

beforeAll(async () => {
  h = await setupHarness('hooks', { logger })
  await h.admin.query('create table t (x int not null)')
})
afterAll(() => h.close())
beforeEach(async () => {
  await h.admin.query('truncate t')
  h.reset()
  logged.length = 0
})

const insert = (x: number) => h.db.query('insert into t (x) values ($1)', [x])
const committed = () => h.column<number>('select x from t order by x')
const INSERT = 'insert into t (x) values ($1)'

/** Records hook-error events published while `fn` runs. */
async function withHookErrors<T>(fn: (events: HookErrorEvent[]) => Promise<T>): Promise<T> {
  const events: HookErrorEvent[] = []
  const listener = (message: unknown) => {
    events.push(message as HookErrorEvent)
  }
  diagnostics_channel.subscribe('pg-atomic:hook-error', listener)
  try {
    return await fn(events)
  } finally {
    diagnostics_channel.unsubscribe('pg-atomic:hook-error', listener)
  }
}

describe('order', () => {
  test('hooks run in registration order (FIFO) regardless of nesting depth', async () => {
    const log: string[] = []
    await atomic(async () => {
      onCommit(() => log.push('outer 1'))
      await insert(1)
      await atomic(async () => {
        await insert(2)
        onCommit(() => log.push('depth 2'))
        await atomic(async () => {
          onCommit(() => log.push('depth 3'))
          await insert(3)
        })
        onCommit(() => log.push('depth 2 again'))
      })
      await atomic({ savepoint: false }, async () => {
        onCommit(() => log.push('merged'))
      })
      onCommit(() => log.push('outer 2'))
      expect(log).toEqual([])
    })
    expect(log).toEqual(['outer 1', 'depth 2', 'depth 3', 'depth 2 again', 'merged', 'outer 2'])
    expect(await committed()).toEqual([1, 2, 3])
  })

  test('async hooks are awaited one after the other, and atomic() resolves after the last one', async () => {
    const log: string[] = []
    const value = await atomic(async () => {
      await insert(1)
      onCommit(async () => {
        log.push('a start')
        await new Promise((resolve) => setTimeout(resolve, 30))
        log.push('a end')
      })
      onCommit(() => {
        log.push('b')
      })
      onCommit(async () => {
        log.push('c start')
        await new Promise((resolve) => setImmediate(resolve))
        log.push('c end')
      })
      return 'value'
    })
    log.push('atomic resolved')
    expect(value).toBe('value')
    expect(log).toEqual(['a start', 'a end', 'b', 'c start', 'c end', 'atomic resolved'])
  })

  test('hooks registered from concurrent sibling blocks (Promise.all) run in registration order', async () => {
    const registered: string[] = []
    const ran: string[] = []
    const register = (label: string) => {
      registered.push(label)
      onCommit(() => ran.push(label))
    }
    const sibling = (label: string, x: number) =>
      atomic(async () => {
        register(`${label} before query`)
        await insert(x)
        register(`${label} after query`)
        await atomic(async () => {
          await insert(x + 100)
          register(`${label} inner`)
        })
      })
    await atomic(async () => {
      register('outer')
      await Promise.all([sibling('a', 1), sibling('b', 2), sibling('c', 3)])
      register('outer end')
    })
    expect(ran).toEqual(registered)
    // Sibling blocks are serialized in call order, so their hooks do not interleave.
    expect(ran).toEqual([
      'outer',
      'a before query',
      'a after query',
      'a inner',
      'b before query',
      'b after query',
      'b inner',
      'c before query',
      'c after query',
      'c inner',
      'outer end',
    ])
    expect(await committed()).toEqual([1, 2, 3, 101, 102, 103])
  })

  test('a concurrent sibling that fails loses its hooks; the others keep their order', async () => {
    const ran: string[] = []
    await atomic(async () => {
      const results = await Promise.allSettled([
        atomic(async () => {
          onCommit(() => ran.push('a'))
          await insert(1)
        }),
        atomic(async () => {
          onCommit(() => ran.push('b'))
          await insert(2)
          throw new Boom('b fails')
        }),
        atomic(async () => {
          onCommit(() => ran.push('c'))
          await insert(3)
        }),
      ])
      expect(results.map((r) => r.status)).toEqual(['fulfilled', 'rejected', 'fulfilled'])
    })
    expect(ran).toEqual(['a', 'c'])
    expect(await committed()).toEqual([1, 3])
  })

  test(
    "hook in hook: a hook that opens its own block runs that block's hooks " + 'depth-first (Django test_hook_in_hook)',
    async () => {
      const notified: number[] = []
      const hook = (i: number, addHook: boolean) => () =>
        atomic(async () => {
          if (addHook) onCommit(hook(i + 10, false))
          await insert(i)
          notified.push(i)
        })
      await atomic(async () => {
        onCommit(hook(1, true))
        onCommit(hook(2, true))
      })
      expect(notified).toEqual([1, 11, 2, 12])
      expect(await committed()).toEqual([1, 2, 11, 12])
      // Each hook's block is its own transaction, committed before the next hook runs.
      expect(h.statements).toEqual([
        'BEGIN',
        INSERT,
        'COMMIT',
        'BEGIN',
        INSERT,
        'COMMIT',
        'BEGIN',
        INSERT,
        'COMMIT',
        'BEGIN',
        INSERT,
        'COMMIT',
      ])
    },
  )

  test('a hook that calls onCommit outside any block runs the new hook immediately', async () => {
    const log: string[] = []
    await atomic(async () => {
      await insert(1)
      onCommit(() => {
        log.push('first start')
        onCommit(() => log.push('immediate'))
        log.push('first end')
      })
      onCommit(() => log.push('second'))
    })
    expect(log).toEqual(['first start', 'immediate', 'first end', 'second'])
  })
})

describe('when hooks run', () => {
  test('after COMMIT, with the connection back in the pool, in autocommit, seeing the committed data', async () => {
    const seen: Record<string, unknown> = {}
    await atomic(async () => {
      await insert(1)
      await atomic(() => insert(2))
      onCommit(async () => {
        seen['statements'] = [...h.statements]
        seen['pool'] = {
          total: h.pool.totalCount > 0,
          checkedOut: h.pool.totalCount - h.pool.idleCount,
          waiting: h.pool.waitingCount,
        }
        seen['facade'] = { checkedOut: h.db.pool.totalCount - h.db.pool.idleCount }
        seen['inAtomicBlock'] = inAtomicBlock()
        seen['currentTransaction'] = currentTransaction()
        seen['viaDb'] = (await h.db.query<{ x: number }>('select x from t order by x')).rows.map((r) => r.x)
        seen['viaAdmin'] = await committed()
        // Autocommit: the hook's own write is committed at once, no transaction around it.
        await h.db.query('insert into t (x) values (3)')
        seen['afterWrite'] = await committed()
      })
    })
    expect(seen['statements']).toEqual(['BEGIN', INSERT, 'SAVEPOINT "pga_1"', INSERT, 'COMMIT'])
    expect(seen['pool']).toEqual({ total: true, checkedOut: 0, waiting: 0 })
    expect(seen['facade']).toEqual({ checkedOut: 0 })
    expect(seen['inAtomicBlock']).toBe(false)
    expect(seen['currentTransaction']).toBeUndefined()
    expect(seen['viaDb']).toEqual([1, 2])
    expect(seen['viaAdmin']).toEqual([1, 2])
    expect(seen['afterWrite']).toEqual([1, 2, 3])
    expect(h.statements).toEqual([
      'BEGIN',
      INSERT,
      'SAVEPOINT "pga_1"',
      INSERT,
      'COMMIT',
      'select x from t order by x',
      'insert into t (x) values (3)',
    ])
  })

  test(
    'hooks run outside the transaction: inAtomicBlock() is false, onRollback() there ' +
      'is not kept, setRollback() is refused',
    async () => {
      const seen: unknown[] = []
      const kept: string[] = []
      await atomic(async () => {
        await atomic(async () => {
          await insert(1)
          onCommit(() => {
            seen.push(inAtomicBlock(), currentTransaction())
            onRollback(() => kept.push('never'))
            try {
              setRollback(true)
              seen.push('setRollback accepted')
            } catch (error) {
              seen.push(error)
            }
          })
        })
      })
      expect(seen).toHaveLength(3)
      expect(seen[0]).toBe(false)
      expect(seen[1]).toBeUndefined()
      expect(seen[2]).toBeInstanceOf(TransactionManagementError)
      expect((seen[2] as Error).message).toBe("The rollback flag doesn't work outside of an 'atomic' block.")
      expect(kept).toEqual([])
    },
  )

  test('a hook of a block that ran no query still runs (nothing was sent, nothing held)', async () => {
    const log: string[] = []
    await atomic(async () => {
      onCommit(() => log.push(`ran, pool total ${h.pool.totalCount - h.pool.idleCount} checked out`))
    })
    expect(log).toEqual(['ran, pool total 0 checked out'])
    expect(h.statements).toEqual([])
  })

  test('outside a block onCommit runs immediately (synchronously)', () => {
    const log: string[] = []
    onCommit(() => log.push('now'))
    log.push('after')
    expect(log).toEqual(['now', 'after'])
    expect(h.statements).toEqual([])
  })

  test('outside a block a failing non-robust hook throws to the caller; a robust one is logged', async () => {
    const boom = new Boom('immediate')
    expect(() =>
      onCommit(() => {
        throw boom
      }),
    ).toThrow(boom)
    expect(logged).toEqual([])
    await withHookErrors(async (events) => {
      function robustImmediate(): void {
        throw boom
      }
      onCommit(robustImmediate, { robust: true })
      expect(logged).toEqual([
        { message: 'Error calling robustImmediate in onCommit(); the error is attached.', error: boom },
      ])
      expect(logged[0]?.error).toBe(boom)
      expect(events).toEqual([{ kind: 'commit', transactionId: undefined, database: 'default', error: boom }])
    })
  })

  test('outside a block an async hook that rejects cannot throw to the caller: it is logged', async () => {
    const boom = new Boom('async immediate')
    let ran = false
    onCommit(async () => {
      ran = true
      throw boom
    })
    expect(ran).toBe(true)
    await new Promise((resolve) => setImmediate(resolve))
    expect(logged).toHaveLength(1)
    expect(logged[0]?.error).toBe(boom)
    expect(logged[0]?.message).toBe('Error calling an anonymous function in onCommit(); the error is attached.')
  })

  test('a hook is registered once and runs once; the next transaction starts with no hooks', async () => {
    let count = 0
    await atomic(async () => {
      await insert(1)
      onCommit(() => count++)
    })
    await atomic(() => insert(2))
    expect(count).toBe(1)
  })
})

describe('dropped with a rolled-back block', () => {
  test('a hook registered in a nested block that rolls back is dropped; hooks outside it survive', async () => {
    const log: string[] = []
    await atomic(async () => {
      await insert(1)
      onCommit(() => log.push('1'))
      await expect(
        atomic(async () => {
          await insert(2)
          onCommit(() => log.push('2'))
          throw new Boom('inner')
        }),
      ).rejects.toThrow('inner')
      await insert(3)
      onCommit(() => log.push('3'))
    })
    expect(log).toEqual(['1', '3'])
    expect(await committed()).toEqual([1, 3])
  })

  test(
    'hooks of inner blocks that succeeded are dropped with the outer savepoint ' +
      '(Django test_inner_savepoint_rolled_back_with_outer)',
    async () => {
      const log: number[] = []
      const rolledBack: string[] = []
      await atomic(async () => {
        await expect(
          atomic(async () => {
            await atomic(async () => {
              await insert(1)
              onCommit(() => log.push(1))
              onRollback(() => rolledBack.push('inner (had succeeded)'))
              await atomic(async () => {
                onCommit(() => log.push(11))
              })
            })
            onRollback(() => rolledBack.push('middle'))
            throw new Boom('middle')
          }),
        ).rejects.toThrow('middle')
        expect(rolledBack).toEqual(['inner (had succeeded)', 'middle'])
        await insert(2)
        onCommit(() => log.push(2))
      })
      expect(log).toEqual([2])
      expect(rolledBack).toEqual(['inner (had succeeded)', 'middle'])
      expect(await committed()).toEqual([2])
    },
  )

  test(
    'hooks survive the caught failure of a sibling block ' + '(Django test_discards_hooks_from_rolled_back_savepoint)',
    async () => {
      const log: number[] = []
      await atomic(async () => {
        await atomic(async () => {
          await insert(1)
          onCommit(() => log.push(1))
        })
        await expect(
          atomic(async () => {
            await insert(2)
            onCommit(() => log.push(2))
            throw new Boom('sibling')
          }),
        ).rejects.toThrow('sibling')
        await atomic(async () => {
          await insert(3)
          onCommit(() => log.push(3))
        })
      })
      expect(log).toEqual([1, 3])
      expect(await committed()).toEqual([1, 3])
    },
  )

  test(
    'a hook registered in a savepoint:false block belongs to the enclosing savepoint ' + 'and is dropped with it',
    async () => {
      const log: string[] = []
      await atomic(async () => {
        onCommit(() => log.push('outer'))
        await expect(
          atomic(async () => {
            await atomic({ savepoint: false }, async () => {
              onCommit(() => log.push('merged'))
            })
            await insert(1)
            throw new Boom('savepoint block')
          }),
        ).rejects.toThrow('savepoint block')
      })
      expect(log).toEqual(['outer'])
    },
  )

  test('a hook registered in a nested block that is rolled back with setRollback(true) is dropped', async () => {
    const log: string[] = []
    await atomic(async () => {
      await atomic(async () => {
        await insert(1)
        onCommit(() => log.push('inner'))
        setRollback(true)
      })
      await insert(2)
      onCommit(() => log.push('outer'))
    })
    expect(log).toEqual(['outer'])
    expect(await committed()).toEqual([2])
  })
})

describe('argument validation', () => {
  test.each([
    ['a number', 42],
    ['a string', 'sendEmail'],
    ['null', null],
    ['undefined', undefined],
    ['a promise', Promise.resolve()],
  ])(
    'onCommit/onRollback with %s: InvalidOptionError naming field "callback", inside and outside a block',
    async (_label, value) => {
      const check = (fn: () => void) => {
        let error: unknown
        try {
          fn()
        } catch (e) {
          error = e
        }
        expect(error).toBeInstanceOf(InvalidOptionError)
        expect(error).toMatchObject({ name: 'InvalidOptionError', field: 'callback' })
      }
      check(() => onCommit(value as never))
      check(() => onCommit(value as never, { robust: true }))
      check(() => onRollback(value as never))
      const log: string[] = []
      await atomic(async (tx) => {
        check(() => onCommit(value as never))
        check(() => onRollback(value as never))
        check(() => tx.onCommit(value as never))
        check(() => tx.onRollback(value as never))
        await insert(1)
        onCommit(() => log.push('valid hook'))
      })
      // The refused registrations did not doom the block: it committed and ran the valid hook.
      expect(log).toEqual(['valid hook'])
      expect(await committed()).toEqual([1])
      expect(h.statements).toEqual(['BEGIN', INSERT, 'COMMIT'])
    },
  )
})

describe('failing onCommit hooks', () => {
  test('a non-robust hook failure: OnCommitHookError (committed), data committed, later hooks dropped', async () => {
    const boom = new Boom('mailer down')
    const log: string[] = []
    function sendEmail(): void {
      log.push('sendEmail')
      throw boom
    }
    const error = await rejection(
      atomic(async () => {
        await insert(1)
        onCommit(() => log.push('before'))
        onCommit(sendEmail)
        onCommit(() => log.push('after'))
        return 'value'
      }),
    )
    expect(error).toBeInstanceOf(OnCommitHookError)
    expect(error).toBeInstanceOf(AtomicError)
    expect(error).not.toBeInstanceOf(TransactionManagementError)
    expect(error).toMatchObject({ name: 'OnCommitHookError', committed: true })
    expect((error as Error).cause).toBe(boom)
    expect((error as Error).message).toContain('sendEmail')
    expect((error as Error).message).toContain('committed')
    expect(log).toEqual(['before', 'sendEmail'])
    expect(await committed()).toEqual([1])
    expect(h.statements).toEqual(['BEGIN', INSERT, 'COMMIT'])
    expect(logged).toEqual([])
    expect(h.pool.idleCount).toBe(h.pool.totalCount)
    // The dropped hooks are not run later by another transaction.
    await atomic(() => insert(2))
    expect(log).toEqual(['before', 'sendEmail'])
  })

  test(
    'a non-robust async hook that rejects (with a non-Error value) gives ' +
      'OnCommitHookError with that value as cause',
    async () => {
      const log: string[] = []
      const error = await rejection(
        atomic(async () => {
          await insert(1)
          onCommit(async () => {
            await new Promise((resolve) => setImmediate(resolve))
            throw 'plain string'
          })
          onCommit(() => log.push('after'))
        }),
      )
      expect(error).toBeInstanceOf(OnCommitHookError)
      expect((error as OnCommitHookError).committed).toBe(true)
      expect((error as Error).cause).toBe('plain string')
      expect(log).toEqual([])
      expect(await committed()).toEqual([1])
    },
  )

  test(
    'a robust hook failure is logged and published on pg-atomic:hook-error; later ' + 'hooks run; atomic() resolves',
    async () => {
      expect(HOOK_ERROR_CHANNEL).toBe('pg-atomic:hook-error')
      const boom = new Boom('webhook failed')
      const log: string[] = []
      function notifyWebhook(): void {
        log.push('notifyWebhook')
        throw boom
      }
      await withHookErrors(async (events) => {
        let txId: number | undefined
        const value = await atomic(async (tx) => {
          txId = tx.id
          await insert(1)
          onCommit(() => log.push('before'))
          onCommit(notifyWebhook, { robust: true })
          onCommit(() => log.push('after'))
          return 'value'
        })
        expect(value).toBe('value')
        expect(log).toEqual(['before', 'notifyWebhook', 'after'])
        expect(logged).toEqual([
          {
            message: `Error calling notifyWebhook in onCommit() during transaction ${txId}; the error is attached.`,
            error: boom,
          },
        ])
        expect(logged[0]?.error).toBe(boom)
        expect(events).toEqual([{ kind: 'commit', transactionId: txId, database: 'default', error: boom }])
        expect(events[0]?.error).toBe(boom)
      })
      expect(await committed()).toEqual([1])
    },
  )

  test('robust tx.onCommit with an async rejection is logged too', async () => {
    const boom = new Boom('async robust')
    const log: string[] = []
    await atomic(async (tx) => {
      await insert(1)
      tx.onCommit(
        async () => {
          await new Promise((resolve) => setImmediate(resolve))
          throw boom
        },
        { robust: true },
      )
      tx.onCommit(() => log.push('after'))
    })
    expect(log).toEqual(['after'])
    expect(logged).toHaveLength(1)
    expect(logged[0]?.error).toBe(boom)
    expect(logged[0]?.message).toMatch(
      /^Error calling an anonymous function in onCommit\(\) during transaction \d+; the error is attached\.$/,
    )
  })
})

describe('onRollback', () => {
  test(
    'whole transaction rolled back: onCommit hooks never run, onRollback hooks run ' +
      'FIFO (nested ones included) after ROLLBACK, outside the transaction',
    async () => {
      const boom = new Boom('outer fails')
      const log: string[] = []
      const seen: unknown[] = []
      const error = await rejection(
        atomic(async () => {
          await insert(1)
          onCommit(() => log.push('commit 1'))
          onRollback(() => {
            log.push('rollback 1')
            seen.push([...h.statements], h.pool.totalCount - h.pool.idleCount, inAtomicBlock())
          })
          await atomic(async () => {
            await insert(2)
            onRollback(() => log.push('rollback 2 (nested, had succeeded)'))
            onCommit(() => log.push('commit 2'))
          })
          onRollback(async () => {
            await new Promise((resolve) => setImmediate(resolve))
            log.push('rollback 3 (async)')
          })
          throw boom
        }),
      )
      expect(error).toBe(boom)
      expect(log).toEqual(['rollback 1', 'rollback 2 (nested, had succeeded)', 'rollback 3 (async)'])
      expect(seen).toEqual([['BEGIN', INSERT, 'SAVEPOINT "pga_1"', INSERT, 'ROLLBACK'], 0, false])
      expect(await committed()).toEqual([])
    },
  )

  test('onRollback hooks of a committed transaction never run', async () => {
    const log: string[] = []
    await atomic(async () => {
      await insert(1)
      onRollback(() => log.push('rollback'))
      await atomic(async () => {
        onRollback(() => log.push('nested rollback'))
        await insert(2)
      })
      onCommit(() => log.push('commit'))
    })
    expect(log).toEqual(['commit'])
  })

  test(
    'savepoint rolled back: its onRollback hooks run FIFO when the nested block ' +
      'exits, its onCommit hooks are dropped, the outer ones are kept',
    async () => {
      const log: string[] = []
      await atomic(async () => {
        await insert(1)
        onCommit(() => log.push('outer commit'))
        onRollback(() => log.push('outer rollback'))
        await expect(
          atomic(async () => {
            await insert(2)
            onRollback(() => log.push('inner rollback a'))
            onCommit(() => log.push('inner commit'))
            await atomic(async () => {
              onRollback(() => log.push('innermost rollback (had succeeded)'))
              await insert(3)
            })
            onRollback(() => log.push('inner rollback b'))
            throw new Boom('inner')
          }),
        ).rejects.toThrow('inner')
        log.push('inner atomic() rejected')
        await insert(4)
      })
      expect(log).toEqual([
        'inner rollback a',
        'innermost rollback (had succeeded)',
        'inner rollback b',
        'inner atomic() rejected',
        'outer commit',
      ])
      expect(await committed()).toEqual([1, 4])
    },
  )

  test(
    "a savepoint's onRollback hook runs after its ROLLBACK TO SAVEPOINT reached the " +
      'server (its locks are released)',
    async () => {
      const seen: unknown[] = []
      // A second session, already in a transaction, so the hook's lock attempt is its first message.
      const other = await h.admin.connect()
      try {
        await other.query('begin')
        await atomic(async () => {
          await insert(1)
          await expect(
            atomic(async () => {
              // A lock taken after a savepoint is released when the savepoint is rolled back.
              await h.db.query('lock table t in access exclusive mode')
              onRollback(async () => {
                seen.push(h.statements.includes('ROLLBACK TO SAVEPOINT "pga_1"; RELEASE SAVEPOINT "pga_1"'))
                try {
                  await other.query('lock table t in access share mode nowait')
                  seen.push('lock free')
                } catch (error) {
                  seen.push((error as { code?: string }).code)
                }
              })
              throw new Boom('inner')
            }),
          ).rejects.toThrow('inner')
          await insert(2)
        })
      } finally {
        await other.query('rollback')
        other.release()
      }
      expect(seen).toEqual([true, 'lock free'])
      expect(await committed()).toEqual([1, 2])
    },
  )

  test(
    'setRollback(true) on the outermost block: onRollback hooks run, onCommit hooks ' + 'do not, atomic() resolves',
    async () => {
      const log: string[] = []
      const value = await atomic(async () => {
        await insert(1)
        onCommit(() => log.push('commit'))
        onRollback(() => log.push('rollback'))
        setRollback(true)
        return 'silent'
      })
      expect(value).toBe('silent')
      expect(log).toEqual(['rollback'])
      expect(h.statements).toEqual(['BEGIN', INSERT, 'ROLLBACK'])
    },
  )

  test('onRollback hooks run even when the block ran no query (nothing to send)', async () => {
    const log: string[] = []
    const boom = new Boom('empty')
    await expect(
      atomic(async () => {
        onRollback(() => log.push('rollback'))
        onCommit(() => log.push('commit'))
        throw boom
      }),
    ).rejects.toBe(boom)
    expect(log).toEqual(['rollback'])
    expect(h.statements).toEqual([])
  })

  test(
    'errors in onRollback hooks are logged and published, later hooks still run, the ' + 'original error is kept',
    async () => {
      const original = new Boom('original')
      const hookError = new Boom('rollback hook failed')
      const log: string[] = []
      function releaseReservation(): void {
        throw hookError
      }
      await withHookErrors(async (events) => {
        let txId: number | undefined
        const error = await rejection(
          atomic(async (tx) => {
            txId = tx.id
            await insert(1)
            onRollback(releaseReservation)
            onRollback(() => log.push('second rollback hook'))
            throw original
          }),
        )
        expect(error).toBe(original)
        expect(log).toEqual(['second rollback hook'])
        expect(logged).toEqual([
          {
            message:
              `Error calling releaseReservation in onRollback() during transaction ${txId}; ` +
              `the error is attached.`,
            error: hookError,
          },
        ])
        expect(logged[0]?.error).toBe(hookError)
        expect(events).toEqual([{ kind: 'rollback', transactionId: txId, database: 'default', error: hookError }])
        expect(events[0]?.error).toBe(hookError)
      })
    },
  )

  test("errors in a savepoint's onRollback hooks are logged and do not replace the nested block's error", async () => {
    const original = new Boom('inner original')
    const hookError = new Boom('savepoint rollback hook failed')
    const log: string[] = []
    await atomic(async () => {
      await insert(1)
      const error = await rejection(
        atomic(async () => {
          await insert(2)
          onRollback(() => {
            throw hookError
          })
          onRollback(() => log.push('second'))
          throw original
        }),
      )
      expect(error).toBe(original)
    })
    expect(log).toEqual(['second'])
    expect(logged).toHaveLength(1)
    expect(logged[0]?.error).toBe(hookError)
    expect(await committed()).toEqual([1])
  })

  test('a failed query dooms the block: on exit onRollback hooks run and onCommit hooks do not', async () => {
    const log: string[] = []
    const error = await rejection(
      atomic(async () => {
        onCommit(() => log.push('commit'))
        onRollback(() => log.push('rollback'))
        await expect(h.db.query('select 1/0')).rejects.toMatchObject({ code: '22012' })
      }),
    )
    expect(error).toBeInstanceOf(TransactionManagementError)
    expect(log).toEqual(['rollback'])
  })

  test('outside a block onRollback is not kept and never runs', async () => {
    const log: string[] = []
    onRollback(() => log.push('never'))
    await expect(
      atomic(async () => {
        await insert(1)
        throw new Boom('x')
      }),
    ).rejects.toThrow('x')
    expect(log).toEqual([])
  })
})

describe('hooks on the transaction handle', () => {
  test('tx.onCommit and tx.onRollback of the outermost and a nested handle', async () => {
    const log: string[] = []
    await atomic(async (outer) => {
      outer.onCommit(() => log.push('outer commit'))
      outer.onRollback(() => log.push('outer rollback'))
      await insert(1)
      await expect(
        atomic(async (inner) => {
          inner.onCommit(() => log.push('inner commit'))
          inner.onRollback(() => log.push('inner rollback'))
          await inner.query(INSERT, [2])
          throw new Boom('inner')
        }),
      ).rejects.toThrow('inner')
      await atomic(async (kept) => {
        kept.onCommit(() => log.push('kept commit'))
        kept.onRollback(() => log.push('kept rollback'))
        await kept.query(INSERT, [3])
      })
    })
    expect(log).toEqual(['inner rollback', 'outer commit', 'kept commit'])
    expect(await committed()).toEqual([1, 3])
  })

  test('tx.onCommit after the block ended is refused with TransactionManagementError', async () => {
    let handle: TransactionHandle | undefined
    await atomic(async (tx) => {
      handle = tx
    })
    const log: string[] = []
    expect(() => handle?.onCommit(() => log.push('late'))).toThrow(TransactionManagementError)
    expect(() => handle?.onRollback(() => log.push('late'))).toThrow(TransactionManagementError)
    expect(log).toEqual([])
  })
})
