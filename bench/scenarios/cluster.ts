import { join } from 'node:path';
import { findPostgres, PostgresServer } from '../../test/helpers/postgres.ts';
import { startGatewayProcess, writeYaml, type GatewayProcess } from '../../test/helpers/processes.ts';
import { knob, type Ctx, type Scenario } from '../lib/context.ts';
import { devices, SIMBRIDGE_TOPIC } from '../lib/devices.ts';
import { LoadPool } from '../lib/load.ts';
import { measuredRun, newTag, warmUp, type RunFigures } from '../lib/measure.ts';
import type { Goal, ScenarioResult } from '../lib/report.ts';
import { gatewaySource, simbridgeSpawn, Stack } from '../lib/stack.ts';
import { round } from '../lib/stats.ts';

const PAYLOAD_BYTES = 200;
const GOALS: Goal[] = [
  { text: 'one node on PostgreSQL makes ≥ 0.7 of one node on SQLite (same load, same run)', figure: 'pg_vs_sqlite_ratio', op: '>=', target: 0.7 },
  { text: '0 acknowledged messages lost when a node is killed', figure: 'acked_lost_on_node_kill', op: '<=', target: 0 },
  { text: 'a killed node\'s SIMs deliver again within 10 s', figure: 'failover_s', op: '<=', target: 10 },
  { text: 'no two live upstream connections for one client id', figure: 'duplicate_client_sessions', op: '<=', target: 0 },
];

/**
 * Several nodes on one PostgreSQL database (docs/cluster.md). Same HTTP load, closed loop: one node on
 * SQLite, then one node on PostgreSQL (fsync on, like `storage.synchronous: full`), then three nodes on
 * PostgreSQL, each with a third of a fresh fleet; then one of the three killed (SIGKILL) mid-run.
 */
