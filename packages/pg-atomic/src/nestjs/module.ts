/**
 * `PgAtomicModule`: the databases of a NestJS application, created from configuration when it
 * starts and closed when it shuts down, injectable by alias, and the global interceptor of
 * per-request transactions. Built from plain providers (factories): it needs no decorator
 * metadata of its own.
 *
 * @module
 */
import type { DynamicModule, ModuleMetadata, Provider } from '@nestjs/common' with { 'resolution-mode': 'import' }
import { createDatabase } from '../database'
import { InvalidOptionError } from '../errors'
import type { DatabaseConfig } from '../options'
import { findDatabase } from '../registry'
import type { Database } from '../database'
import { AtomicRequestsInterceptor } from './interceptor'
import type { AtomicRequestsOptions } from './interceptor'

/** Options of {@link PgAtomicModule.forRoot}. */
export interface PgAtomicModuleOptions {
  /**
   * The databases: a configuration is created with `createDatabase()` when the application
   * starts (under its `alias`, default `'default'`) and closed when it shuts down; a `Database`
   * created elsewhere is used as it is and never closed by the module. Default: none (the module
   * uses databases registered elsewhere).
   */
  databases?: ReadonlyArray<DatabaseConfig | Database>
  /**
   * Per-request transactions: the options of the global {@link AtomicRequestsInterceptor}, or
   * `false` for none. Default: `{}` (every HTTP request gets a block of the `'default'` database).
   */
  requests?: AtomicRequestsOptions | false
}

/** Options of {@link PgAtomicModule.forRootAsync}: a factory of {@link PgAtomicModuleOptions}. */
export interface PgAtomicModuleAsyncOptions {
  /** Modules whose providers the factory needs (e.g. `ConfigModule`). Default: none. */
  imports?: ModuleMetadata['imports']
  /** Tokens of the providers passed to `useFactory`, in order. Default: none. */
  inject?: ReadonlyArray<string | symbol | (abstract new (...args: never[]) => unknown)>
  /** Returns the module's options; called once, when the application starts. */
  useFactory: (...args: never[]) => PgAtomicModuleOptions | Promise<PgAtomicModuleOptions>
  /**
   * The aliases of the databases the factory configures, for their injection tokens
   * ({@link getDatabaseToken}). Default: `['default']`.
   */
  aliases?: readonly string[]
}

/**
 * The injection token of the database registered under `alias` (default `'default'`), for
 * `@Inject(getDatabaseToken('reports'))`.
 */
export function getDatabaseToken(alias = 'default'): string {
  return `pg-atomic:database:${alias}`
}

const OPTIONS = Symbol('pg-atomic:module-options')
const DATABASES = Symbol('pg-atomic:databases')
/** `APP_INTERCEPTOR` of `@nestjs/core`: a provider under it is a global interceptor. */
const APP_INTERCEPTOR = 'APP_INTERCEPTOR'

/** The module's databases; closes those it created when the application shuts down. */
class ModuleDatabases {
  private readonly byAlias = new Map<string, Database>()
  private readonly owned: Database[] = []

  constructor(entries: ReadonlyArray<DatabaseConfig | Database>) {
    try {
      for (const entry of entries) {
        const db = isDatabase(entry) ? entry : createDatabase(entry)
        if (!isDatabase(entry)) this.owned.push(db)
        this.byAlias.set(db.alias, db)
      }
    } catch (error) {
      void this.onApplicationShutdown()
      throw error
    }
  }

  /** The database under `alias`: one of the module's, else one registered elsewhere. */
  get(alias: string): Database {
    const db = this.byAlias.get(alias) ?? findDatabase(alias)
    if (db === undefined) {
      throw new InvalidOptionError(
        'databases',
        `PgAtomicModule has no database under the alias '${alias}': add its configuration to the ` +
          `databases option, e.g. databases: [{ alias: '${alias}', connectionString: ... }], or ` +
          'create it with createDatabase() before the application starts.',
      )
    }
    return db
  }

  /** Called by NestJS when the application shuts down (`app.close()`, or a signal with `enableShutdownHooks()`). */
  async onApplicationShutdown(): Promise<void> {
    const owned = this.owned.splice(0)
    await Promise.all(owned.map((db) => db.close()))
  }
}

function isDatabase(entry: DatabaseConfig | Database): entry is Database {
  const candidate = entry as Partial<Database>
  return typeof candidate.query === 'function' && typeof candidate.close === 'function'
}

