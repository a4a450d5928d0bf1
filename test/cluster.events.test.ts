// Two gateway processes on one PostgreSQL database, the sandbox as IoT Core: lifecycle events recorded on
// either node are published once each, by the one node holding the events' lease, as the one gateway
// thing; when that node is killed the other takes the lease and publishes what waits and what follows.
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse, stringify } from 'yaml';
import { ClusterNode } from '../storage/postgres/cluster.ts';
import { openPostgres, type Pool } from '../storage/postgres/connect.ts';
import { Observer, type Received } from './helpers/mqtt.ts';
import { findPostgres, PostgresServer } from './helpers/postgres.ts';
import { gatewayConfig, startGatewayProcess, startSandboxProcess, tempDir, type GatewayProcess, type SandboxProcess } from './helpers/processes.ts';

const bin = findPostgres();
const GATEWAY = 'edge-cluster';
const IMEI = '490154203237518';

interface Event {
  kind: string;
  gateway: string;
  eventId: string;
  sim: { imsi: string };
}

const eventsOf = (msgs: Received[], kind: string): Event[] =>
  msgs.filter((m) => m.topic === `simbridge/${GATEWAY}/events/${kind}`).map((m) => JSON.parse(m.payload.toString()) as Event);

function post(node: GatewayProcess, imsi: string): Promise<number> {
  return fetch(`http://127.0.0.1:${node.httpPort}/topics/meter?qos=1`, { method: 'POST', headers: { 'x-imsi': imsi, 'x-imei': IMEI }, body: 'm', signal: AbortSignal.timeout(10_000) }).then(
    (r) => r.status,
  );
}

