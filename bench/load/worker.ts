// A load-generator process: simulated devices (mqtt.js or HTTP keep-alive) bound to their own loopback
// source addresses, driven over IPC by the bench orchestrator (bench/lib/load.ts). The devices either run
// closed-loop or paced load (`run`, through LoadPool), or stay mostly idle and publish one message each on
// request (`publish`, `status`: the sessions scenario). Every operation is bounded in time and in count.
import http from 'node:http';
import net from 'node:net';
import { MqttClient } from 'mqtt';
import { payload, nowMs, type DeviceSpec } from '../lib/devices.ts';
import { newHist, record, type Hist } from '../lib/hist.ts';
import { serveCommands } from '../lib/serve.ts';

export interface Target {
  kind: 'mqtt' | 'http';
  host: string;
  port: number;
}

export interface ConnectCmd {
  cmd: 'connect';
  target: Target;
  devices: DeviceSpec[];
  /** mqtt.js reconnectPeriod; 0 = no reconnect (a refused or failed CONNECT then counts as failed). */
  reconnectPeriodMs: number;
  /** TCP_NODELAY on device sockets; undefined = the client library's default (mqtt.js: off, node:http Agent: on). */
  noDelay?: boolean;
  /** CONNECTs outstanding at once from this process; default 20 (a burst of CONNECTs is not what most scenarios measure). */
  concurrency?: number;
  /** MQTT keep-alive; default 60 s. */
  keepaliveS?: number;
  /** Longest wait for one device's CONNACK; default 15 s. */
  deviceTimeoutMs?: number;
  /** Devices not connected by then count as failed; default 120 s. */
  timeoutMs?: number;
}

export interface ConnectResult {
  connected: number;
  failed: number;
  /** Failures by kind, e.g. {"no CONNACK in time": 3}. */
  errorKinds: Record<string, number>;
  ms: number;
}

/** One QoS 1 message from each connected device whose spec idx is in [fromIdx, toIdx) (the sessions scenario). */
export interface PublishCmd {
  cmd: 'publish';
  tag: string;
  fromIdx: number;
  toIdx: number;
  seq: number;
  payloadBytes: number;
  timeoutMs: number;
}

export interface PublishResult {
  sent: number;
  acked: number;
  errors: number;
  errorKinds: Record<string, number>;
  startedAt: number;
  lastAckAt: number;
  ackHist: Hist;
}

/** Devices with an open connection now, and connections that closed after their CONNACK (outside `close`). */
export interface StatusResult {
  connected: number;
  closesAfterConnect: number;
}

export interface RunCmd {
  cmd: 'run';
  tag: string;
  mode: 'closed' | 'paced';
  /** closed: messages outstanding per device; paced: cap per device (beyond it, a tick skips the device). */
  window: number;
  /** paced: messages per second from this worker, spread round-robin over its devices. */
  ratePerS?: number;
  durationMs: number;
  /** Most messages one device sends in this run. */
  perDeviceMax: number;
  /** After the duration, how long to wait for outstanding acks. */
  tailMs: number;
  payloadBytes: number;
  /** Return, per device, which sequence numbers were acknowledged. */
  returnAcked?: boolean;
}

export interface RunResult {
  sent: number;
  acked: number;
  errors: number;
  /** Failures by kind, e.g. {"http 503": 3, "http ECONNRESET": 1}. */
  errorKinds: Record<string, number>;
  outstanding: number;
  skipped: number;
  startedAt: number;
  sendingEndedAt: number;
  endedAt: number;
  lastAckAt: number;
  ackHist: Hist;
  /** Acknowledgements per 100 ms since startedAt. */
  ackTimeline: Uint32Array;
  /** Device idx → acknowledged seqs as a byte map (1 = acked). */
  acked_by_device?: Array<{ dev: number; bits: Uint8Array }>;
  reconnects: number;
}

type Cmd = ConnectCmd | RunCmd | PublishCmd | { cmd: 'stop' } | { cmd: 'progress' } | { cmd: 'status' } | { cmd: 'close' };