/** The global interceptor, once the databases exist: each database of its requests must be there. */
function interceptorFor(requests: AtomicRequestsOptions | false | undefined, databases: ModuleDatabases): object {
  if (requests === false) return { intercept: (_context: unknown, next: { handle(): unknown }) => next.handle() }
  const interceptor = new AtomicRequestsInterceptor(requests)
  for (const alias of interceptor.databases) databases.get(alias)
  return interceptor
}

/**
 * The pg-atomic module of a NestJS application (global: import it once, in the root module).
 *
 * - `PgAtomicModule.forRoot({ databases, requests })`: creates the databases from their
 *   configuration when the application starts (closed on shutdown: `app.close()`, or a signal with
 *   `app.enableShutdownHooks()`), provides each under {@link getDatabaseToken}, and registers
 *   {@link AtomicRequestsInterceptor} as a global interceptor (`requests: false` leaves it out).
 * - `PgAtomicModule.forRootAsync({ imports, inject, useFactory })`: the same options from a
 *   factory (configuration services).
 *
 * `@Atomic()` on a provider's methods works as anywhere else: inside a request, its block is a
 * savepoint of the request's transaction.
 *
 * @example
 * ```ts legacy-decorators
 * import { Controller, Inject, Injectable, Module, Post } from '@nestjs/common'
 * import { Atomic } from 'pg-atomic'
 * import type { Database } from 'pg-atomic'
 * import { getDatabaseToken, PgAtomicModule } from 'pg-atomic/nestjs'
 *
 * @Injectable()
 * class Orders {
 *   constructor(@Inject(getDatabaseToken()) private readonly db: Database) {}
 *   @Atomic()
 *   async place(total: number) {
 *     await this.db.query('insert into orders(total_cents) values ($1)', [total])
 *   }
 * }
 *
 * @Controller('orders')
 * class OrdersController {
 *   constructor(@Inject(Orders) private readonly orders: Orders) {}
 *   @Post()
 *   async create() {
 *     await this.orders.place(1200)
 *     return { ok: true } // sent after COMMIT
 *   }
 * }
 *
 * @Module({
 *   imports: [PgAtomicModule.forRoot({ databases: [{ connectionString: process.env.DATABASE_URL }] })],
 *   controllers: [OrdersController],
 *   providers: [Orders],
 * })
 * class AppModule {}
 * ```
 */
export class PgAtomicModule {
  /**
   * The module with databases and request options given here. The request options are validated
   * now (`InvalidOptionError`); the databases are created when the application starts.
   */
  static forRoot(options: PgAtomicModuleOptions = {}): DynamicModule {
    // Validated now; the aliases of the request blocks get injection tokens too.
    const requests = options.requests === false ? [] : new AtomicRequestsInterceptor(options.requests).databases
    const entries = [...(options.databases ?? [])]
    const aliases = [
      ...entries.map((entry) => (isDatabase(entry) ? entry.alias : (entry.alias ?? 'default'))),
      ...requests,
    ]
    return PgAtomicModule.build([{ provide: OPTIONS, useValue: options }], aliases, [])
  }

  /** The module with its options from a factory, called when the application starts. */
  static forRootAsync(options: PgAtomicModuleAsyncOptions): DynamicModule {
    const provider: Provider = {
      provide: OPTIONS,
      useFactory: options.useFactory as (...args: unknown[]) => PgAtomicModuleOptions,
      inject: [...(options.inject ?? [])],
    }
    return PgAtomicModule.build([provider], options.aliases ?? ['default'], options.imports ?? [])
  }

  private static build(
    optionsProviders: Provider[],
    aliases: readonly string[],
    imports: NonNullable<ModuleMetadata['imports']>,
  ): DynamicModule {
    const tokens = [...new Set(aliases)].map((alias) => ({
      provide: getDatabaseToken(alias),
      useFactory: (databases: ModuleDatabases) => databases.get(alias),
      inject: [DATABASES],
    }))
    return {
      module: PgAtomicModule,
      global: true,
      imports,
      providers: [
        ...optionsProviders,
        {
          provide: DATABASES,
          useFactory: (options: PgAtomicModuleOptions) => new ModuleDatabases(options.databases ?? []),
          inject: [OPTIONS],
        },
        ...tokens,
        {
          provide: APP_INTERCEPTOR,
          useFactory: (options: PgAtomicModuleOptions, databases: ModuleDatabases) =>
            interceptorFor(options.requests, databases),
          inject: [OPTIONS, DATABASES],
        },
      ],
      exports: tokens.map((token) => token.provide),
    }
  }
}