export const scenario: Scenario = {
  title: 'Three nodes on one PostgreSQL database: throughput against SQLite, and a node killed under load',
  goals: GOALS,
  async run(ctx: Ctx): Promise<ScenarioResult> {
    const bin = findPostgres();
    if (!bin) throw new Error('PostgreSQL server programs not found (Debian package postgresql)');
    const n = knob('DEVICES', 300, 60, ctx);
    const window = knob('WINDOW', 4, 4, ctx);
    const runMs = knob('DURATION_S', 8, 4, ctx) * 1000;
    const leaseMs = knob('LEASE_MS', 3000, 3000, ctx);
    const stack = await Stack.start();
    const server = await PostgresServer.start(bin, { durable: true });
    const extra: GatewayProcess[] = [];
    const run = (load: LoadPool, pid?: number) => measuredRun(stack.collector, load, { tag: newTag('c'), mode: 'closed', window, durationMs: runMs, payloadBytes: PAYLOAD_BYTES, pid });
    const single = async (series: number, override: Record<string, unknown>): Promise<RunFigures> => {
      const gw = await stack.startGateway({ fresh: true, override });
      const load = await LoadPool.start({ kind: 'http', host: '127.0.0.1', port: gw.httpPort }, devices(n, series, SIMBRIDGE_TOPIC), { workers: 2 });
      try {
        await warmUp(stack.collector, load, n);
        return await run(load, gw.pid);
      } finally {
        await load.close();
      }
    };
    try {
      const url = await server.database();
      const cluster = { heartbeatMs: 500, leaseMs };
      const sqlite = await single(1, {});
      ctx.log(`one node, SQLite: ${round(sqlite.msgs_per_s)} msgs/s`);
      await stack.stopGateway();
      const pg = await single(2, { storage: { url }, cluster });
      ctx.log(`one node, PostgreSQL: ${round(pg.msgs_per_s)} msgs/s`);

      // Two more nodes beside the PostgreSQL one, each with a data directory of its own.
      for (const name of ['b', 'c']) {
        const config = { ...stack.gatewayConfigUsed, dataDir: join(stack.dir, `gateway-${name}`), listeners: { mqtt: { host: '127.0.0.1', port: 0 }, http: { host: '127.0.0.1', port: 0 } } };
        const file = writeYaml(stack.dir, `gateway-${name}.yaml`, config);
        extra.push(await startGatewayProcess(file, simbridgeSpawn()));
      }
      const ports = [stack.gateway!.httpPort, ...extra.map((g) => g.httpPort)];
      const fleet = devices(n, 3, SIMBRIDGE_TOPIC);
      const thirds = [0, 1, 2].map((i) => fleet.filter((_, d) => d % 3 === i));
      const loads = await Promise.all(thirds.map((specs, i) => LoadPool.start({ kind: 'http', host: '127.0.0.1', port: ports[i]! }, specs, { workers: 1 })));
      let three: RunFigures[] = [];
      let killed: RunFigures | undefined;
      let failoverS: number | null = null;
      try {
        await Promise.all(loads.map((l, i) => warmUp(stack.collector, l, thirds[i]!.length)));
        three = await Promise.all(loads.map((l) => run(l)));
        ctx.log(`three nodes: ${round(three.reduce((a, r) => a + r.msgs_per_s, 0))} msgs/s`);

        // The third node killed two seconds into a run: what it acknowledged must come out of the others.
        const tag = newTag('k');
        const stats = stack.collector.stats(tag);
        const victimRun = loads[2]!.run({ tag, mode: 'closed', window, durationMs: runMs, perDeviceMax: 10_000_000, tailMs: 5000, payloadBytes: PAYLOAD_BYTES });
        const others = Promise.all(loads.slice(0, 2).map((l) => run(l)));
        await new Promise((r) => setTimeout(r, 2000));
        await extra[1]!.kill('SIGKILL');
        const killedAt = Date.now();
        const victim = await victimRun;
        await stack.collector.waitUntil(() => stats.unique >= victim.acked, { timeoutMs: 60_000, quietMs: 30_000 });
        if (stats.unique >= victim.acked) failoverS = (stats.lastAt - killedAt) / 1000;
        killed = { ...(await others)[0]!, acked: victim.acked, delivered: stats.unique, undelivered: Math.max(0, victim.acked - stats.unique) };
      } finally {
        await Promise.all(loads.map((l) => l.close()));
      }
      const threeRate = three.reduce((a, r) => a + r.msgs_per_s, 0);
      const takeovers = (stack.upstream.broker.process?.output.match(/already connected, closing old connection/g) ?? []).length;
      const figures = {
        nodes: 3,
        msgs_per_s: round(threeRate),
        msgs_per_s_one_node_postgres: round(pg.msgs_per_s),
        msgs_per_s_one_node_sqlite: round(sqlite.msgs_per_s),
        pg_vs_sqlite_ratio: sqlite.msgs_per_s ? Math.round((pg.msgs_per_s / sqlite.msgs_per_s) * 100) / 100 : null,
        ack_p99_ms_one_node_postgres: pg.ack_p99_ms,
        ack_p99_ms_one_node_sqlite: sqlite.ack_p99_ms,
        acked_lost_on_node_kill: killed ? killed.undelivered : null,
        failover_s: failoverS === null ? null : Math.round(Math.max(0, failoverS) * 100) / 100,
        duplicate_client_sessions: takeovers,
      };
      return {
        params: {
          quick: ctx.quick,
          gateway_commit: gatewaySource().commit,
          transport: 'HTTP/1.1 keep-alive POST /topics/telemetry?qos=1',
          devices: n,
          window_per_device: window,
          run_s: runMs / 1000,
          payload_bytes: PAYLOAD_BYTES,
          postgres: 'one local server, fsync on, synchronous_commit on',
          cluster_heartbeat_ms: cluster.heartbeatMs,
          cluster_lease_ms: leaseMs,
        },
        figures,
        goals: GOALS,
        notes: [
          'All nodes, PostgreSQL, the upstream Mosquitto, the load and the collector share this machine\'s cores: three nodes here measure the overhead of sharing, not the scaling of three machines.',
          '`failover_s`: from the SIGKILL until the last message the killed node had acknowledged arrived upstream (delivered by the node that took its SIMs after `cluster.leaseMs`).',
          '`acked_lost_on_node_kill`: messages the killed node acknowledged (HTTP 202) that never arrived upstream.',
          '`duplicate_client_sessions`: Mosquitto\'s "already connected, closing old connection" lines on the upstream broker (it logs them only with notice-level logging on).',
        ],
      };
    } finally {
      for (const g of extra) await g.kill('SIGTERM').catch(() => undefined);
      await stack.close();
      await server.close();
    }
  },
};
