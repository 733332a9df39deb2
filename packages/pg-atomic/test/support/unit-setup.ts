/**
 * setupFiles of the jest project `unit` (jest.config.ts): its test files must not connect, so the
 * test server's URLs are removed from their environment (jest gives each test file its own copy
 * of process.env). createTestDatabase() and setupHarness() then fail at once, even in a run where
 * another project's globalSetup started a server.
 */
delete process.env['PG_ATOMIC_TEST_ADMIN_URL']
delete process.env['PG_ATOMIC_TEST_POOLER_URL']
