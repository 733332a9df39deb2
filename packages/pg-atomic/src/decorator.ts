/**
 * `@Atomic()`: a thin wrapper over `atomic()` for class methods, for both TC39 standard
 * decorators (TypeScript 5+) and legacy `experimentalDecorators`.
 *
 * @module
 */
import { runAtomic } from './ambient'
import { TransactionManagementError } from './errors'
import { resolveAtomicOptions } from './options'
import type { AtomicOptions, ResolvedOptions } from './options'

/** An async method. */
export type AsyncMethod<This, Args extends unknown[], R> = (this: This, ...args: Args) => Promise<R>

/** The decorator `@Atomic()` returns; usable with standard and legacy decorators. */
export interface AtomicMethodDecorator {
  /** TC39 standard method decorator. */
  <This, Args extends unknown[], R>(
    value: AsyncMethod<This, Args, R>,
    context: ClassMethodDecoratorContext<This, AsyncMethod<This, Args, R>>,
  ): AsyncMethod<This, Args, R>
  /** Legacy (`experimentalDecorators`) method decorator. */
  <T extends (...args: never[]) => Promise<unknown>>(
    target: object,
    propertyKey: string | symbol,
    descriptor: TypedPropertyDescriptor<T>,
  ): TypedPropertyDescriptor<T>
}

function wrapMethod(
  method: unknown,
  name: string,
  options: ResolvedOptions,
): (this: unknown, ...args: unknown[]) => Promise<unknown> {
  if (typeof method !== 'function')
    throw new TypeError(`@Atomic() can only decorate methods; ${name} is not a function.`)
  const wrapped = function (this: unknown, ...args: unknown[]): Promise<unknown> {
    return runAtomic(options, () => {
      const result: unknown = method.apply(this, args)
      if (
        typeof result !== 'object' ||
        result === null ||
        typeof (result as PromiseLike<unknown>).then !== 'function'
      ) {
        throw new TransactionManagementError(
          `@Atomic() can only decorate async methods: ${name}() returned a value that is ` +
            `not a promise, so its block was rolled back. Declare the method async.`,
        )
      }
      return result
    })
  }
  Object.defineProperty(wrapped, 'name', { value: (method as { name: string }).name })
  return wrapped
}

function isStandardContext(value: unknown): value is DecoratorContext {
  return typeof value === 'object' && value !== null && 'kind' in value
}

/**
 * Method decorator: every call of the method runs in a fresh `atomic()` block with `options`
 * (validated once, when the class is defined). `this` and the arguments pass through. Works with
 * TC39 standard decorators and with `experimentalDecorators`; the method must be async.
 * Default options: those of `atomic()`.
 *
 * @example
 * ```ts
 * class Accounts {
 *   @Atomic({ durable: true, isolationLevel: 'serializable' })
 *   async transfer(from: number, to: number, amount: number) {
 *     await db.query('update accounts set balance = balance - $1 where id = $2', [amount, from])
 *     await db.query('update accounts set balance = balance + $1 where id = $2', [amount, to])
 *   }
 * }
 * ```
 */
export function Atomic(options?: AtomicOptions): AtomicMethodDecorator {
  const resolved = resolveAtomicOptions(options)
  function decorator(...args: unknown[]): unknown {
    const [value, contextOrKey, descriptor] = args
    if (args.length === 2 && isStandardContext(contextOrKey)) {
      if (contextOrKey.kind !== 'method')
        throw new TypeError(`@Atomic() can only decorate methods, not a ${contextOrKey.kind}.`)
      return wrapMethod(value, String(contextOrKey.name), resolved)
    }
    const d = descriptor as PropertyDescriptor | undefined
    if (d === undefined || typeof d.value !== 'function') {
      throw new TypeError(
        `@Atomic() can only decorate methods, not a getter, setter, accessor or property (${String(contextOrKey)}).`,
      )
    }
    d.value = wrapMethod(d.value, String(contextOrKey), resolved)
    return d
  }
  return decorator as AtomicMethodDecorator
}
