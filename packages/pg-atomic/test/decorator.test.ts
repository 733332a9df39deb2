/**
 * @Atomic() with TC39 standard decorators: this file is compiled without experimentalDecorators
 * and only defines the decorated classes; the cases are in support/decorator-suite.ts, which
 * decorator.legacy.test.ts runs with legacy decorators.
 */
import { Atomic } from 'pg-atomic'
import { describeAtomicDecorator } from './support/decorator-suite'
import type { CallResult } from './support/decorator-suite'

describeAtomicDecorator('TC39', ({ insert, query, currentTransaction, Boom }) => {
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
    async isolation() {
      const { rows } = await query('show transaction_isolation')
      return { level: rows[0]?.['transaction_isolation'], info: currentTransaction() }
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
    async nested(x: number): Promise<number | undefined> {
      return this.#secret(x)
    }

    @Atomic()
    async #secret(x: number): Promise<number | undefined> {
      await insert(x)
      return currentTransaction()?.depth
    }

    @Atomic()
    static async create(x: number): Promise<unknown> {
      await insert(x)
      return this
    }
  }

  return {
    Ledger,
    nestedCase: 'a private method works',
    misuse: [
      [
        'a getter',
        () => {
          class Bad {
            // @ts-expect-error -- not a method
            @Atomic()
            get value(): number {
              return 1
            }
          }
          return Bad
        },
        '@Atomic() can only decorate methods, not a getter.',
      ],
      [
        'a setter',
        () => {
          class Bad {
            // @ts-expect-error -- not a method
            @Atomic()
            set value(_v: number) {}
          }
          return Bad
        },
        '@Atomic() can only decorate methods, not a setter.',
      ],
      [
        'a field',
        () => {
          class Bad {
            // @ts-expect-error -- not a method
            @Atomic()
            handler = async () => 1
          }
          return Bad
        },
        '@Atomic() can only decorate methods, not a field.',
      ],
      [
        'an auto-accessor',
        () => {
          class Bad {
            // @ts-expect-error -- not a method
            @Atomic()
            accessor count = 0
          }
          return Bad
        },
        '@Atomic() can only decorate methods, not a accessor.',
      ],
      [
        'a class',
        () => {
          // @ts-expect-error -- not a method
          @Atomic()
          class Bad {}
          return Bad
        },
        '@Atomic() can only decorate methods, not a class.',
      ],
    ],
    defineWithOptions(options) {
      class Bad {
        @Atomic(options)
        async run(): Promise<void> {}
      }
      return Bad
    },
  }
})
