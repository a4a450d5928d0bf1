// A load-generator process for the sleepy scenario (bench/scenarios/sleepy.ts): battery-powered devices over HTTP. Each device wakes
// `wakes` times, sends `readings` JSON readings one after another (POST /topics/{topic}?qos=1 with
// X-IMSI / X-IMEI, each waiting for its 202) and leaves; wake n (device n % devices, its wake
// n / devices) is due at start + n / wakeRatePerS, so every device wakes once per devices / wakeRatePerS
// seconds and a device still awake from its last wake starts the next one when that ends. Requests go
// through a few keep-alive agents, each bound to its own loopback source address (devices share them,
// as behind a carrier's APN). Driven over IPC ({id, cmd} → {id, ok, result}, bench/lib/load.ts#Worker).
// Every run is bounded in count (devices × readings) and in time (maxDurationMs).
import http from 'node:http';
import { nowMs, type DeviceSpec } from '../lib/devices.ts';
import { newHist, record, type Hist } from '../lib/hist.ts';
import { serveCommands } from '../lib/serve.ts';

export interface SleepyRunCmd {
  cmd: 'run';
  target: { host: string; port: number };
  devices: DeviceSpec[];
  readings: number;
  /** Times each device wakes. */
  wakes: number;
  /** Device wakes per second in this process. */
  wakeRatePerS: number;
  /** Loopback source addresses, one keep-alive agent each; devices are dealt round-robin. */
  sources: string[];
  maxSocketsPerSource: number;
  payloadBytes: number;
  tag: string;
  topic: string;
  /** Everything, sending and waiting for answers, ends by then. */
  maxDurationMs: number;
  /** Requests sent in the first this many ms also go to a separate figure without them. */
  warmupMs: number;
  /** Start at this epoch ms (so processes start together); now if in the past. */
  startAt: number;
}

export interface SleepyRunResult {
  devices: number;
  sent: number;
  acked: number;
  errors: number;
  errorKinds: Record<string, number>;
  startedAt: number;
  /** When the last wake began (it was due at startedAt + (devices × wakes − 1) / rate). */
  lastWakeAt: number;
  /** Largest delay between a wake's due time and when it began (this process's lag, or the device still awake). */
  maxWakeLagMs: number;
  lastAckAt: number;
  ackHist: Hist;
  /** Acknowledgements of the requests sent after the first `warmupMs`. */
  ackHistAfterWarmup: Hist;
  /** Time until each failed request failed (timeouts count 30 s): with ackHist, every request a device made. */
  failHist: Hist;
  /** Acknowledgements per 100 ms since startedAt. */
  ackTimeline: Uint32Array;
  /** Slowest acknowledgement (ms) of the requests sent in each 100 ms since startedAt. */
  slowestTimeline: Float64Array;
  /** Acknowledgements over 10 ms of the requests sent in each 100 ms since startedAt. */
  slowTimeline: Uint32Array;
  /** Devices that had not finished when the time ran out. */
  unfinished: number;
  maxConcurrentDevices: number;
}

/** A JSON reading of exactly `size` bytes carrying the collector's marker `~R<tag>:<dev>:<seq>:<ms>~`. */
export function jsonReading(tag: string, dev: number, seq: number, size: number): Buffer {
  const head = `{"kwh":${(1000 + dev / 7).toFixed(3)},"id":"~R${tag}:${dev}:${seq}:${nowMs().toFixed(3)}~","pad":"`;
  const tail = '"}';
  return Buffer.from(head + 'x'.repeat(Math.max(0, size - head.length - tail.length)) + tail);
}

function post(agent: http.Agent, c: SleepyRunCmd, spec: DeviceSpec, body: Buffer): Promise<string | null> {
  return new Promise((resolve) => {
    let done = false;
    const finish = (why: string | null) => {
      if (!done) {
        done = true;
        resolve(why);
      }
    };
    const req = http.request(
      {
        host: c.target.host,
        port: c.target.port,
        method: 'POST',
        path: `/topics/${c.topic}?qos=1`,
        agent,
        headers: { 'x-imsi': spec.imsi, 'x-imei': spec.imei, 'content-type': 'application/json', 'content-length': body.length },
      },
      (res) => {
        res.resume();
        res.on('end', () => finish(res.statusCode === 202 ? null : `http ${res.statusCode}`));
        res.on('error', (e) => finish(`http response ${(e as NodeJS.ErrnoException).code ?? e.message}`));
      },
    );
    req.setTimeout(30_000, () => req.destroy(new Error('timeout')));
    req.on('error', (e) => finish(`http ${(e as NodeJS.ErrnoException).code ?? e.message}`));
    req.end(body);
  });
}

