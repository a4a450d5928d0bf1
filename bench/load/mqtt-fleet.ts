// A load-generator process for the sessions scenario (bench/scenarios/sessions.ts): thousands of mostly idle MQTT 3.1.1 devices (mqtt.js),
// each bound to its own loopback source address, driven over IPC ({id, cmd} → {id, ok, result}, the
// protocol of bench/lib/load.ts#Worker). A chosen range of them publishes one QoS 1 message on request.
// Every operation is bounded in count and time; the process exits when the orchestrator goes away.
import net from 'node:net';
import { MqttClient } from 'mqtt';
import { nowMs, payload, type DeviceSpec } from '../lib/devices.ts';
import { newHist, record, type Hist } from '../lib/hist.ts';
import { serveCommands } from '../lib/serve.ts';

export interface FleetTarget {
  host: string;
  port: number;
}

export interface FleetConnectCmd {
  cmd: 'connect';
  target: FleetTarget;
  devices: DeviceSpec[];
  /** CONNECTs outstanding at once from this process. */
  concurrency: number;
  keepaliveS: number;
  timeoutMs: number;
}

export interface FleetConnectResult {
  connected: number;
  failed: number;
  errorKinds: Record<string, number>;
  ms: number;
}

export interface FleetPublishCmd {
  cmd: 'publish';
  tag: string;
  /** Devices whose spec idx is in [fromIdx, toIdx) publish one message each. */
  fromIdx: number;
  toIdx: number;
  seq: number;
  payloadBytes: number;
  timeoutMs: number;
}

export interface FleetPublishResult {
  sent: number;
  acked: number;
  errors: number;
  errorKinds: Record<string, number>;
  startedAt: number;
  lastAckAt: number;
  ackHist: Hist;
}

type Cmd = FleetConnectCmd | FleetPublishCmd | { cmd: 'status' } | { cmd: 'close' };

const clients = new Map<number, { spec: DeviceSpec; client: MqttClient }>();
let closesAfterConnect = 0;
let closing = false;

function connectOne(target: FleetTarget, spec: DeviceSpec, keepaliveS: number, timeoutMs: number): Promise<void> {
  return new Promise((resolve, reject) => {
    let settled = false;
    const client = new MqttClient(() => net.createConnection({ host: target.host, port: target.port, localAddress: spec.localAddress }), {
      username: spec.imsi,
      clientId: spec.imei,
      protocolVersion: 4,
      clean: true,
      keepalive: keepaliveS,
      reconnectPeriod: 0,
      connectTimeout: timeoutMs,
      resubscribe: false,
    });
    const fail = (why: string) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      client.end(true);
      reject(new Error(why));
    };
    const timer = setTimeout(() => fail('no CONNACK in time'), timeoutMs);
    client.once('connect', () => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      clients.set(spec.idx, { spec, client });
      client.on('close', () => {
        if (!closing) closesAfterConnect++;
      });
      resolve();
    });
    client.on('error', (err) => fail(`error ${(err as NodeJS.ErrnoException).code ?? err.message}`));
    client.once('close', () => fail('closed before CONNACK'));
  });
}

async function connect(c: FleetConnectCmd): Promise<FleetConnectResult> {
  const t0 = Date.now();
  const deadline = t0 + c.timeoutMs;
  let next = 0;
  let failed = 0;
  const errorKinds: Record<string, number> = {};
  const runner = async () => {
    while (next < c.devices.length && Date.now() < deadline) {
      const spec = c.devices[next++];
      try {
        await connectOne(c.target, spec, c.keepaliveS, Math.min(30_000, Math.max(1000, deadline - Date.now())));
      } catch (err) {
        failed++;
        const k = (err as Error).message;
        errorKinds[k] = (errorKinds[k] ?? 0) + 1;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, c.concurrency) }, runner));
  return { connected: clients.size, failed: failed + (c.devices.length - next), errorKinds, ms: Date.now() - t0 };
}

async function publish(c: FleetPublishCmd): Promise<FleetPublishResult> {
  const r: FleetPublishResult = { sent: 0, acked: 0, errors: 0, errorKinds: {}, startedAt: nowMs(), lastAckAt: 0, ackHist: newHist() };
  const chosen = [...clients.values()].filter((d) => d.spec.idx >= c.fromIdx && d.spec.idx < c.toIdx);
  await new Promise<void>((resolve) => {
    let outstanding = chosen.length;
    if (outstanding === 0) return resolve();
    const timer = setTimeout(resolve, c.timeoutMs);
    for (const d of chosen) {
      const sentAt = nowMs();
      r.sent++;
      d.client.publish(d.spec.topic, payload(c.tag, d.spec.idx, c.seq, c.payloadBytes), { qos: 1 }, (err) => {
        if (err) {
          r.errors++;
          const k = `mqtt ${err.message}`;
          r.errorKinds[k] = (r.errorKinds[k] ?? 0) + 1;
        } else {
          r.acked++;
          r.lastAckAt = nowMs();
          record(r.ackHist, r.lastAckAt - sentAt);
        }
        if (--outstanding === 0) {
          clearTimeout(timer);
          resolve();
        }
      });
    }
  });
  return r;
}

async function handle(msg: Cmd): Promise<unknown> {
  switch (msg.cmd) {
    case 'connect':
      return connect(msg);
    case 'publish':
      return publish(msg);
    case 'status': {
      let connected = 0;
      for (const d of clients.values()) if (d.client.connected) connected++;
      return { connected, closesAfterConnect };
    }
    case 'close':
      closing = true;
      for (const d of clients.values()) d.client.end(true);
      setTimeout(() => process.exit(0), 200);
      return {};
  }
}

serveCommands<Cmd>(handle);
