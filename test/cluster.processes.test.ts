// Three gateway processes on one PostgreSQL database, the sandbox as IoT Core: accounting received by one
// node identifies devices on another and ends their connections there; devices spread over the nodes
// arrive once and in order; a node killed under load loses nothing it acknowledged.
import { spawn } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCli } from './helpers/cli.ts';
import { connectCloudApp } from './helpers/cloud.ts';
import { findPeer } from './helpers/interop.ts';
import { closed, connectFrom, Observer } from './helpers/mqtt.ts';
import { findPostgres, PostgresServer } from './helpers/postgres.ts';
import { startClusterNode, startSandboxProcess, tempDir, type GatewayProcess, type SandboxProcess } from './helpers/processes.ts';

const bin = findPostgres();
const radclient = findPeer('radclient', 'freeradius-utils');
const SECRET = 'pgw-secret';
const IMEI = '490154203237518';

function post(port: number, imsi: string, body: string): Promise<number> {
  return fetch(`http://127.0.0.1:${port}/topics/seq?qos=1`, { method: 'POST', headers: { 'x-imsi': imsi, 'x-imei': IMEI }, body, signal: AbortSignal.timeout(5000) }).then(
    (r) => r.status,
    () => 0,
  );
}

describe.skipIf(!bin || !radclient)('three gateway nodes on one PostgreSQL database', () => {
  const dir = tempDir('cluster');
  let server: PostgresServer;
  let sandbox: SandboxProcess;
  let observer: Observer;
  const nodes: GatewayProcess[] = [];
  const configFiles: string[] = [];

  const start = async (name: string, url: string) => {
    const { node, configFile } = await startClusterNode(dir, name, sandbox, url, {
      listeners: { mqtt: { identity: 'radius' } },
      radius: { enabled: true, clients: [{ address: '127.0.0.1', secret: SECRET }] },
    });
    configFiles.push(configFile);
    return node;
  };

  beforeAll(async () => {
    server = await PostgresServer.start(bin!);
    sandbox = await startSandboxProcess(dir);
    observer = await Observer.connect(`mqtt://127.0.0.1:${sandbox.observerPort}`, 'devices/#');
    const url = await server.database();
    for (const name of ['node-a', 'node-b', 'node-c']) nodes.push(await start(name, url));
  }, 240_000);

  afterAll(async () => {
    await observer?.close();
    for (const n of nodes) await n.kill('SIGKILL');
    await sandbox?.process.kill();
    await server?.close();
  });

  function accounting(port: number, lines: string[]): Promise<{ code: number | null; out: string }> {
    return new Promise((resolve, reject) => {
      const child = spawn(radclient!, ['-x', '-r', '2', '-t', '2', `127.0.0.1:${port}`, 'acct', SECRET], { stdio: ['pipe', 'pipe', 'pipe'] });
      let out = '';
      child.stdout.on('data', (d) => (out += d));
      child.stderr.on('data', (d) => (out += d));
      child.on('error', reject);
      child.on('close', (code) => resolve({ code, out }));
      child.stdin.end(lines.join('\n') + '\n');
    });
  }

  /** IoT Core's side (the sandbox): its connections, and how often a client id was taken over. */
  const state = async () =>
    (await (await fetch(`${sandbox.controlEndpoint}/_sandbox/state`)).json()) as { takeovers: number; connections: Array<{ clientId: string; subscriptions: string[] }> };

  const record = (status: string, ip: string, session: string, imsi: string) => [
    `Acct-Status-Type = ${status}`,
    `Framed-IP-Address = ${ip}`,
    `Acct-Session-Id = "${session}"`,
    'NAS-IP-Address = 127.0.0.1',
    `3GPP-IMSI = "${imsi}"`,
    '3GPP-RAT-Type = 8',
  ];

  it('a RADIUS Start on node A identifies the device on node B within a second; a Stop on A disconnects it there', async () => {
    const [a, b] = nodes;
    const ip = '127.0.0.7';
    const imsi = '001010000017001';
    const started = await accounting(a!.radiusPort!, record('Start', ip, 'acct-x', imsi));
    expect(started.code, started.out).toBe(0);
    const acked = Date.now();
    let conn: Awaited<ReturnType<typeof connectFrom>> | undefined;
    while (Date.now() - acked < 1000) {
      conn = await connectFrom(ip, b!.mqttPort, { clientId: 'meter' });
      if (conn.code === 0) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    expect(conn?.code).toBe(0);
    expect(Date.now() - acked).toBeLessThan(1000);
    await conn!.client.publishAsync('meter', 'identified-on-b', { qos: 1 });
    await observer.waitUntil((m) => m.some((x) => x.payload.toString() === 'identified-on-b'));
    expect(observer.messages.find((x) => x.payload.toString() === 'identified-on-b')!.topic).toBe(`devices/sim-${imsi}/meter`);

    const stopped = await accounting(a!.radiusPort!, record('Stop', ip, 'acct-x', imsi));
    expect(stopped.code, stopped.out).toBe(0);
    await closed(conn!.client, 5000);
  });

  interface View {
    storage: string;
    node: string;
    nodes: Array<{ nodeId: string; alive: boolean; heartbeatAgeMs: number; simsOwned: number; upstreamSessions: number | null; outboxRows: number }>;
  }
  let operator: string;
  const cluster = async (at: GatewayProcess): Promise<View> => {
    const res = await fetch(`http://127.0.0.1:${at.adminPort}/v1/cluster`, { headers: { authorization: `Bearer ${operator}` } });
    expect(res.status).toBe(200);
    return (await res.json()) as View;
  };

  it('GET /v1/cluster and `simbridge cluster` show every node, from any node, to an operator', async () => {
    // A token made on one node's configuration (the shared database) opens every node's admin API.
    const made = await runCli(['tokens', 'create', '--role', 'operator', '--name', 'ops', '--json', '--config', configFiles[0]!]);
    expect(made.code, made.output).toBe(0);
    operator = (JSON.parse(made.output.slice(made.output.indexOf('{'))) as { token: string }).token;
    expect((await fetch(`http://127.0.0.1:${nodes[1]!.adminPort}/v1/cluster`)).status).toBe(401);
    const view = await cluster(nodes[1]!);
    expect(view.storage).toBe('postgres');
    expect(view.node).toBe('node-b');
    expect(view.nodes.map((n) => [n.nodeId, n.alive])).toEqual([
      ['node-a', true],
      ['node-b', true],
      ['node-c', true],
    ]);
    for (const n of view.nodes) expect(n.heartbeatAgeMs).toBeLessThan(2000);
    const human = await runCli(['cluster', '--url', `http://127.0.0.1:${nodes[2]!.adminPort}`, '--token', operator]);
    expect(human.code, human.output).toBe(0);
    expect(human.output).toMatch(/nodes:\s+3 \(3 alive\)/);
    expect(human.output).toMatch(/^node-a\s+alive\s/m);
  });

  it('devices spread over the nodes: every message arrives once, in order per device', async () => {
    const devices = Array.from({ length: 6 }, (_, i) => `0010100000172${String(i).padStart(2, '0')}`);
    const per = 15;
    await Promise.all(
      devices.map(async (imsi, d) => {
        for (let i = 1; i <= per; i++) expect(await post(nodes[d % 3]!.httpPort, imsi, `${imsi}#${i}`)).toBe(202);
      }),
    );
    const of = (imsi: string) => observer.messages.map((m) => m.payload.toString()).filter((p) => p.startsWith(`${imsi}#`));
    await observer.waitUntil(() => devices.every((imsi) => of(imsi).length >= per), 60_000);
    await new Promise((r) => setTimeout(r, 500));
    for (const imsi of devices) expect(of(imsi)).toEqual(Array.from({ length: per }, (_, i) => `${imsi}#${i + 1}`));
  }, 120_000);

  it('a device moving to another node takes its SIM along: the old node closes its session first, IoT Core never sees two', async () => {
    const [a, b] = nodes;
    const ip = '127.0.0.8';
    const imsi = '001010000017401';
    const thing = `sim-${imsi}`;
    expect((await accounting(a!.radiusPort!, record('Start', ip, 'acct-move', imsi))).code).toBe(0);
    const takeoversBefore = (await state()).takeovers;
    let most = 0;
    let watching = true;
    const watch = (async () => {
      while (watching) {
        most = Math.max(most, (await state()).connections.filter((c) => c.clientId === thing).length);
        await new Promise((r) => setTimeout(r, 25));
      }
    })();
    try {
      // On node A: a subscription holds the thing's session there.
      let conn = await connectFrom(ip, a!.mqttPort, { clientId: 'mover' });
      expect(conn.code).toBe(0);
      await conn.client.subscribeAsync('commands/#', { qos: 1 });
      await conn.client.publishAsync('meter', 'moved-1', { qos: 1 });
      await observer.waitUntil((m) => m.some((x) => x.payload.toString() === 'moved-1'));
      await conn.client.endAsync();
      // The device comes back through node B (the balancer chose another node) and subscribes again.
      conn = await connectFrom(ip, b!.mqttPort, { clientId: 'mover' });
      expect(conn.code).toBe(0);
      await conn.client.subscribeAsync('commands/#', { qos: 1 });
      await conn.client.publishAsync('meter', 'moved-2', { qos: 1 });
      await observer.waitUntil((m) => m.some((x) => x.payload.toString() === 'moved-2'));
      await conn.client.endAsync();
    } finally {
      watching = false;
      await watch;
    }
    expect(most).toBe(1);
    expect((await state()).takeovers).toBe(takeoversBefore);
  });

  it('SIGKILL of a node under load: nothing acknowledged is lost, its SIMs deliver from another node, no client id connected twice', async () => {
    const devices = Array.from({ length: 6 }, (_, i) => `0010100000173${String(i).padStart(2, '0')}`);
    const acked = new Map<string, number[]>(devices.map((d) => [d, []]));
    const victim = nodes[2]!;
    let running = true;
    // Each device talks to one node; when that node is gone, to the next one (as a load balancer would).
    const load = devices.map(async (imsi, d) => {
      let node = d % 3;
      for (let i = 1; running; i++) {
        let status = await post(nodes[node]!.httpPort, imsi, `${imsi}#${i}`);
        while (status !== 202 && running) {
          node = (node + 1) % 2;
          status = await post(nodes[node]!.httpPort, imsi, `${imsi}#${i}`);
        }
        if (status === 202) acked.get(imsi)!.push(i);
      }
    });
    await new Promise((r) => setTimeout(r, 2000));
    const victimDevices = devices.filter((_, d) => d % 3 === 2);
    const of = (imsi: string) => observer.messages.map((m) => m.payload.toString()).filter((p) => p.startsWith(`${imsi}#`));
    await victim.kill('SIGKILL');
    const killedAt = Date.now();
    // Failover: from the kill until a message the victim's devices sent after it arrives upstream.
    const before = new Map(victimDevices.map((imsi) => [imsi, acked.get(imsi)!.length]));
    let failoverMs: number | undefined;
    const watch = setInterval(() => {
      const moved = victimDevices.some((imsi) => acked.get(imsi)!.slice(before.get(imsi)!).some((i) => of(imsi).includes(`${imsi}#${i}`)));
      if (moved && failoverMs === undefined) failoverMs = Date.now() - killedAt;
    }, 50);
    await new Promise((r) => setTimeout(r, 8000));
    running = false;
    await Promise.all(load);
    // The others see the victim dead, holding nothing any more (asked now: a node dead for ten leases and
    // holding nothing is forgotten, and waiting for delivery below may take that long on a busy machine).
    const view = await cluster(nodes[0]!);
    expect(view.nodes.find((n) => n.nodeId === 'node-c')).toMatchObject({ alive: false, simsOwned: 0 });

    const lost = () => devices.flatMap((imsi) => acked.get(imsi)!.filter((i) => !of(imsi).includes(`${imsi}#${i}`)).map((i) => `${imsi}#${i}`));
    await observer.waitUntil(() => lost().length === 0, 60_000).catch(() => undefined);
    expect(lost()).toEqual([]);
    clearInterval(watch);
    // The victim's devices were acknowledged by the others after it died, and delivered within seconds.
    for (const imsi of victimDevices) expect(acked.get(imsi)!.length).toBeGreaterThan(before.get(imsi)!);
    expect(failoverMs).toBeDefined();
    expect(failoverMs!).toBeLessThan(10_000);
    for (const imsi of devices) {
      // Order: the first time each message was seen follows the order it was sent in.
      const firsts = [...new Set(of(imsi))].map((p) => Number(p.split('#')[1]));
      expect(firsts).toEqual([...firsts].sort((x, y) => x - y));
    }
    const { takeovers } = await state();
    expect(takeovers).toBe(0);
    console.log(`cluster kill: failover ${failoverMs! / 1000} s; acknowledged ${[...acked.values()].flat().length}, lost 0, takeovers ${takeovers}`);
  }, 180_000);

  it('a sleeping device\'s persistent session moves with its SIM when its node dies: commands sent meanwhile wait for it on another node', async () => {
    const [a, b] = nodes;
    const ip = '127.0.0.9';
    const imsi = '001010000017501';
    const thing = `sim-${imsi}`;
    expect((await accounting(a!.radiusPort!, record('Start', ip, 'acct-sleep', imsi))).code).toBe(0);
    const device = { clientId: 'sleeper', clean: false };
    let conn = await connectFrom(ip, b!.mqttPort, device);
    for (let i = 0; conn.code !== 0 && i < 20; i++) {
      await new Promise((r) => setTimeout(r, 50));
      conn = await connectFrom(ip, b!.mqttPort, device);
    }
    expect(conn.code).toBe(0);
    await conn.client.subscribeAsync('commands/#', { qos: 1 });
    await conn.client.endAsync();
    await b!.kill('SIGKILL');

    // While the device sleeps, its SIM moves to a live node, which subscribes the stored session upstream.
    // Wait for IoT Core to see the dead node's connection go, then for the take-up's subscription: only
    // commands sent from then on can be kept (commands sent before reach no session, as in IoT Core).
    const subscribed = async () => (await state()).connections.some((c) => c.clientId === thing && c.subscriptions.some((f) => f.includes('/commands/')));
    const deadline = Date.now() + 30_000;
    while ((await state()).connections.some((c) => c.clientId === thing) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    while (!(await subscribed()) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    expect(await subscribed()).toBe(true);
    const cloud = await connectCloudApp(sandbox);
    const sent: string[] = [];
    try {
      for (let i = 0; i < 3; i++) {
        sent.push(`cmd-${i}`);
        await cloud.publishAsync(`devices/${thing}/commands/wake`, sent.at(-1)!, { qos: 1 });
      }
    } finally {
      await cloud.endAsync();
    }
    const received: string[] = [];
    const back = await connectFrom(ip, a!.mqttPort, device, (_t, payload) => received.push(payload.toString()));
    expect(back.code).toBe(0);
    const until = Date.now() + 10_000;
    while (received.length < sent.length && Date.now() < until) await new Promise((r) => setTimeout(r, 100));
    await back.client.endAsync();
    // Kept while it slept, in order.
    expect(received).toEqual(sent);
  }, 60_000);
});