async function run(c: SleepyRunCmd): Promise<SleepyRunResult> {
  const agents = c.sources.map((localAddress) => new http.Agent({ keepAlive: true, maxSockets: c.maxSocketsPerSource, localAddress } as http.AgentOptions));
  const wait = c.startAt - Date.now();
  if (wait > 0) await new Promise((r) => setTimeout(r, wait));
  const startedAt = nowMs();
  const endBy = startedAt + c.maxDurationMs;
  const r: SleepyRunResult = {
    devices: c.devices.length,
    sent: 0,
    acked: 0,
    errors: 0,
    errorKinds: {},
    startedAt,
    lastWakeAt: 0,
    maxWakeLagMs: 0,
    lastAckAt: 0,
    ackHist: newHist(),
    ackHistAfterWarmup: newHist(),
    failHist: newHist(),
    ackTimeline: new Uint32Array(Math.ceil(c.maxDurationMs / 100) + 1),
    slowestTimeline: new Float64Array(Math.ceil(c.maxDurationMs / 100) + 1),
    slowTimeline: new Uint32Array(Math.ceil(c.maxDurationMs / 100) + 1),
    unfinished: 0,
    maxConcurrentDevices: 0,
  };
  let active = 0;
  const wake = async (k: number, w: number, due: number): Promise<void> => {
    const spec = c.devices[k];
    const agent = agents[k % agents.length];
    const began = nowMs();
    r.maxWakeLagMs = Math.max(r.maxWakeLagMs, began - due);
    r.lastWakeAt = began;
    active++;
    r.maxConcurrentDevices = Math.max(r.maxConcurrentDevices, active);
    try {
      for (let i = 0; i < c.readings; i++) {
        if (nowMs() > endBy) {
          r.unfinished++;
          return;
        }
        const t = nowMs();
        r.sent++;
        const why = await post(agent, c, spec, jsonReading(c.tag, spec.idx, w * c.readings + i, c.payloadBytes));
        const now = nowMs();
        if (why === null) {
          r.acked++;
          r.lastAckAt = now;
          record(r.ackHist, now - t);
          if (t - startedAt >= c.warmupMs) record(r.ackHistAfterWarmup, now - t);
          const b = Math.floor((now - startedAt) / 100);
          if (b < r.ackTimeline.length) r.ackTimeline[b]++;
          const sentIn = Math.floor((t - startedAt) / 100);
          if (sentIn < r.slowestTimeline.length) {
            r.slowestTimeline[sentIn] = Math.max(r.slowestTimeline[sentIn]!, now - t);
            if (now - t > 10) r.slowTimeline[sentIn]++;
          }
        } else {
          record(r.failHist, now - t);
          r.errors++;
          r.errorKinds[why] = (r.errorKinds[why] ?? 0) + 1;
        }
      }
    } finally {
      active--;
    }
  };
  // A device's wakes never overlap: each one chains onto the device's previous wake.
  const awake: Promise<void>[] = c.devices.map(() => Promise.resolve());
  const total = c.devices.length * c.wakes;
  await new Promise<void>((resolve) => {
    let next = 0;
    const tick = () => {
      const now = nowMs();
      while (next < total) {
        const due = startedAt + (next * 1000) / c.wakeRatePerS;
        if (due > now) break;
        const k = next % c.devices.length;
        const w = Math.floor(next / c.devices.length);
        awake[k] = awake[k].then(() => wake(k, w, due));
        next++;
      }
      if (next >= total || now > endBy) return resolve();
      setTimeout(tick, 1);
    };
    tick();
  });
  // Bounded: every request has its own 30 s timeout, and devices stop starting readings at endBy.
  await Promise.race([Promise.allSettled(awake), new Promise((res) => setTimeout(res, Math.max(0, endBy - nowMs()) + 31_000))]);
  agents.forEach((a) => a.destroy());
  return r;
}

serveCommands<SleepyRunCmd | { cmd: 'close' }>((msg) =>
  msg.cmd === 'run' ? run(msg) : Promise.resolve((setTimeout(() => process.exit(0), 100), {})),
);
