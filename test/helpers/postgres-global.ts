// Vitest global setup for SIMBRIDGE_TEST_STORAGE=postgres: one throw-away PostgreSQL server for the whole
// run, started before any test file (so no test's hook waits for initdb) and stopped after the last one.
// Test processes find it through SIMBRIDGE_TEST_POSTGRES_URL and create their databases on it.
import { findPostgres, PostgresServer } from './postgres.ts';

export default async function setup(): Promise<(() => Promise<void>) | void> {
  if (process.env.SIMBRIDGE_TEST_STORAGE !== 'postgres' || process.env.SIMBRIDGE_TEST_POSTGRES_URL) return;
  const bin = findPostgres();
  if (!bin) throw new Error('SIMBRIDGE_TEST_STORAGE=postgres needs the PostgreSQL server programs (Debian package postgresql)');
  const server = await PostgresServer.start(bin);
  process.env.SIMBRIDGE_TEST_POSTGRES_URL = server.url('postgres');
  return async () => {
    delete process.env.SIMBRIDGE_TEST_POSTGRES_URL;
    await server.close();
  };
}
