import { execFile, spawn } from 'node:child_process';
import { createSocket } from 'node:dgram';
import { generate, parse, type Packet, type ParsedPacket } from 'coap-packet';

/** Runs coap-client-notls (libcoap) as the device; resolves with its exit code and output. */
export function coapClient(program: string, args: string[], timeoutMs = 20_000): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve) => {
    execFile(program, ['-B', '10', ...args], { timeout: timeoutMs, encoding: 'utf8' }, (err, stdout, stderr) => {
      resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, out: stdout + stderr });
    });
  });
}

/**
 * Sends datagrams from one UDP socket (bound to a loopback source address) and collects what comes back
 * within `waitMs` of the last send. A number in `sends` is a pause (ms); a retransmission is the same
 * datagram again from the same socket (the same endpoint).
 */
export async function datagrams(port: number, sends: Array<Buffer | number>, opts: { from?: string; waitMs?: number; until?: (got: Buffer[]) => boolean } = {}): Promise<Buffer[]> {
  const sock = createSocket('udp4');
  sock.on('error', () => undefined); // ICMP port unreachable while the gateway is down
  await new Promise<void>((resolve) => sock.bind(0, opts.from ?? '127.0.0.1', () => resolve()));
  const got: Buffer[] = [];
  let finish = () => undefined as void;
  sock.on('message', (m) => {
    got.push(m);
    if (opts.until?.(got)) finish();
  });
  for (const d of sends) {
    if (typeof d === 'number') await new Promise((r) => setTimeout(r, d));
    else await new Promise<void>((resolve) => sock.send(d, port, '127.0.0.1', () => resolve()));
  }
  if (!opts.until?.(got)) {
    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, opts.waitMs ?? 3000);
      finish = () => (clearTimeout(timer), resolve());
    });
  }
  sock.close();
  return got;
}

/** A CoAP request encoded by coap-packet. */
export function coapRequest(p: Partial<Packet> & { path: string; query?: string[] }): Buffer {
  const options = [
    ...p.path.split('/').filter(Boolean).map((s) => ({ name: 'Uri-Path' as const, value: Buffer.from(s) })),
    ...(p.query ?? []).map((q) => ({ name: 'Uri-Query' as const, value: Buffer.from(q) })),
    ...(p.options ?? []),
  ];
  return generate({ code: 'POST', confirmable: true, messageId: 1, token: Buffer.from([1, 2]), ...p, options } as Packet, 65_000);
}

export const coapParse = (b: Buffer): ParsedPacket => parse(b);

/** Sends a datagram with socat from a source address and prints what comes back (hex). */
export function socatSend(port: number, payload: Buffer, from: string, waitS = 2): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const child = spawn('socat', ['-T', String(waitS), '-t', String(waitS), '-', `UDP4:127.0.0.1:${port},bind=${from}`], { stdio: ['pipe', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    child.stdout.on('data', (d) => out.push(d));
    child.on('error', reject);
    child.on('close', () => resolve(Buffer.concat(out)));
    child.stdin.end(payload);
  });
}
