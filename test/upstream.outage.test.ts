import type { MqttClient } from 'mqtt';
import mqtt from 'mqtt';
import { afterAll, describe, expect, it } from 'vitest';
import { findPeer } from './helpers/interop.ts';
import { startMosquitto } from './helpers/mosquitto.ts';
import { deviceOptions, Observer } from './helpers/mqtt.ts';
import { gatewayConfig, startGatewayProcess, startSandboxProcess, tempDir, type GatewayProcess, type SandboxProcess } from './helpers/processes.ts';
import { startTcpProxy } from './helpers/tcp-proxy.ts';

// How long the upstream stays down; the issue asks for 30 s.
const OUTAGE_MS = Number(process.env.SIMBRIDGE_TEST_OUTAGE_MS ?? 30_000);
const IMEI = '490154203237518';
const mosquitto = findPeer('mosquitto', 'mosquitto');

interface Stream {
  acked: Map<string, string[]>;
  stop(): Promise<void>;
}

/** Devices publishing numbered QoS 1 messages every interval until stopped; records what was acknowledged. */
async function stream(url: string, imsis: string[], intervalMs: number): Promise<Stream> {
  const acked = new Map<string, string[]>(imsis.map((i) => [i, []]));
  const clients: MqttClient[] = await Promise.all(imsis.map((imsi) => mqtt.connectAsync(url, deviceOptions(imsi, IMEI))));
  let n = 0;
  const pending: Promise<unknown>[] = [];
  const timer = setInterval(() => {
    n++;
    clients.forEach((c, i) => {
      const body = `${imsis[i]}#${String(n).padStart(6, '0')}`;
      pending.push(c.publishAsync('seq', body, { qos: 1 }).then(() => acked.get(imsis[i]!)!.push(body), () => undefined));
    });
  }, intervalMs);
  return {
    acked,
    async stop() {
      clearInterval(timer);
      await Promise.allSettled(pending);
      await Promise.all(clients.map((c) => c.endAsync()));
    },
  };
}

/**
 * Publishes the gateway reported as failed: each may have reached the broker with its PUBACK lost, so it
 * bounds the duplicates at-least-once delivery may cause (a slow, loaded machine times out more).
 */
async function failedPublishes(gateway: GatewayProcess): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${gateway.adminPort}/metrics`)).text();
  return [...text.matchAll(/simbridge_upstream_publishes_total\{[^}]*result="failed"[^}]*\} (\d+)/g)].reduce((n, m) => n + Number(m[1]), 0);
}

/** Every acknowledged message arrived, each device's first arrivals are in order, duplicates within the at-least-once window. */
function checkDelivery(observer: Observer, s: Stream, maxDuplicates: number) {
  let duplicates = 0;
  for (const [imsi, bodies] of s.acked) {
    const seen = observer.messages.map((m) => m.payload.toString()).filter((b) => b.startsWith(`${imsi}#`));
    const firsts = [...new Set(seen)];
    expect(bodies.filter((b) => !firsts.includes(b)), `lost for ${imsi}`).toEqual([]);
    expect(firsts, `order for ${imsi}`).toEqual([...firsts].sort());
    duplicates += seen.length - firsts.length;
  }
  expect(duplicates).toBeLessThanOrEqual(maxDuplicates);
}

const allSeen = (s: Stream) => (msgs: { payload: Buffer }[]) => {
  const seen = new Set(msgs.map((m) => m.payload.toString()));
  return [...s.acked.values()].every((bodies) => bodies.every((b) => seen.has(b)));
};

interface Upstream {
  /** Port the gateway's upstream sessions go to. */
  port: number;
  /** Where the test watches what reaches the upstream, and the filter to watch. */
  observerUrl(): string;
  filter: string;
  stop(): Promise<unknown>;
  start(): Promise<unknown>;
}

/**
 * Devices stream through the gateway; the upstream broker is stopped for OUTAGE_MS and started again
 * behind a relay that reopens only once the test's observer is back, so nothing delivered goes unseen.
 */
async function outageDrill(dir: string, sandbox: SandboxProcess, upstream: Upstream, imsis: string[], cleanups: Array<() => Promise<unknown>>) {
  const proxy = await startTcpProxy(upstream.port);
  // The backlog drains paced well under IoT Core's 100 publishes/s per connection: drained at the edge of
  // it, an upstream that falls behind for a moment and catches up (a busy test machine) drops a publish
  // without PUBACK and the order breaks there (docs/fidelity.md), which is not what this test is about.
  const gateway = await startGatewayProcess((await gatewayConfig(dir, sandbox, { upstreamPort: proxy.port, upstream: { publishesPerSecond: 60 } })).file);
  cleanups.push(() => gateway.kill(), () => proxy.close());
  let observer = await Observer.connect(upstream.observerUrl(), upstream.filter);
  const devices = await stream(`mqtt://127.0.0.1:${gateway.mqttPort}`, imsis, 50);
  await new Promise((r) => setTimeout(r, 2000));

  proxy.setOpen(false);
  await upstream.stop();
  const before = observer.messages;
  await observer.close();
  await new Promise((r) => setTimeout(r, OUTAGE_MS));
  await upstream.start();
  observer = await Observer.connect(upstream.observerUrl(), upstream.filter);
  observer.messages.push(...before);
  proxy.setOpen(true);

  await new Promise((r) => setTimeout(r, 2000));
  await devices.stop();
  await observer.waitUntil(allSeen(devices), 60_000);
  checkDelivery(observer, devices, await failedPublishes(gateway));
  await observer.close();
}

describe('the upstream stops for a while mid-stream', () => {
  const cleanups: Array<() => Promise<unknown>> = [];
  afterAll(async () => {
    for (const c of cleanups.reverse()) await c().catch(() => undefined);
  });

  it(`sandbox IoT Core down for ${OUTAGE_MS / 1000} s: every message delivered, in order per device`, async () => {
    const dir = tempDir('outage-sandbox');
    let sandbox = await startSandboxProcess(dir);
    const ports = { controlPort: Number(new URL(sandbox.controlEndpoint).port), dataPort: sandbox.dataPort, observerPort: sandbox.observerPort };
    cleanups.push(() => sandbox.process.kill());
    const upstream: Upstream = {
      port: sandbox.dataPort,
      observerUrl: () => `mqtt://127.0.0.1:${sandbox.observerPort}`,
      filter: '#',
      stop: () => sandbox.process.kill('SIGTERM'),
      start: async () => (sandbox = await startSandboxProcess(dir, ports)),
    };
    await outageDrill(dir, sandbox, upstream, ['001010000000501', '001010000000502'], cleanups);
  }, OUTAGE_MS + 120_000);

  it.skipIf(!mosquitto)(`real Mosquitto down for ${OUTAGE_MS / 1000} s: every message delivered, in order per device`, async () => {
    const dir = tempDir('outage-mosquitto');
    const sandbox = await startSandboxProcess(dir);
    const broker = await startMosquitto(mosquitto!, dir, { caFile: sandbox.caFile, certFile: sandbox.serverCertFile, keyFile: sandbox.serverKeyFile });
    cleanups.push(() => sandbox.process.kill(), () => broker.stop());
    const upstream: Upstream = {
      port: broker.tlsPort,
      observerUrl: () => `mqtt://127.0.0.1:${broker.plainPort}`,
      filter: 'devices/#',
      stop: () => broker.stop(),
      start: () => broker.start(),
    };
    await outageDrill(dir, sandbox, upstream, ['001010000000511', '001010000000512'], cleanups);
  }, OUTAGE_MS + 120_000);
});