interface Device {
  spec: DeviceSpec;
  /** done(ok, why): why names a failure (an HTTP status, an error code) for the run's error tally. */
  send(body: Buffer, done: (ok: boolean, why?: string) => void): void;
  /** True while the device holds an open connection (HTTP devices connect per request: always true). */
  connected(): boolean;
  close(): Promise<void>;
}

let devices: Device[] = [];
let reconnects = 0;
let closesAfterConnect = 0;
let closing = false;
let current: RunState | undefined;

// ---- devices ---------------------------------------------------------------------------------------

/** Resolves at the device's first CONNACK; without reconnects, rejects on the first failure, naming it. */
function mqttDevice(target: Target, spec: DeviceSpec, o: { reconnectPeriod: number; keepaliveS: number; timeoutMs: number; noDelay?: boolean }): Promise<Device> {
  return new Promise((resolve, reject) => {
    const client = new MqttClient(
      () => net.createConnection({ host: target.host, port: target.port, localAddress: spec.localAddress, ...(o.noDelay === undefined ? {} : { noDelay: o.noDelay }) }),
      {
        username: spec.imsi,
        clientId: spec.imei,
        protocolVersion: 4,
        clean: true,
        keepalive: o.keepaliveS,
        reconnectPeriod: o.reconnectPeriod,
        connectTimeout: o.timeoutMs,
        resubscribe: false,
      },
    );
    let first = true;
    const fail = (why: string) => {
      if (!first) return;
      first = false;
      clearTimeout(timer);
      client.end(true);
      reject(new Error(why));
    };
    const timer = setTimeout(() => fail('no CONNACK in time'), o.timeoutMs);
    client.on('connect', () => {
      if (!first) return;
      first = false;
      clearTimeout(timer);
      client.on('close', () => {
        if (!closing) closesAfterConnect++;
      });
      resolve(device);
    });
    client.on('reconnect', () => reconnects++);
    client.on('error', (err) => {
      if (o.reconnectPeriod === 0) fail(`error ${(err as NodeJS.ErrnoException).code ?? err.message}`);
    });
    client.once('close', () => {
      if (o.reconnectPeriod === 0) fail('closed before CONNACK');
    });
    const device: Device = {
      spec,
      send(body, done) {
        client.publish(spec.topic, body, { qos: 1 }, (err) => done(!err, err ? `mqtt ${err.message}` : undefined));
      },
      connected: () => client.connected,
      close: () => client.endAsync(true).then(() => undefined, () => undefined),
    };
  });
}

/**
 * Connections one HTTP device holds at most: the largest window a closed-loop run keeps in flight.
 * Requests past it (an open-loop run a device cannot keep up with) wait in the device, as they would
 * in a modem, rather than opening more connections: at 64 a device, 1,000 devices overloaded at 7,500/s
 * opened tens of thousands of connections, overflowed the accept queue and reset each other's.
 */
const HTTP_SOCKETS_PER_DEVICE = 16;

function httpDevice(target: Target, spec: DeviceSpec, sockets: number, noDelay: boolean | undefined): Device {
  const agent = new http.Agent({ keepAlive: true, maxSockets: sockets, localAddress: spec.localAddress, ...(noDelay === undefined ? {} : { noDelay }) } as http.AgentOptions);
  const path = `/topics/${spec.topic}?qos=1`;
  return {
    spec,
    send(body, done) {
      const req = http.request(
        {
          host: target.host,
          port: target.port,
          method: 'POST',
          path,
          agent,
          headers: { 'x-imsi': spec.imsi, 'x-imei': spec.imei, 'content-type': 'application/octet-stream', 'content-length': body.length },
        },
        (res) => {
          res.resume();
          res.on('end', () => done(res.statusCode === 202, `http ${res.statusCode}`));
          res.on('error', (e) => done(false, `http response ${(e as NodeJS.ErrnoException).code ?? e.message}`));
        },
      );
      req.setTimeout(30_000, () => req.destroy(new Error('timeout')));
      req.on('error', (e) => done(false, `http ${(e as NodeJS.ErrnoException).code ?? e.message}`));
      req.end(body);
    },
    connected: () => true,
    async close() {
      agent.destroy();
    },
  };
}

