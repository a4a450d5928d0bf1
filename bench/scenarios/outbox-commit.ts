import { basename, dirname, join } from 'node:path';
import { knob, type Ctx, type Scenario } from '../lib/context.ts';
import type { ScenarioResult } from '../lib/report.ts';
import { round } from '../lib/stats.ts';
import { openDatabase } from '../../storage/db.ts';
import { Outbox, type GroupCommitOutbox } from '../../storage/outbox.ts';
import { workerWriter, type CommitWriter } from '../../storage/outbox-commit.ts';
import { openPostgres } from '../../storage/postgres/connect.ts';
import { PgOutbox, postgresWriter } from '../../storage/postgres/outbox.ts';
import { findPostgres, PostgresServer } from '../../test/helpers/postgres.ts';
import { tempDir } from '../../test/helpers/processes.ts';

interface Run {
  rows_per_s: number;
  rows_per_commit: number;
}

/**
 * Devices appending to the outbox at once, closed loop (each sends its next message when the last is
 * acknowledged, i.e. committed), for a fixed time: how many rows per second group commit makes durable.
 */
async function drive(outbox: GroupCommitOutbox, writer: { commits: number }, devices: number, durationMs: number): Promise<Run> {
  const payload = Buffer.alloc(200, 'x');
  const until = Date.now() + durationMs;
  let rows = 0;
  const started = performance.now();
  const commitsBefore = writer.commits;
  await Promise.all(
    Array.from({ length: devices }, async (_, i) => {
      const imsi = `00101${String(i).padStart(10, '0')}`;
      while (Date.now() < until) {
        await outbox.enqueue({ imsi, deviceTopic: 'telemetry', payload, qos: 1, receivedAt: Date.now() });
        rows++;
      }
    }),
  );
  const seconds = (performance.now() - started) / 1000;
  return { rows_per_s: rows / seconds, rows_per_commit: rows / Math.max(1, writer.commits - commitsBefore) };
}

/** Counts the commits a writer runs. */
function counted(writer: CommitWriter): CommitWriter & { commits: number } {
  const c = { ...writer, commits: 0 };
  c.commit = (req) => (c.commits++, writer.commit(req));
  return c;
}

async function outboxCommit(ctx: Ctx): Promise<ScenarioResult> {
  const devices = knob('DEVICES', 1000, 200, ctx);
  const durationMs = knob('DURATION_S', 10, 3, ctx) * 1000;
  const bin = findPostgres();
  const dir = tempDir('bench-outbox');

  const file = join(dir, 'simbridge.db');
  const db = openDatabase({ file, synchronous: 'full' });
  const sqliteWriter = counted(workerWriter({ file, synchronous: 'full' }));
  await sqliteWriter.ready();
  const sqlite = await drive(new Outbox(db, sqliteWriter), sqliteWriter, devices, durationMs);
  await sqliteWriter.close();
  db.close();
  ctx.log(`  SQLite (synchronous=FULL, writer thread): ${round(sqlite.rows_per_s)} rows/s, ${round(sqlite.rows_per_commit)} rows per commit`);

  let pg: Run | undefined;
  if (bin) {
    // fsync on: the same durability as SQLite's FULL, on the same disk.
    const server = await PostgresServer.start(bin, { durable: true });
    try {
      const pool = await openPostgres({ url: await server.database(), maxConnections: 4 });
      const writer = counted(postgresWriter(pool));
      pg = await drive(await PgOutbox.open(pool, writer), writer, devices, durationMs);
      await pool.end();
    } finally {
      await server.close();
    }
    ctx.log(`  PostgreSQL (fsync and synchronous_commit on): ${round(pg.rows_per_s)} rows/s, ${round(pg.rows_per_commit)} rows per commit`);
  }
  return {
    params: { devices, duration_s: durationMs / 1000, payload_bytes: 200, postgres: bin ? basename(dirname(bin)) : 'not installed' },
    figures: {
      sqlite_rows_per_s: round(sqlite.rows_per_s),
      sqlite_rows_per_commit: round(sqlite.rows_per_commit),
      pg_rows_per_s: pg ? round(pg.rows_per_s) : null,
      pg_rows_per_commit: pg ? round(pg.rows_per_commit) : null,
      pg_vs_sqlite_ratio: pg ? round(pg.rows_per_s / sqlite.rows_per_s) : null,
    },
    intro: [
      'The outbox alone, no network in front: devices append at once, closed loop (the next message after the last one\'s acknowledgement, i.e. its commit), first on SQLite, then on PostgreSQL, same load, same run.',
    ],
    notes: [
      'Group commit on PostgreSQL is the same outbox code as on SQLite (storage/outbox.ts GroupCommitOutbox): what arrives while one commit is on its way shares the next transaction, on one pooled connection.',
      'PostgreSQL is a throw-away server started from Debian\'s binaries with fsync on, on the same disk as the SQLite file.',
    ],
  };
}

export const scenario: Scenario = {
  title: 'durable group commit of the outbox: SQLite against PostgreSQL',
  goals: [{ text: 'PostgreSQL makes at least 0.7 as many rows durable per second as SQLite', figure: 'pg_vs_sqlite_ratio', op: '>=', target: 0.7 }],
  run: outboxCommit,
};
