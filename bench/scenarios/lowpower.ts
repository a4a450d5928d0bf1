import { spawn } from 'node:child_process';
import { createSocket, type Socket } from 'node:dgram';
import { Agent, request } from 'node:http';
import { createConnection } from 'node:net';
import { fileURLToPath } from 'node:url';
import { generate, parse } from 'coap-packet';
import mqtt from 'mqtt';
import { knob, type Ctx, type Scenario } from '../lib/context.ts';
import { loopbackAddress, payload } from '../lib/devices.ts';
import { newHist, quantile, record } from '../lib/hist.ts';
import { newTag } from '../lib/measure.ts';
import { cpuShareMeter } from '../lib/procstat.ts';
import type { Goal, ScenarioResult } from '../lib/report.ts';
import { gatewayNodeArgs, Stack } from '../lib/stack.ts';
import { round, sleep } from '../lib/stats.ts';

// Low-power ingress: what one wake of a battery device costs on the wire per protocol, and CoAP under
// load and across a SIGKILL. Self-contained: it needs only the Stack (sandbox, Mosquitto upstream,
// collector) and starts simbridge with CoAP and raw UDP enabled.

const READINGS_PER_WAKE = 3;
const READING_BYTES = 200;
const TOPIC = 'telemetry';
const CAPTURE = fileURLToPath(new URL('./lowpower-capture.py', import.meta.url));


interface Device {
  ip: string;
  imsi: string;
}

/** Packets and bytes (IP headers included) to or from the given ports on loopback, from a capture. */
async function capture(ports: number[]): Promise<{ stop(): Promise<Record<string, { packets: number; bytes: number }>> }> {
  const child = spawn('python3', [CAPTURE, ...ports.map(String)], { stdio: ['pipe', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout.on('data', (d) => (out += d));
  child.stderr.on('data', (d) => (err += d));
  const deadline = Date.now() + 10_000;
  while (!out.includes('ready')) {
    if (child.exitCode !== null || Date.now() > deadline) throw new Error(`capture did not start (needs python3 and root): ${err}`);
    await sleep(20);
  }
  return {
    async stop() {
      child.stdin.end();
      await new Promise((r) => child.on('close', r));
      return JSON.parse(out.slice(out.indexOf('{')));
    },
  };
}

/** One CoAP exchange on a device's socket: resolves with the answer's code. */
function coapExchange(sock: Socket, port: number, body: Buffer, messageId: number, timeoutMs = 5000): Promise<string> {
  const req = generate({
    code: 'POST',
    confirmable: true,
    messageId,
    token: Buffer.from([messageId & 0xff]),
    options: [
      { name: 'Uri-Path', value: Buffer.from('topics') },
      { name: 'Uri-Path', value: Buffer.from(TOPIC) },
    ],
    payload: body,
  });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => (sock.off('message', on), reject(new Error('CoAP timeout'))), timeoutMs);
    const on = (m: Buffer) => {
      const p = parse(m);
      if (p.messageId !== messageId) return;
      clearTimeout(timer);
      sock.off('message', on);
      resolve(p.code);
    };
    sock.on('message', on);
    sock.send(req, port, '127.0.0.1');
  });
}

async function boundSocket(ip: string): Promise<Socket> {
  // The load generator shares the loaded machine too: answers wait in a large buffer rather than being dropped.
  const sock = createSocket({ type: 'udp4', recvBufferSize: 1024 ** 2 });
  sock.on('error', () => undefined);
  await new Promise<void>((resolve) => sock.bind(0, ip, () => resolve()));
  return sock;
}

const body = (i: number) => payload('wake', 0, i, READING_BYTES);

