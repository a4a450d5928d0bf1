// The RADIUS bench's sender (bench/scenarios/radius.ts): a child process playing a PGW on loopback,
// keeping a window of signed Start / Interim-Update requests outstanding; it reports its figures over
// IPC and exits.
import { createSocket, type Socket } from 'node:dgram';
import { verifyAccountingResponse } from '../../bridge/radius/authenticator.ts';
import { buildAccountingRequest } from '../../bridge/radius/request.ts';
import type { Params, SenderResult } from '../scenarios/radius.ts';

async function sender(port: number, sharedSecret: string, p: Params): Promise<SenderResult> {
  const secret = Buffer.from(sharedSecret);
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

sender(Number(process.argv[2]), process.argv[3]!, JSON.parse(process.argv[4]!) as Params).then(
  (r) => process.send!(r, () => process.exit(0)),
  (err) => {
    console.error(err);
    process.exit(1);
  },
);
