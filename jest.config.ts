import type { Config } from 'jest'

/**
 * Tests run from TypeScript source (ts-jest, transpile-only: `isolatedModules` is set in the test
 * tsconfigs; type errors are caught by `npm run typecheck`). Every package's tests are found at
 * `packages/<package>/test/**\/*.test.ts`.
 *
 * Projects:
 * - `unit`: the files in UNIT_TESTS, which never connect. No globalSetup: jest runs a project's
 *   globalSetup only when one of that project's tests runs, so `jest --selectProjects unit` (or
 *   `npx jest packages/pg-atomic/test/statements`) starts no PostgreSQL.
 * - `core`: every other `*.test.ts` except `*.legacy.test.ts` and `*.nest.test.ts`, TC39 decorators.
 * - `legacy-decorators`: `*.legacy.test.ts`, compiled with `experimentalDecorators: true`.
 * - `nestjs`: `*.nest.test.ts`, compiled with `experimentalDecorators` and `emitDecoratorMetadata`
 *   (NestJS's dependency injection reads the parameter types); NestJS's own packages, which are
 *   ECMAScript modules only, are compiled to CommonJS for jest by test/support/esm-to-commonjs.mjs.
 *
 * The globalSetup of `core` and `legacy-decorators` (one module: jest runs it once) starts (or
 * finds) one PostgreSQL server for the whole run and exports its superuser URL as
 * PG_ATOMIC_TEST_ADMIN_URL; each test file then creates its own database with
 * test/support/database.ts.
 */
const support = '<rootDir>/packages/pg-atomic/test/support'
const tsconfigs = '<rootDir>/packages/pg-atomic/test'
const tests = '<rootDir>/packages/*/test/**'

/**
 * Test files that send no SQL and open no connection. The `unit` project removes the test
 * server's URL from their environment, so one that tries to connect fails instead of passing
 * only in a full run.
 */
const UNIT_TESTS = ['packages/pg-atomic/test/statements.test.ts', 'packages/pg-atomic/test/builder-control.test.ts']

const moduleNameMapper: Record<string, string> = {
  // Run the library from source, no build needed.
  '^pg-atomic$': '<rootDir>/packages/pg-atomic/src/index.ts',
  '^pg-atomic/insight$': '<rootDir>/packages/pg-atomic/src/insight/index.ts',
  '^pg-atomic/testing$': '<rootDir>/packages/pg-atomic/src/testing/index.ts',
  '^pg-atomic/web$': '<rootDir>/packages/pg-atomic/src/web/index.ts',
  '^pg-atomic/express$': '<rootDir>/packages/pg-atomic/src/express.ts',
  '^pg-atomic/fastify$': '<rootDir>/packages/pg-atomic/src/fastify.ts',
  '^pg-atomic/nestjs$': '<rootDir>/packages/pg-atomic/src/nestjs/index.ts',
  '^pg-atomic/otel$': '<rootDir>/packages/pg-atomic/src/otel/index.ts',
  // Node16 ESM-style relative imports ('./x.js') → the .ts source.
  '^(\\.{1,2}/.*)\\.js$': '$1',
}

/** Packages the NestJS tests load that are ECMAScript modules only (see esm-to-commonjs.mjs). */
const ESM_ONLY = ['@nestjs', 'file-type', '@standard-schema']

const escape = (path: string) => path.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')
const unitPattern = `/(${UNIT_TESTS.map(escape).join('|')})$`

function project(displayName: string, tsconfig: string, overrides: Config): Config {
  return {
    displayName,
    rootDir: __dirname,
    testEnvironment: 'node',
    moduleFileExtensions: ['ts', 'js', 'json'],
    moduleNameMapper,
    transform: {
      '^.+\\.ts$': ['ts-jest', { tsconfig: `${tsconfigs}/${tsconfig}` }],
    },
    ...overrides,
    testPathIgnorePatterns: ['/node_modules/', '/dist/', ...(overrides.testPathIgnorePatterns ?? [])],
  }
}

const database: Config = {
  globalSetup: `${support}/global-setup.ts`,
  globalTeardown: `${support}/global-teardown.ts`,
}

const config: Config = {
  rootDir: __dirname,
  testTimeout: 30_000,
  projects: [
    project('unit', 'tsconfig.json', {
      testMatch: UNIT_TESTS.map((file) => `<rootDir>/${file}`),
      setupFiles: [`${support}/unit-setup.ts`],
    }),
    project('core', 'tsconfig.json', {
      ...database,
      testMatch: [`${tests}/*.test.ts`],
      testPathIgnorePatterns: ['\\.legacy\\.test\\.ts$', '\\.nest\\.test\\.ts$', unitPattern],
    }),
    project('legacy-decorators', 'tsconfig.legacy.json', {
      ...database,
      testMatch: [`${tests}/*.legacy.test.ts`],
    }),
    project('nestjs', 'tsconfig.nestjs.json', {
      ...database,
      testMatch: [`${tests}/*.nest.test.ts`],
      transform: {
        '^.+\\.ts$': ['ts-jest', { tsconfig: `${tsconfigs}/tsconfig.nestjs.json` }],
        [`/node_modules/(${ESM_ONLY.join('|')})/.+\\.js$`]: `${support}/esm-to-commonjs.mjs`,
      },
      transformIgnorePatterns: [`/node_modules/(?!(${ESM_ONLY.join('|')})/)`],
    }),
  ],
}

export default config
