/**
 * @Atomic() with legacy decorators: jest project 'legacy-decorators' compiles this file with
 * experimentalDecorators. It only defines the decorated classes; the cases are in
 * support/decorator-suite.ts, which decorator.test.ts runs with TC39 standard decorators.
 */
import { Atomic } from 'pg-atomic'
import { describeAtomicDecorator } from './support/decorator-suite'
import type { CallResult } from './support/decorator-suite'

describeAtomicDecorator('legacy', ({ insert, query, currentTransaction, Boom }) => {
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
      return this.inner(x)
    }

    @Atomic()
    async inner(x: number): Promise<number | undefined> {
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
    nestedCase: 'a decorated method calling another one nests',
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
        '@Atomic() can only decorate methods, not a getter, setter, accessor or property (value).',
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
        '@Atomic() can only decorate methods, not a getter, setter, accessor or property (value).',
      ],
      [
        'an accessor pair',
        () => {
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
        },
        '@Atomic() can only decorate methods, not a getter, setter, accessor or property (value).',
      ],
      [
        'a property',
        () => {
          class Bad {
            // @ts-expect-error -- not a method
            @Atomic()
            handler = async () => 1
          }
          return Bad
        },
        '@Atomic() can only decorate methods, not a getter, setter, accessor or property (handler).',
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