// One wake each: connect (if any), 3 readings of 200 B each acknowledged, disconnect.
async function mqttWake(d: Device, port: number): Promise<void> {
  const client = new mqtt.MqttClient(() => createConnection({ host: '127.0.0.1', port, localAddress: d.ip }), { clientId: 'm', protocolVersion: 4, clean: true, keepalive: 300, reconnectPeriod: 0 });
  await new Promise<void>((resolve, reject) => {
    client.once('connect', () => resolve());
    client.once('error', reject);
  });
  for (let i = 0; i < READINGS_PER_WAKE; i++) await client.publishAsync(TOPIC, body(i), { qos: 1 });
  await client.endAsync();
}

async function httpWake(d: Device, port: number): Promise<void> {
  const agent = new Agent({ keepAlive: true, maxSockets: 1, localAddress: d.ip });
  for (let i = 0; i < READINGS_PER_WAKE; i++) {
    await new Promise<void>((resolve, reject) => {
      const req = request({ host: '127.0.0.1', port, method: 'POST', path: `/topics/${TOPIC}`, agent }, (res) => {
        res.resume();
        res.on('end', () => (res.statusCode === 202 ? resolve() : reject(new Error(`HTTP ${res.statusCode}`))));
      });
      req.on('error', reject);
      req.end(body(i));
    });
  }
  agent.destroy();
  await sleep(50); // the FIN exchange
}

async function coapWake(d: Device, port: number, wake: number): Promise<void> {
  const sock = await boundSocket(d.ip);
  for (let i = 0; i < READINGS_PER_WAKE; i++) {
    const code = await coapExchange(sock, port, body(i), (wake * READINGS_PER_WAKE + i) & 0xffff);
    if (code !== '2.04') throw new Error(`CoAP ${code}`);
  }
  sock.close();
}

async function udpWake(d: Device, port: number): Promise<void> {
  const sock = await boundSocket(d.ip);
  for (let i = 0; i < READINGS_PER_WAKE; i++) {
    const ack = new Promise<Buffer>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('UDP ack timeout')), 5000);
      sock.once('message', (m) => (clearTimeout(timer), resolve(m)));
    });
    sock.send(body(i), port, '127.0.0.1');
    const got = await ack;
    if (got[0] !== 0x00) throw new Error(`UDP refused: ${got.subarray(1).toString()}`);
  }
  sock.close();
}

/**
 * Scenario: bytes per wake for MQTT 3.1.1, HTTP, CoAP CON and raw UDP (udpAck: commit), counted by a
 * capture on loopback; CoAP at 2,000 requests/s offered (open loop) with its ack p99; and CoAP requests
 * acknowledged before a SIGKILL, all found upstream after the restart.
 */
const GOALS: Goal[] = [
  { text: 'CoAP CON wake ≤ 0.35 × the bytes of an MQTT 3.1.1 wake', figure: 'coap_vs_mqtt_bytes_ratio', op: '<=', target: 0.35 },
  { text: 'CoAP ack p99 ≤ 10 ms at 2,000 requests/s offered (synchronous: full)', figure: 'coap_ack_p99_ms', op: '<=', target: 10 },
  { text: 'no acknowledged CoAP request lost when simbridge is SIGKILLed', figure: 'coap_lost_on_kill', op: '==', target: 0 },
];

