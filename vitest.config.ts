import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    // SIMBRIDGE_TEST_STORAGE=postgres only: the PostgreSQL server the gateways of the run share.
    globalSetup: ['test/helpers/postgres-global.ts'],
    // Integration tests spawn processes and brokers on real sockets: give them room, and keep files
    // from competing for the two cores more than they must.
    testTimeout: 60_000,
    hookTimeout: 60_000,
    fileParallelism: true,
    maxWorkers: 2,
  },
});
