// A load-generator process: simulated devices (mqtt.js or HTTP keep-alive) bound to their own loopback
// source addresses, driven over IPC by the bench orchestrator (bench/lib/load.ts). Every run is bounded
// in time and in count and ends by itself.
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
  /** mqtt.js reconnectPeriod; 0 = no reconnect. */
  reconnectPeriodMs: number;
  /** TCP_NODELAY on device sockets; undefined = the client library's default (mqtt.js: off, node:http Agent: on). */
  noDelay?: boolean;
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

type Cmd = ConnectCmd | RunCmd | { cmd: 'stop' } | { cmd: 'progress' } | { cmd: 'close' };

interface Device {
  spec: DeviceSpec;
  /** done(ok, why): why names a failure (an HTTP status, an error code) for the run's error tally. */
  send(body: Buffer, done: (ok: boolean, why?: string) => void): void;
  close(): Promise<void>;
}

let devices: Device[] = [];
let reconnects = 0;
let current: RunState | undefined;

// ---- devices ---------------------------------------------------------------------------------------

function mqttDevice(target: Target, spec: DeviceSpec, reconnectPeriod: number, noDelay: boolean | undefined): Promise<Device> {
  return new Promise((resolve, reject) => {
    const client = new MqttClient(
      () => net.createConnection({ host: target.host, port: target.port, localAddress: spec.localAddress, ...(noDelay === undefined ? {} : { noDelay }) }),
      {
        username: spec.imsi,
        clientId: spec.imei,
        protocolVersion: 4,
        clean: true,
        keepalive: 60,
        reconnectPeriod,
        connectTimeout: 10_000,
        resubscribe: false,
      },
    );
    let first = true;
    client.on('connect', () => {
      if (first) {
        first = false;
        resolve(device);
      }
    });
    client.on('reconnect', () => reconnects++);
    client.on('error', (err) => {
      if (first && reconnectPeriod === 0) {
        first = false;
        reject(err);
      }
    });
    const device: Device = {
      spec,
      send(body, done) {
        client.publish(spec.topic, body, { qos: 1 }, (err) => done(!err, err ? `mqtt ${err.message}` : undefined));
      },
      close: () => client.endAsync(true).then(() => undefined, () => undefined),
    };
    setTimeout(() => {
      if (first) {
        first = false;
        client.end(true);
        reject(new Error(`device ${spec.imsi}: no CONNACK within 15 s`));
      }
    }, 15_000).unref();
  });
}

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
    async close() {
      agent.destroy();
    },
  };
}

async function connect(c: ConnectCmd): Promise<{ connected: number }> {
  // A few at a time: a burst of CONNECTs is not what is being measured.
  const out: Device[] = [];
  for (let i = 0; i < c.devices.length; i += 20) {
    const batch = c.devices.slice(i, i + 20);
    out.push(
      ...(await Promise.all(
        batch.map((spec) => (c.target.kind === 'mqtt' ? mqttDevice(c.target, spec, c.reconnectPeriodMs, c.noDelay) : Promise.resolve(httpDevice(c.target, spec, 64, c.noDelay)))),
      )),
    );
  }
  devices = out;
  return { connected: out.length };
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

// ---- IPC -------------------------------------------------------------------------------------------

async function handle(msg: Cmd): Promise<unknown> {
  switch (msg.cmd) {
    case 'connect':
      return connect(msg);
    case 'run':
      return run(msg);
    case 'stop':
      if (current) current.stopped = true;
      return {};
    case 'progress':
      return current ? { sent: current.sent, acked: current.acked, errors: current.errors, outstanding: current.outstanding } : {};
    case 'close':
      await Promise.all(devices.map((d) => d.close()));
      setTimeout(() => process.exit(0), 50);
      return {};
  }
}

serveCommands<Cmd>(handle);
