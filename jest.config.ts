import type { Config } from 'jest';

/**
 * Tests run from TypeScript source (ts-jest, transpile-only: `isolatedModules`
 * is set in the test tsconfigs; type errors are caught by `npm run typecheck`).
 *
 * - `core`: every `*.test.ts` except `*.legacy.test.ts`, TC39 decorators.
 * - `legacy-decorators`: `*.legacy.test.ts`, compiled with
 *   `experimentalDecorators: true`.
 *
 * globalSetup starts (or finds) one PostgreSQL server for the whole run and
 * exports its superuser URL as PG_ATOMIC_TEST_ADMIN_URL; each test file then
 * creates its own database with test/support/database.ts.
 */
const testDir = '<rootDir>/packages/pg-atomic/test';

const moduleNameMapper: Record<string, string> = {
  // Run the library from source, no build needed.
  '^pg-atomic$': '<rootDir>/packages/pg-atomic/src/index.ts',
  // Node16 ESM-style relative imports ('./x.js') → the .ts source.
  '^(\\.{1,2}/.*)\\.js$': '$1',
};

function project(displayName: string, tsconfig: string, testMatch: string[], ignore: string[] = []): Config {
  return {
    displayName,
    rootDir: __dirname,
    testEnvironment: 'node',
    testMatch,
    testPathIgnorePatterns: ['/node_modules/', '/dist/', ...ignore],
    moduleFileExtensions: ['ts', 'js', 'json'],
    moduleNameMapper,
    transform: {
      '^.+\\.ts$': ['ts-jest', { tsconfig: `${testDir}/${tsconfig}` }],
    },
  };
}

const config: Config = {
  rootDir: __dirname,
  testTimeout: 30_000,
  globalSetup: `${testDir}/support/global-setup.ts`,
  globalTeardown: `${testDir}/support/global-teardown.ts`,
  projects: [
    project('core', 'tsconfig.json', [`${testDir}/**/*.test.ts`], ['\\.legacy\\.test\\.ts$']),
    project('legacy-decorators', 'tsconfig.legacy.json', [`${testDir}/**/*.legacy.test.ts`]),
  ],
};

export default config;