async function lowpower(ctx: Ctx): Promise<ScenarioResult> {
  const wakes = knob('WAKES', 10, 3, ctx);
  const loadDevices = knob('LOAD_DEVICES', 200, 100, ctx);
  const offered = knob('OFFERED_PER_S', 2000, 2000, ctx);
  const loadS = knob('LOAD_S', 20, 8, ctx);
  const killAfterAcks = knob('KILL_AFTER_ACKS', 600, 200, ctx);

  // Devices 0..3 for the wakes (one per protocol), then the load fleet; all identified by source address.
  const fleet: Device[] = Array.from({ length: 4 + loadDevices }, (_, i) => ({ ip: loopbackAddress(1000 + i), imsi: `00101${String(700_000_000 + i).padStart(10, '0')}` }));
  const stack = await Stack.start();
  const notes: string[] = [];
  const figures: Record<string, number | null> = {};
  try {
    const identity = 'static';
    await stack.startGateway({
      override: {
        listeners: {
          mqtt: { identity },
          http: { identity },
          coap: { enabled: true, host: '127.0.0.1', port: 0, identity, perAddressPerSecond: 1000, perAddressBurst: 1000 },
          udp: { enabled: true, host: '127.0.0.1', port: 0, identity, perAddressPerSecond: 1000, perAddressBurst: 1000 },
        },
        identity: { static: fleet.map((d) => ({ address: d.ip, imsi: d.imsi })) },
        groups: { default: { udpAck: 'commit' } },
        storage: { synchronous: 'full' },
      },
    });
    const g = stack.gateway!;
    const ports = { mqtt: g.mqttPort, http: g.httpPort, coap: g.coapPort!, udp: g.udpPort! };

    // 1. Bytes per wake. A first wake each vends the SIM (not measured: it is the same for all four).
    const [dm, dh, dc, du] = fleet;
    await Promise.all([mqttWake(dm!, ports.mqtt), httpWake(dh!, ports.http), coapWake(dc!, ports.coap, 9999), udpWake(du!, ports.udp)]);
    const cap = await capture(Object.values(ports));
    for (let w = 0; w < wakes; w++) {
      await mqttWake(dm!, ports.mqtt);
      await httpWake(dh!, ports.http);
      await coapWake(dc!, ports.coap, w);
      await udpWake(du!, ports.udp);
    }
    await sleep(300);
    const counted = await cap.stop();
    figures.capture_dropped_packets = (counted as unknown as { dropped_by_capture: number }).dropped_by_capture;
    for (const [name, port] of Object.entries(ports)) {
      figures[`bytes_per_wake_${name}`] = round(counted[port]!.bytes / wakes);
      figures[`packets_per_wake_${name}`] = round(counted[port]!.packets / wakes);
    }
    figures.coap_vs_mqtt_bytes_ratio = round(figures.bytes_per_wake_coap! / figures.bytes_per_wake_mqtt!);
    figures.udp_vs_mqtt_bytes_ratio = round(figures.bytes_per_wake_udp! / figures.bytes_per_wake_mqtt!);
    ctx.log(`  wake bytes: ${JSON.stringify(figures)}`);

    // 2. CoAP at `offered` requests/s, open loop over the load fleet, after every SIM is vended.
    const load = fleet.slice(4);
    const socks = await Promise.all(load.map((d) => boundSocket(d.ip)));
    // Warm-up: every SIM vended and its upstream session open (vending works on the main thread and
    // would otherwise share it with the measured requests), as the other throughput scenarios do.
    const warmTag = newTag('lpw');
    await Promise.all(socks.map((s, i) => coapExchange(s, ports.coap, payload(warmTag, i, 0, READING_BYTES), 60_000, 120_000).catch(() => undefined)));
    const warm = stack.collector.stats(warmTag);
    if (!(await stack.collector.waitUntil(() => warm.unique >= load.length, { timeoutMs: 300_000 }))) notes.push(`Warm-up incomplete: ${warm.unique} of ${load.length} devices had reached the upstream.`);
    await sleep(2000);
    const runLoad = async (rate: number, seconds: number) => {
      const hist = newHist();
      const sentAt = new Map<string, number>();
      let acked = 0;
      let refused = 0;
      const listeners = socks.map((s, i) => {
        const on = (m: Buffer) => {
          const p = parse(m);
          const key = `${i}/${p.messageId}`;
          const t = sentAt.get(key);
          if (t === undefined) return;
          sentAt.delete(key);
          if (p.code === '2.04') {
            acked++;
            record(hist, performance.now() - t);
          } else refused++;
        };
        s.on('message', on);
        return on;
      });
      const tag = newTag('lpl');
      const intervalMs = 1000 / rate;
      const started = performance.now();
      let sent = 0;
      while (performance.now() - started < seconds * 1000) {
        const due = Math.floor((performance.now() - started) / intervalMs);
        for (; sent < due; sent++) {
          const dev = sent % load.length;
          const seq = Math.floor(sent / load.length);
          const mid = (nextMid + seq) & 0xffff;
          sentAt.set(`${dev}/${mid}`, performance.now());
          const req = generate({
            code: 'POST',
            confirmable: true,
            messageId: mid,
            token: Buffer.from([mid & 0xff, mid >> 8]),
            options: [
              { name: 'Uri-Path', value: Buffer.from('topics') },
              { name: 'Uri-Path', value: Buffer.from(TOPIC) },
            ],
            payload: payload(tag, dev, seq, READING_BYTES),
          });
          socks[dev]!.send(req, ports.coap, '127.0.0.1');
        }
        await sleep(2);
      }
      const elapsedS = (performance.now() - started) / 1000;
      nextMid += Math.ceil(sent / load.length) + 1;
      // Answers still coming count in the latency, not in the rate.
      const ackedInTime = acked;
      const drainUntil = Date.now() + 30_000;
      while (sentAt.size > 0 && Date.now() < drainUntil) await sleep(100);
      socks.forEach((s, i) => s.off('message', listeners[i]!));
      return { offered: round(sent / elapsedS), msgsPerS: round(ackedInTime / elapsedS), p50: round(quantile(hist, 0.5)), p99: round(quantile(hist, 0.99)), unanswered: sentAt.size, refused };
    };
    let nextMid = 1;
    const metricsUrl = `http://127.0.0.1:${stack.gateway!.adminPort}/metrics`;
    const runHttpLoad = async () => {
      // The same devices over HTTP at the quarter rate, side by side: what this machine gives the gateway's
      // HTTP path right now, against which the CoAP figures can be read.
      const agents = load.map((d) => new Agent({ keepAlive: true, maxSockets: 8, localAddress: d.ip }));
      const httpHist = newHist();
      let httpAcked = 0;
      let httpOther = 0;
      let httpSent = 0;
      const httpStarted = performance.now();
      const inflight: Array<Promise<void>> = [];
      const httpTag = newTag('lph');
      while (performance.now() - httpStarted < loadS * 1000) {
        const due = Math.floor(((performance.now() - httpStarted) * (offered / 4)) / 1000);
        for (; httpSent < due; httpSent++) {
          const dev = httpSent % load.length;
          const t = performance.now();
          inflight.push(
            new Promise<void>((resolve) => {
              const req = request({ host: '127.0.0.1', port: ports.http, method: 'POST', path: `/topics/${TOPIC}`, agent: agents[dev] }, (res) => {
                res.resume();
                res.on('end', () => {
                  if (res.statusCode === 202) (httpAcked++, record(httpHist, performance.now() - t));
                  else httpOther++;
                  resolve();
                });
              });
              req.on('error', () => (httpOther++, resolve()));
              req.end(payload(httpTag, dev, Math.floor(httpSent / load.length), READING_BYTES));
            }),
          );
        }
        await sleep(2);
      }
      const httpElapsedS = (performance.now() - httpStarted) / 1000;
      const httpAckedInTime = httpAcked;
      await Promise.race([Promise.all(inflight), sleep(30_000)]);
      agents.forEach((a) => a.destroy());
      figures[`http_msgs_per_s_at_${offered / 4}_per_s`] = round(httpAckedInTime / httpElapsedS);
      figures[`http_ack_p50_ms_at_${offered / 4}_per_s`] = round(quantile(httpHist, 0.5));
      figures[`http_ack_p99_ms_at_${offered / 4}_per_s`] = round(quantile(httpHist, 0.99));
      figures[`http_failed_at_${offered / 4}_per_s`] = httpOther;
      ctx.log(`  HTTP at ${offered / 4}/s: ${httpAcked} acked, p99 ${figures[`http_ack_p99_ms_at_${offered / 4}_per_s`]} ms`);
    };
    for (const rate of [offered / 4, offered]) {
      const cpuMeter = cpuShareMeter(stack.gateway!.pid);
      const r = await runLoad(rate, loadS);
      const cpu = cpuMeter.stop();
      // HTTP after the quarter rate, before the full rate can leave a backlog behind it.
      if (rate !== offered) await runHttpLoad();
      const suffix = rate === offered ? '' : `_at_${rate}_per_s`;
      figures[`coap_offered_per_s${suffix}`] = r.offered;
      figures[`coap_msgs_per_s${suffix}`] = r.msgsPerS;
      figures[`coap_ack_p50_ms${suffix}`] = r.p50;
      figures[`coap_ack_p99_ms${suffix}`] = r.p99;
      figures[`coap_unanswered${suffix}`] = r.unanswered;
      figures[`coap_refused${suffix}`] = r.refused;
      figures[`machine_busy_pct${suffix}`] = cpu.machine_busy_pct;
      figures[`cpu_pct${suffix}`] = cpu.roles.gateway ?? null;
      figures[`main_thread_run_pct${suffix}`] = cpu.main_thread_run_pct;
      figures[`main_thread_runq_wait_pct${suffix}`] = cpu.main_thread_runq_wait_pct;
      ctx.log(`  load at ${rate}/s: ${JSON.stringify(r)}`);
    }
    // What the acknowledgements waited for: the disk (commit time on the writer thread) and the event loop.
    const prom = await fetch(metricsUrl).then((r) => r.text(), () => '');
    figures.outbox_commit_p99_ms = histogramQuantile(prom, 'simbridge_outbox_commit_seconds', 0.99);
    const lag = prom.match(/^nodejs_eventloop_lag_p99_seconds (\S+)/m);
    figures.event_loop_lag_p99_ms = lag ? round(Number(lag[1]) * 1000) : null;
    socks.forEach((s) => s.close());
    // A profile of the load (BENCH_GATEWAY_NODE_ARGS=--cpu-prof) is written only by a gateway that exits.
    if (gatewayNodeArgs().includes('--cpu-prof')) {
      await stack.stopGateway('SIGTERM');
      await stack.startGateway();
      ports.coap = stack.gateway!.coapPort!;
    }

    // 3. SIGKILL right after CoAP acknowledgements: every acknowledged request must arrive upstream.
    const killTag = newTag('lpk');
    const killDevs = load.slice(0, 20);
    const ackedBits = new Map<number, Uint8Array>(killDevs.map((_, i) => [i, new Uint8Array(10_000)]));
    let killAcked = 0;
    let stop = false;
    const senders = killDevs.map(async (d, i) => {
      const s = await boundSocket(d.ip);
      for (let seq = 0; !stop && seq < 10_000; seq++) {
        const code = await coapExchange(s, ports.coap, payload(killTag, i, seq, READING_BYTES), (seq + 20_000) & 0xffff, 1000).catch(() => 'none');
        if (code === '2.04') {
          ackedBits.get(i)![seq] = 1;
          killAcked++;
        }
      }
      s.close();
    });
    while (killAcked < killAfterAcks) await sleep(1);
    await stack.stopGateway('SIGKILL');
    stop = true;
    await Promise.all(senders);
    await stack.startGateway();
    const stats = stack.collector.stats(killTag);
    await stack.collector.waitUntil(() => stats.compare(ackedBits).lost === 0, { timeoutMs: 90_000 });
    const result = stats.compare(ackedBits);
    figures.coap_acked_before_kill = result.acked;
    figures.coap_lost_on_kill = result.lost;
    figures.coap_duplicates_after_kill = result.duplicatesOfAcked;

    notes.push(
      `Bytes are counted by a packet capture on loopback (AF_PACKET, each packet once, IP header included, link layer not): every IPv4 packet to or from the listener's port during ${wakes} wakes per protocol, divided by ${wakes}. That includes TCP's handshake (SYN, SYN-ACK, ACK), its ACKs and FIN exchange, and the UDP/IP headers; Linux's TCP options (timestamps, SACK, window scale) are on, as on a real modem's stack they may not be.`,
      `A wake is ${READINGS_PER_WAKE} readings of ${READING_BYTES} B, each waiting for its acknowledgement, then sleep. MQTT 3.1.1: CONNECT (client id "m", clean session) → 3 QoS 1 PUBLISH/PUBACK → DISCONNECT. HTTP: one keep-alive connection, 3 × POST /topics/${TOPIC} (the most favourable case for HTTP; a connection per reading costs more). CoAP: 3 × CON POST /topics/${TOPIC} with a 1-byte token, each answered by a piggybacked 2.04 with no body. UDP: 3 datagrams, each answered by the 1-byte acknowledgement (udpAck: commit). Every device is identified by its source address (static table), so no protocol carries identity bytes.`,
      `The 200-byte payloads alone are 600 B per wake each way they travel, which bounds coap_vs_mqtt_bytes_ratio from below: 0.35 is reached only if an MQTT wake costs ≥ 1,714 B. Sending the three readings in one CoAP request (one datagram) would cut CoAP further.`,
      `CoAP load: ${loadDevices} devices (one socket and loopback address each), every SIM vended first, send Confirmable POSTs of ${READING_BYTES} B round-robin at a fixed schedule (open loop, no retransmissions) for ${loadS} s, at ${offered / 4}/s and later at ${offered}/s; the ack time is from send to the piggybacked 2.04, measured in the same process; msgs_per_s counts the answers that came within the sending time. Between the two, the same devices send HTTP POSTs (keep-alive, open loop) at ${offered / 4}/s for ${loadS} s, side by side, so the CoAP figures can be read against what the machine gave the HTTP path at that moment. outbox_commit_p99_ms (writer-thread transaction time, the disk's share of an ack) and event_loop_lag_p99_ms come from the gateway's /metrics after all three runs. storage.synchronous: full. The machine is shared with other work while this runs (see the noise note): the latency figures are what this run got, not the gateway's best.`,
      `machine_busy_pct, cpu_pct (simbridge, all threads), main_thread_run_pct, main_thread_runq_wait_pct: over each CoAP load run, from /proc (stat, and the main thread's schedstat), in % of one core or of the wall time: how busy the machine was, and how long simbridge's main thread ran and how long it was ready to run but waited for a core, which every acknowledgement behind it waits too.`,
      `Kill: 20 devices send Confirmable POSTs one after another; after ${killAfterAcks} acknowledgements simbridge gets SIGKILL, is restarted on the same data, and every acknowledged reading is looked for upstream.`,
    );
    return {
      params: { wakes, readings_per_wake: READINGS_PER_WAKE, reading_bytes: READING_BYTES, load_devices: loadDevices, offered_per_s: offered, load_s: loadS, synchronous: 'full', identity: 'static (source address)', byte_count: 'loopback packet capture, IP headers included' },
      figures,
      goals: GOALS,
      notes,
    };
  } finally {
    await stack.close();
  }
}

/** A quantile (ms) of a Prometheus histogram in seconds, from its cumulative buckets (upper bound of the bucket). */
function histogramQuantile(text: string, name: string, q: number): number | null {
  const buckets = [...text.matchAll(new RegExp(`^${name}_bucket\\{le="([^"]+)"\\} (\\S+)`, 'gm'))].map((m) => ({ le: Number(m[1] === '+Inf' ? Infinity : m[1]), n: Number(m[2]) }));
  const total = buckets.at(-1)?.n ?? 0;
  if (!total) return null;
  const hit = buckets.find((b) => b.n >= q * total);
  return hit && Number.isFinite(hit.le) ? round(hit.le * 1000) : null;
}

export const scenario: Scenario = { title: 'low-power ingress: bytes on the wire per wake by protocol, CoAP under load and across a SIGKILL', goals: GOALS, run: lowpower };