describe.skipIf(!bin)('lifecycle events from two nodes on one PostgreSQL database', () => {
  const dir = tempDir('cluster-events');
  let server: PostgresServer;
  let sandbox: SandboxProcess;
  let observer: Observer;
  let db: Pool;
  const nodes = new Map<string, GatewayProcess>();

  /** A node of the cluster (as startClusterNode), events on under one gateway name shared by both. */
  const start = async (name: string, url: string) => {
    const nodeDir = join(dir, name);
    mkdirSync(nodeDir, { recursive: true });
    const { file } = await gatewayConfig(nodeDir, sandbox, { storage: { url }, cluster: { heartbeatMs: 500, leaseMs: 2000 } });
    writeFileSync(file, stringify({ ...parse(readFileSync(file, 'utf8')), events: { enabled: true, gateway: GATEWAY }, privacy: { maskIdentifiers: false } }));
    nodes.set(name, await startGatewayProcess(file, { env: { SIMBRIDGE_NODE_ID: name } }));
  };
  const holder = async () => (await db.query<{ owner: string }>("SELECT owner FROM sim_leases WHERE imsi = '@gateway'")).rows[0]?.owner;
  const sandboxState = async () =>
    (await (await fetch(`${sandbox.controlEndpoint}/_sandbox/state`)).json()) as { takeovers: number; connections: Array<{ clientId: string }> };

  beforeAll(async () => {
    server = await PostgresServer.start(bin!);
    sandbox = await startSandboxProcess(dir);
    observer = await Observer.connect(`mqtt://127.0.0.1:${sandbox.observerPort}`, 'simbridge/#');
    const url = await server.database();
    // Started together: both try to take the events' lease at once, and one gets it.
    await Promise.all([start('node-a', url), start('node-b', url)]);
    db = await openPostgres({ url });
  }, 120_000);

  let stopWatching = () => undefined as unknown;
  afterAll(async () => {
    stopWatching();
    await db?.end();
    await observer?.close();
    for (const n of nodes.values()) await n.kill('SIGKILL');
    await sandbox?.process.kill();
    await server?.close();
  });

  it('publishes each event once, from the lease holder only, and from the other node once the holder is killed', async () => {
    // How many connections IoT Core saw at once for the gateway's client id, watched throughout.
    let most = 0;
    let watching = true;
    stopWatching = () => (watching = false);
    const watch = (async () => {
      while (watching) {
        const seen = await sandboxState().catch(() => undefined);
        if (seen) most = Math.max(most, seen.connections.filter((c) => c.clientId === `simbridge-${GATEWAY}`).length);
        await new Promise((r) => setTimeout(r, 25));
      }
    })();

    // First contacts through both nodes: each node records the events of what it decides.
    const [a, b] = [nodes.get('node-a')!, nodes.get('node-b')!];
    const before = ['001010000040101', '001010000040102', '001010000040103', '001010000040104'];
    expect(await Promise.all(before.map((imsi, i) => post(i % 2 ? b : a, imsi)))).toEqual([202, 202, 202, 202]);
    const arrived = (kind: string, sims: string[]) => (m: Received[]) => sims.every((s) => eventsOf(m, kind).some((ev) => ev.sim.imsi === s));
    await observer.waitUntil(arrived('first_contact', before), 30_000);
    await observer.waitUntil(arrived('certificate_vended', before), 30_000);
    // Acknowledged and deleted before the kill (an event the kill catches in flight is published again).
    const waiting = async () => Number((await db.query<{ n: number }>("SELECT count(*) AS n FROM outbox WHERE imsi = '@gateway'")).rows[0]!.n);
    for (const end = Date.now() + 10_000; (await waiting()) > 0; await new Promise((r) => setTimeout(r, 50))) if (Date.now() > end) throw new Error('events still queued');
    const first = await holder();
    expect(['node-a', 'node-b']).toContain(first);
    expect((await sandboxState()).takeovers).toBe(0);

    // The holder dies: the other node takes the lease after it (2 s) and publishes what it records meanwhile.
    await nodes.get(first!)!.kill('SIGKILL');
    const survivor = first === 'node-a' ? b : a;
    const after = ['001010000040105', '001010000040106'];
    for (const imsi of after) expect(await post(survivor, imsi)).toBe(202);
    await observer.waitUntil(arrived('first_contact', after), 20_000);
    await observer.waitUntil(arrived('certificate_vended', after), 20_000);
    // Anything published twice would have arrived by now.
    await new Promise((r) => setTimeout(r, 1500));
    watching = false;
    await watch;

    expect(await holder()).toBe(first === 'node-a' ? 'node-b' : 'node-a');
    const all = [...before, ...after].sort();
    for (const kind of ['first_contact', 'certificate_vended']) {
      expect([kind, eventsOf(observer.messages, kind).map((ev) => ev.sim.imsi).sort()]).toEqual([kind, all]);
    }
    const ids = observer.messages.filter((m) => m.topic.startsWith(`simbridge/${GATEWAY}/events/`)).map((m) => (JSON.parse(m.payload.toString()) as Event).eventId);
    expect(new Set(ids).size).toBe(ids.length);
    // One node at a time connected as the gateway's thing.
    expect(most).toBe(1);
    // Published events leave the outbox.
    expect(await waiting()).toBe(0);
  }, 90_000);

  it("the events' lease: never taken as a SIM, nor by a node not serving events; a restart with its holder's id lets it go first", async () => {
    const pool = await openPostgres({ url: await server.database() });
    const nodes: ClusterNode[] = [];
    const node = async (id: string) => {
      const n = new ClusterNode(pool, { nodeId: id, heartbeatMs: 100, leaseMs: 400, takeoverBatch: 100 });
      nodes.push(n);
      await n.join();
      return n;
    };
    const lease = async () => (await pool.query<{ owner: string; epoch: number }>("SELECT owner, epoch FROM sim_leases WHERE imsi = '@gateway'")).rows[0];
    const until = async (cond: () => boolean | Promise<boolean>) => {
      for (const end = Date.now() + 10_000; !(await cond()); await new Promise((r) => setTimeout(r, 20))) if (Date.now() > end) throw new Error('not in time');
    };
    try {
      // Events wait, no node holds them: a node joining takes SIMs with waiting rows, never this key.
      await pool.query("INSERT INTO outbox (imsi, device_topic, payload, qos, received_at, system) VALUES ('@gateway', 't', '\\x00', 1, 0, 1)");
      const plain = await node('plain');
      const simsGained: string[] = [];
      plain.onGained((g) => simsGained.push(...g.map((x) => x.imsi)));
      await new Promise((r) => setTimeout(r, 500)); // several heartbeats
      expect(await lease()).toBeUndefined();

      const serving = await node('serving');
      const heard: string[] = [];
      serving.onGained((g) => heard.push(...g.map((x) => x.imsi)));
      serving.serveStream('@gateway', { gained: () => heard.push('gained'), lost: () => heard.push('lost') });
      await until(() => serving.owns('@gateway'));
      expect(heard).toEqual(['gained']); // the SIMs' listeners never hear of it
      expect(serving.simsOwned).toBe(0);
      const first = (await lease())!;
      expect(first.owner).toBe('serving');

      // Its process dies; the next one with the same id lets the lease go at join, then takes it again.
      serving.stop();
      const again = await node('serving');
      expect(await lease()).toMatchObject({ owner: '', epoch: first.epoch + 1 });
      again.serveStream('@gateway', { gained: () => undefined, lost: () => undefined });
      await until(() => again.owns('@gateway'));
      expect(again.epochOf('@gateway')).toBe(first.epoch + 2);
      expect(simsGained).toEqual([]);
    } finally {
      for (const n of nodes) n.stop();
      await pool.end();
    }
  });
});
