// RADIUS accounting benchmark: a sender process plays a PGW on loopback, keeping a window of signed
// Start / Interim-Update requests outstanding against the listener in this process, whose every record is
// committed with synchronous=FULL before it is answered. Runs with group commit and with one transaction
// per packet, side by side, and reports both and their ratio.
//
//   npx tsx bench/radius.ts [--count N] [--seconds S] [--window W] [--sessions N]

import { fork } from 'node:child_process';
import { createSocket, type Socket } from 'node:dgram';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, tmpdir, totalmem } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { verifyAccountingResponse } from '../bridge/radius/authenticator.ts';
import { startRadiusListener } from '../bridge/radius/listener.ts';
import { buildAccountingRequest } from '../bridge/radius/request.ts';
import { openDatabase } from '../storage/db.ts';

const SECRET = 'bench-secret';

interface Params {
  count: number;
  seconds: number;
  window: number;
  sessions: number;
  sockets: number;
}

interface SenderResult {
  sent: number;
  replies: number;
  retransmits: number;
  lost: number;
  elapsedMs: number;
  p50Ms: number;
  p99Ms: number;
  /** CPU time of the sender process over the run, as % of one core. */
  cpuPct: number;
}

function arg(name: string, fallback: number): number {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? Number(process.argv[i + 1]) : fallback;
}

// ---------------------------------------------------------------------------------------------------
// Sender (child process): `sockets` sockets × identifiers, `window` requests in flight in all.

async function sender(port: number, p: Params): Promise<SenderResult> {
  const secret = Buffer.from(SECRET);
  const perSocket = Math.ceil(p.window / p.sockets);
  if (perSocket > 256) throw new Error('window / sockets must be <= 256 (one Identifier each)');
  const latencies: number[] = [];
  let next = 0;
  let replies = 0;
  let retransmits = 0;
  let lost = 0;
  const t0 = performance.now();
  const cpu0 = process.cpuUsage();
  const deadline = t0 + p.seconds * 1000;
  let finish!: () => void;
  const done = new Promise<void>((resolve) => (finish = resolve));
  let inFlight = 0;

  const request = (n: number, identifier: number): Buffer => {
    const s = n % p.sessions;
    return buildAccountingRequest(
      {
        identifier,
        status: n < p.sessions ? 'Start' : 'InterimUpdate',
        framedIp: `10.${(s >> 16) & 255}.${(s >> 8) & 255}.${s & 255}`,
        acctSessionId: `bench-${s}`,
        imsi: `00101${String(s).padStart(10, '0')}`,
        imeisv: '4901542032375101',
        ratType: 8,
        nasIp: '192.0.2.1',
      },
      secret,
    );
  };

  const sockets: Socket[] = [];
  for (let k = 0; k < p.sockets; k++) {
    const socket = createSocket('udp4');
    await new Promise<void>((resolve) => socket.bind(0, '127.0.0.1', resolve));
    const slots = new Map<number, { packet: Buffer; sentAt: number; tries: number; timer: NodeJS.Timeout }>();
    const fire = (id: number) => {
      if (next >= p.count || performance.now() > deadline) {
        if (--inFlight === 0) finish();
        return;
      }
      const packet = request(next++, id);
      const slot = { packet, sentAt: performance.now(), tries: 1, timer: setTimeout(() => retry(id), 1000) };
      slots.set(id, slot);
      socket.send(packet, port, '127.0.0.1');
    };
    // Same octets again, as a NAS does: answered from the reply cache if the first one was applied.
    const retry = (id: number) => {
      const slot = slots.get(id)!;
      if (slot.tries >= 3) {
        lost++;
        slots.delete(id);
        return fire(id);
      }
      slot.tries++;
      retransmits++;
      slot.timer = setTimeout(() => retry(id), 1000);
      socket.send(slot.packet, port, '127.0.0.1');
    };
    socket.on('message', (msg) => {
      const slot = slots.get(msg[1]!);
      if (!slot || !verifyAccountingResponse(msg, slot.packet.subarray(4, 20), secret)) return;
      clearTimeout(slot.timer);
      slots.delete(msg[1]!);
      latencies.push(performance.now() - slot.sentAt);
      replies++;
      fire(msg[1]!);
    });
    sockets.push(socket);
    for (let id = 0; id < perSocket && inFlight < p.window; id++) {
      inFlight++;
      setImmediate(() => fire(id));
    }
  }
  await done;
  const elapsedMs = performance.now() - t0;
  const cpu = process.cpuUsage(cpu0);
  for (const s of sockets) s.close();
  latencies.sort((a, b) => a - b);
  const q = (f: number) => latencies[Math.min(latencies.length - 1, Math.floor(f * latencies.length))] ?? 0;
  const cpuPct = ((cpu.user + cpu.system) / 1000 / elapsedMs) * 100;
  return { sent: next, replies, retransmits, lost, elapsedMs, p50Ms: q(0.5), p99Ms: q(0.99), cpuPct };
}

// ---------------------------------------------------------------------------------------------------
// Listener side (this process), one run per commit mode.