/** Connects the devices, `concurrency` at a time, until all are tried or the time is up. */
async function connect(c: ConnectCmd): Promise<ConnectResult> {
  const t0 = Date.now();
  const deadline = t0 + (c.timeoutMs ?? 120_000);
  const out: Array<Device | undefined> = new Array(c.devices.length);
  const errorKinds: Record<string, number> = {};
  let next = 0;
  let failed = 0;
  const open = async (spec: DeviceSpec): Promise<Device> => {
    if (c.target.kind === 'http') return httpDevice(c.target, spec, HTTP_SOCKETS_PER_DEVICE, c.noDelay);
    const timeoutMs = Math.min(c.deviceTimeoutMs ?? 15_000, Math.max(1000, deadline - Date.now()));
    return mqttDevice(c.target, spec, { reconnectPeriod: c.reconnectPeriodMs, keepaliveS: c.keepaliveS ?? 60, timeoutMs, noDelay: c.noDelay });
  };
  const runner = async () => {
    while (next < c.devices.length && Date.now() < deadline) {
      const i = next++;
      try {
        out[i] = await open(c.devices[i]);
      } catch (err) {
        failed++;
        const k = (err as Error).message;
        errorKinds[k] = (errorKinds[k] ?? 0) + 1;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, c.concurrency ?? 20) }, runner));
  // Kept in spec order: runs deal messages by position.
  devices = out.filter((d): d is Device => d !== undefined);
  return { connected: devices.length, failed: failed + (c.devices.length - next), errorKinds, ms: Date.now() - t0 };
}

// ---- runs ------------------------------------------------------------------------------------------

class RunState {
  sent = 0;
  acked = 0;
  errors = 0;
  readonly errorKinds: Record<string, number> = {};
  skipped = 0;
  outstanding = 0;
  lastAckAt = 0;
  stopped = false;
  readonly startedAt = nowMs();
  sendingEndedAt = 0;
  readonly hist = newHist();
  readonly timeline: Uint32Array;
  readonly perDevice: Array<{ next: number; outstanding: number; bits: Uint8Array }>;

  constructor(readonly cmd: RunCmd) {
    this.timeline = new Uint32Array(Math.ceil((cmd.durationMs + cmd.tailMs) / 100) + 1);
    this.perDevice = devices.map(() => ({ next: 0, outstanding: 0, bits: new Uint8Array(cmd.returnAcked ? 1024 : 0) }));
  }

  get sending(): boolean {
    return !this.stopped && nowMs() - this.startedAt < this.cmd.durationMs;
  }

  /** Sends one message from device i; false when that device may not send now. */
  sendFrom(i: number, then?: (ok: boolean) => void): boolean {
    const d = this.perDevice[i];
    if (d.next >= this.cmd.perDeviceMax) return false;
    const seq = d.next++;
    const sentAt = nowMs();
    d.outstanding++;
    this.outstanding++;
    this.sent++;
    devices[i].send(payload(this.cmd.tag, devices[i].spec.idx, seq, this.cmd.payloadBytes), (ok, why) => {
      d.outstanding--;
      this.outstanding--;
      if (ok) {
        const now = nowMs();
        this.acked++;
        this.lastAckAt = now;
        record(this.hist, now - sentAt);
        const b = Math.floor((now - this.startedAt) / 100);
        if (b < this.timeline.length) this.timeline[b]++;
        if (this.cmd.returnAcked) {
          if (seq >= d.bits.length) {
            const grown = new Uint8Array(Math.max(seq + 1, d.bits.length * 2));
            grown.set(d.bits);
            d.bits = grown;
          }
          d.bits[seq] = 1;
        }
      } else {
        this.errors++;
        const k = why ?? 'unknown';
        this.errorKinds[k] = (this.errorKinds[k] ?? 0) + 1;
      }
      then?.(ok);
    });
    return true;
  }

  allDone(): boolean {
    return this.perDevice.every((d) => d.next >= this.cmd.perDeviceMax && d.outstanding === 0);
  }
}