async function runMode(groupCommit: boolean, p: Params) {
  const dir = mkdtempSync(join(tmpdir(), 'simbridge-bench-radius-'));
  const db = openDatabase({ file: join(dir, 'db.sqlite'), synchronous: 'full' });
  const listener = await startRadiusListener({ host: '127.0.0.1', port: 0, clients: [{ address: '127.0.0.0/8', secret: SECRET }], db, groupCommit });
  const child = fork(fileURLToPath(import.meta.url), ['sender', String(listener.port), JSON.stringify(p)], {
    execArgv: ['--import', 'tsx'],
  });
  const cpu0 = process.cpuUsage();
  const result = await new Promise<SenderResult>((resolve, reject) => {
    child.once('message', (m) => resolve(m as SenderResult));
    child.once('exit', (code) => reject(new Error(`sender exited with ${code}`)));
  });
  const cpu = process.cpuUsage(cpu0);
  // Includes the sender's start-up (a second or so of idling here): a slight underestimate.
  const listenerCpuPct = ((cpu.user + cpu.system) / 1000 / result.elapsedMs) * 100;
  child.kill();
  const sessions = listener.sessions.count();
  const counters = structuredClone(listener.counters);
  await listener.close();
  db.close();
  rmSync(dir, { recursive: true, force: true });
  return { ...result, packetsPerS: (result.replies / result.elapsedMs) * 1000, sessions, counters, listenerCpuPct };
}

async function main(): Promise<void> {
  const p: Params = {
    count: arg('count', 200_000),
    seconds: arg('seconds', 15),
    window: arg('window', 256),
    sessions: arg('sessions', 10_000),
    sockets: arg('sockets', 4),
  };
  const group = await runMode(true, p);
  const single = await runMode(false, p);
  for (const [name, r] of [['group commit', group], ['one transaction per packet', single]] as const) {
    console.log(`${name}: ${r.replies} replies in ${(r.elapsedMs / 1000).toFixed(1)} s = ${r.packetsPerS.toFixed(0)} packets/s, ack p50 ${r.p50Ms.toFixed(2)} ms p99 ${r.p99Ms.toFixed(2)} ms, ${r.counters.commits} commits, ${r.retransmits} retransmits, ${r.lost} lost, CPU listener ${r.listenerCpuPct.toFixed(0)}% sender ${r.cpuPct.toFixed(0)}%`);
  }
  const round = (x: number, d = 1) => Math.round(x * 10 ** d) / 10 ** d;
  const report = {
    scenario: 'radius',
    date: new Date().toISOString(),
    machine: { cores: cpus().length, memory_gb: Math.round(totalmem() / 2 ** 30), node: process.version },
    params: { ...p, synchronous: 'full', transport: 'udp loopback, sender in a separate process' },
    figures: {
      packets_per_s: round(group.packetsPerS, 0),
      packets_per_s_one_txn_per_packet: round(single.packetsPerS, 0),
      group_commit_speedup_ratio: round(group.packetsPerS / single.packetsPerS, 2),
      records_per_commit: round(group.counters.accepted / Math.max(1, group.counters.commits), 1),
      listener_cpu_pct: round(group.listenerCpuPct, 0),
      sender_cpu_pct: round(group.cpuPct, 0),
      ack_p50_ms: round(group.p50Ms, 2),
      ack_p99_ms: round(group.p99Ms, 2),
      ack_p50_ms_one_txn_per_packet: round(single.p50Ms, 2),
      ack_p99_ms_one_txn_per_packet: round(single.p99Ms, 2),
      replies_count: group.replies,
      replies_count_one_txn_per_packet: single.replies,
      retransmits_count: group.retransmits + single.retransmits,
      lost_count: group.lost + single.lost,
    },
  };
  const outDir = join(dirname(fileURLToPath(import.meta.url)), 'results');
  mkdirSync(outDir, { recursive: true });
  writeFileSync(join(outDir, 'radius.json'), JSON.stringify(report, null, 2) + '\n');
  const f = report.figures;
  writeFileSync(
    join(outDir, 'radius.md'),
    `# RADIUS accounting listener

${report.date} · ${report.machine.cores} cores, ${report.machine.memory_gb} GB, Node ${report.machine.node}

A sender process keeps ${p.window} signed Start/Interim-Update requests in flight over loopback UDP
(${p.sockets} sockets, ${p.sessions} sessions); every record is committed to SQLite (WAL, synchronous=FULL)
before its Accounting-Response. Limits: ${p.count} packets or ${p.seconds} s per mode.

| mode | packets/s | ack p50 ms | ack p99 ms | replies |
|---|---:|---:|---:|---:|
| group commit (default) | ${f.packets_per_s} | ${f.ack_p50_ms} | ${f.ack_p99_ms} | ${f.replies_count} |
| one transaction per packet | ${f.packets_per_s_one_txn_per_packet} | ${f.ack_p50_ms_one_txn_per_packet} | ${f.ack_p99_ms_one_txn_per_packet} | ${f.replies_count_one_txn_per_packet} |

Group commit: ×${f.group_commit_speedup_ratio} (${f.records_per_commit} records per commit on average); CPU with
group commit: listener ${f.listener_cpu_pct}% and sender ${f.sender_cpu_pct}% of one core.
Retransmits ${f.retransmits_count}, lost ${f.lost_count}.
`,
  );
  console.log(`wrote ${join(outDir, 'radius.json')}`);
}

if (process.argv[2] === 'sender') {
  sender(Number(process.argv[3]), JSON.parse(process.argv[4]!) as Params).then(
    (r) => process.send!(r, () => process.exit(0)),
    (err) => {
      console.error(err);
      process.exit(1);
    },
  );
} else {
  main().catch((err) => {
    console.error(err);
    process.exit(1);
  });
}