async function run(cmd: RunCmd): Promise<RunResult> {
  const st = new RunState(cmd);
  current = st;
  await new Promise<void>((resolve) => {
    const finish = () => {
      clearInterval(watch);
      resolve();
    };
    // Ends when time is up or every device has sent its quota and seen its acks.
    const watch = setInterval(() => {
      if (!st.sending || st.allDone()) finish();
    }, 5);
    if (cmd.mode === 'closed') {
      devices.forEach((_, i) => {
        const send = (): void => {
          if (st.sending) st.sendFrom(i, onDone);
        };
        // After a failure (gateway down), do not spin: use the slot again a little later.
        const onDone = (ok: boolean): void => {
          if (ok) send();
          else setTimeout(send, 100);
        };
        for (let w = 0; w < cmd.window; w++) if (!st.sendFrom(i, onDone)) break;
      });
    } else {
      const rate = cmd.ratePerS ?? 1000;
      let rr = 0;
      const tick = () => {
        if (!st.sending) return;
        const due = Math.floor(((nowMs() - st.startedAt) * rate) / 1000) - st.sent - st.skipped;
        for (let k = 0; k < due; k++) {
          const i = rr++ % devices.length;
          if (st.perDevice[i].outstanding >= cmd.window || !st.sendFrom(i)) st.skipped++;
        }
        setTimeout(tick, 1);
      };
      tick();
    }
  });
  st.sendingEndedAt = nowMs();
  // Bounded wait for what is still outstanding.
  const tailEnd = Date.now() + cmd.tailMs;
  while (st.outstanding > 0 && Date.now() < tailEnd && !st.stopped) await new Promise((r) => setTimeout(r, 10));
  current = undefined;
  return {
    sent: st.sent,
    acked: st.acked,
    errors: st.errors,
    errorKinds: st.errorKinds,
    outstanding: st.outstanding,
    skipped: st.skipped,
    startedAt: st.startedAt,
    sendingEndedAt: st.sendingEndedAt,
    endedAt: nowMs(),
    lastAckAt: st.lastAckAt,
    ackHist: st.hist,
    ackTimeline: st.timeline,
    acked_by_device: cmd.returnAcked ? st.perDevice.map((d, i) => ({ dev: devices[i].spec.idx, bits: d.bits })) : undefined,
    reconnects,
  };
}

/** One message from each chosen device, answered when every ack is in or the time is up. */
async function publish(c: PublishCmd): Promise<PublishResult> {
  const r: PublishResult = { sent: 0, acked: 0, errors: 0, errorKinds: {}, startedAt: nowMs(), lastAckAt: 0, ackHist: newHist() };
  const chosen = devices.filter((d) => d.spec.idx >= c.fromIdx && d.spec.idx < c.toIdx);
  await new Promise<void>((resolve) => {
    let outstanding = chosen.length;
    if (outstanding === 0) return resolve();
    const timer = setTimeout(resolve, c.timeoutMs);
    for (const d of chosen) {
      const sentAt = nowMs();
      r.sent++;
      d.send(payload(c.tag, d.spec.idx, c.seq, c.payloadBytes), (ok, why) => {
        if (!ok) {
          r.errors++;
          const k = why ?? 'unknown';
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

// ---- IPC -------------------------------------------------------------------------------------------

async function handle(msg: Cmd): Promise<unknown> {
  switch (msg.cmd) {
    case 'connect':
      return connect(msg);
    case 'run':
      return run(msg);
    case 'publish':
      return publish(msg);
    case 'status':
      return { connected: devices.filter((d) => d.connected()).length, closesAfterConnect } satisfies StatusResult;
    case 'stop':
      if (current) current.stopped = true;
      return {};
    case 'progress':
      return current ? { sent: current.sent, acked: current.acked, errors: current.errors, outstanding: current.outstanding } : {};
    case 'close':
      closing = true;
      await Promise.all(devices.map((d) => d.close()));
      setTimeout(() => process.exit(0), 50);
      return {};
  }
}

serveCommands<Cmd>(handle);
