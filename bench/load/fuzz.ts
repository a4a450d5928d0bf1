// Bad-input generator process: bounded rounds of random and mutated MQTT packets over raw TCP, and raw
// HTTP requests (malformed request lines and headers, huge bodies, bad identities), against simbridge's
// device ports. Every round has its own deadline; the whole run stops at `rounds` or `durationMs`.
import { createSocket } from 'node:dgram';
import net from 'node:net';
import { serveCommands } from '../lib/serve.ts';

export interface FuzzCmd {
  cmd: 'fuzz';
  host: string;
  mqttPort: number;
  httpPort: number;
  rounds: number;
  durationMs: number;
  concurrency: number;
  seed: number;
  /** A few IMSIs the fuzzer may present as valid (bounded vending and sessions upstream). */
  imsis: string[];
  imei: string;
  /** CoAP and raw UDP ports, when the gateway listens on them: their rounds join the others. */
  coapPort?: number;
  udpPort?: number;
}

export interface FuzzResult {
  rounds: number;
  byKind: Record<string, number>;
  /** HTTP answers by status class, e.g. {"4xx": 812}. */
  httpStatus: Record<string, number>;
  /** HTTP 5xx answers, by "METHOD path → status" sample (first few). */
  serverErrors: string[];
  /** Connections the gateway refused or reset (it may: what matters is that it stays up). */
  connectErrors: number;
  /** CONNACK return codes seen, e.g. {"0": 120, "3": 800}. */
  connack: Record<string, number>;
  /** HTTP answers by status, e.g. {"408": 12, "503": 40}. */
  httpCodes: Record<string, number>;
  /** Stalled request bodies left open by the fuzzer: how many the gateway closed by the end, how many with a 408. */
  stalledBodies: { opened: number; closedByGateway: number; answered408: number };
  /** Answers to CoAP rounds by code class ("2.xx", "4.xx", "5.xx", "RST"), and to UDP rounds by first byte. */
  datagramAnswers?: Record<string, number>;
  elapsedMs: number;
}

// ---- deterministic randomness -------------------------------------------------------------------

let state = 1;
function rand(): number {
  // mulberry32
  state = (state + 0x6d2b79f5) | 0;
  let t = state;
  t = Math.imul(t ^ (t >>> 15), t | 1);
  t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
}
const int = (n: number) => Math.floor(rand() * n);
const pick = <T>(a: readonly T[]): T => a[int(a.length)];
const bytes = (n: number) => Buffer.from(Array.from({ length: n }, () => int(256)));

// ---- a minimal MQTT 3.1.1 encoder (we need to write invalid packets too) --------------------------

function varint(n: number): Buffer {
  const out: number[] = [];
  do {
    let b = n % 128;
    n = Math.floor(n / 128);
    if (n > 0) b |= 0x80;
    out.push(b);
  } while (n > 0 && out.length < 4);
  return Buffer.from(out);
}
const str = (s: string | Buffer) => {
  const b = Buffer.isBuffer(s) ? s : Buffer.from(s);
  const len = Buffer.alloc(2);
  len.writeUInt16BE(b.length & 0xffff);
  return Buffer.concat([len, b]);
};
const u16 = (n: number) => {
  const b = Buffer.alloc(2);
  b.writeUInt16BE(n & 0xffff);
  return b;
};
const packet = (type: number, flags: number, body: Buffer) => Buffer.concat([Buffer.from([(type << 4) | (flags & 15)]), varint(body.length), body]);

function connect(o: { clientId: string | Buffer; username?: string | Buffer; password?: Buffer; level?: number; name?: string; flags?: number; keepalive?: number; will?: boolean }): Buffer {
  let flags = o.flags ?? 0x02; // clean session
  if (o.username !== undefined) flags |= 0x80;
  if (o.password !== undefined) flags |= 0x40;
  if (o.will) flags |= 0x04 | 0x08; // will, QoS 1
  const parts = [str(o.name ?? 'MQTT'), Buffer.from([o.level ?? 4, flags]), u16(o.keepalive ?? 30), str(o.clientId)];
  if (o.will) parts.push(str('will/topic'), str(bytes(int(64))));
  if (o.username !== undefined) parts.push(str(o.username));
  if (o.password !== undefined) parts.push(str(o.password));
  return packet(1, 0, Buffer.concat(parts));
}
const publish = (topic: string | Buffer, payload: Buffer, qos: number, id = 1 + int(65535), flags = 0) =>
  packet(3, (qos << 1) | flags, Buffer.concat([str(topic), qos > 0 ? u16(id) : Buffer.alloc(0), payload]));
const subscribe = (filters: string[], id = 1 + int(65535)) => packet(8, 2, Buffer.concat([u16(id), ...filters.map((f) => Buffer.concat([str(f), Buffer.from([int(4)])]))]));
const unsubscribe = (filters: string[]) => packet(10, 2, Buffer.concat([u16(1 + int(65535)), ...filters.map((f) => str(f))]));
const simple = (type: number, flags = 0) => Buffer.from([(type << 4) | flags, 0]);
const withId = (type: number, flags = 0) => packet(type, flags, u16(int(65536)));

const weirdTopics = ['#', '+', 'a/+/b', 'a/#', '$SYS/broker', '$aws/things/x/shadow', '', '/', '//', 'a'.repeat(300), 'x/'.repeat(20) + 'y', 't\u0000x', 'ü/€/漢', '../../etc', 'telemetry'];

function anyPacket(): Buffer {
  switch (int(10)) {
    case 0:
      return publish(pick(weirdTopics), bytes(int(300)), int(4));
    case 1:
      return publish('telemetry', bytes(int(100)), int(2));
    case 2:
      return subscribe([pick(weirdTopics), pick(weirdTopics)]);
    case 3:
      return unsubscribe([pick(weirdTopics)]);
    case 4:
      return simple(12); // PINGREQ
    case 5:
      return withId(pick([4, 5, 6, 7]), int(16)); // PUBACK/PUBREC/PUBREL/PUBCOMP with any flags
    case 6:
      return simple(pick([0, 2, 9, 11, 13, 15])); // reserved or server-only types
    case 7:
      return connect({ clientId: 'second-connect' }); // a second CONNECT is a protocol violation
    case 8:
      return publish('telemetry', bytes(int(50)), 1, 0); // packet id 0
    default:
      return simple(14); // DISCONNECT
  }
}

/** Flip, insert, delete, truncate, or inflate the remaining length. */
function mutate(b: Buffer): Buffer {
  const out = Buffer.from(b);
  switch (int(6)) {
    case 0:
      for (let i = 0, n = 1 + int(8); i < n && out.length; i++) out[int(out.length)] = int(256);
      return out;
    case 1:
      return Buffer.concat([out.subarray(0, int(out.length + 1)), bytes(1 + int(16)), out.subarray(int(out.length + 1))]);
    case 2:
      return out.subarray(0, int(out.length));
    case 3: {
      const i = int(out.length);
      return Buffer.concat([out.subarray(0, i), out.subarray(i + 1 + int(8))]);
    }
    case 4:
      // Remaining length claims up to 256 MB.
      return Buffer.concat([out.subarray(0, 1), Buffer.from([0xff, 0xff, 0xff, 0x7f]), out.subarray(2)]);
    default:
      if (out.length > 1) out[1] = int(256);
      return out;
  }
}

// ---- transports ------------------------------------------------------------------------------------

function source(): string {
  return `127.0.${int(2)}.${2 + int(250)}`;
}

/** Opens a connection, writes chunks (with small gaps), collects what comes back until close or deadline. */
function exchange(port: number, chunks: Buffer[], deadlineMs: number, gapMs = 0, from = source()): Promise<{ reply: Buffer; error?: string }> {
  return new Promise((resolve) => {
    const got: Buffer[] = [];
    let error: string | undefined;
    const s = net.createConnection({ host: cmd!.host, port, localAddress: from });
    const timer = setTimeout(() => s.destroy(), deadlineMs);
    s.on('data', (d: Buffer) => {
      if (got.reduce((a, b) => a + b.length, 0) < 65536) got.push(d);
    });
    s.on('error', (e) => (error = (e as NodeJS.ErrnoException).code ?? e.message));
    s.on('close', () => {
      clearTimeout(timer);
      resolve({ reply: Buffer.concat(got), error });
    });
    s.once('connect', async () => {
      for (const c of chunks) {
        if (s.destroyed) break;
        await new Promise<void>((r) => (s.write(c) ? r() : s.once('drain', () => r())));
        if (gapMs) await new Promise((r) => setTimeout(r, gapMs));
      }
    });
  });
}

let cmd: FuzzCmd | undefined;
const result: FuzzResult = { rounds: 0, byKind: {}, httpStatus: {}, serverErrors: [], connectErrors: 0, connack: {}, httpCodes: {}, stalledBodies: { opened: 0, closedByGateway: 0, answered408: 0 }, elapsedMs: 0 };

// Floods come from one address each, as from one SIM's IP: the per-address caps are what should hold.
const MQTT_FLOOD_SOURCE = '127.0.3.3';
const HTTP_FLOOD_SOURCE = '127.0.3.4';
// Over each listener's default cap per address (MQTT 64, HTTP 256).
const FLOOD_CONNECTIONS = { mqtt: 100, http: 300 };
const FLOOD_HOLD_MS = 3000;
/** Stalled bodies still open; the run waits for the gateway to close them (its idle timeout), up to this long. */
const stalled = new Set<net.Socket>();
const STALLED_WAIT_MS = 25_000;

function countConnacks(reply: Buffer): void {
  for (let i = 0; i + 3 < reply.length; i++) {
    if (reply[i] === 0x20 && reply[i + 1] === 2) {
      const rc = String(reply[i + 3]);
      result.connack[rc] = (result.connack[rc] ?? 0) + 1;
      i += 3;
    } else if (reply[i] === 0x20 && reply[i + 1]! > 2 && reply[i + 1]! < 0x80 && reply[i + 2]! <= 1) {
      // MQTT 5 form: flags, reason code, properties; counted as "v5:0x87".
      const rc = `v5:0x${reply[i + 3]!.toString(16).padStart(2, '0')}`;
      result.connack[rc] = (result.connack[rc] ?? 0) + 1;
      i += 1 + reply[i + 1]!;
    }
  }
}

function countHttp(kind: string, reply: Buffer, first: Buffer): void {
  for (const m of reply.toString('latin1').matchAll(/HTTP\/1\.[01] (\d{3})/g)) {
    const cls = `${m[1][0]}xx`;
    result.httpStatus[cls] = (result.httpStatus[cls] ?? 0) + 1;
    result.httpCodes[m[1]] = (result.httpCodes[m[1]] ?? 0) + 1;
    if (m[1][0] === '5' && m[1] !== '503' && result.serverErrors.length < 10) result.serverErrors.push(`${kind} → ${m[1]}: ${first.subarray(0, 80).toString('latin1').replace(/[^\x20-\x7e]/g, '.')}`);
  }
}

/** Many connections at once from one address, each held FLOOD_HOLD_MS (or until the gateway closes it). */
async function flood(port: number, from: string, count: number, first: () => Buffer): Promise<Buffer[]> {
  const rounds = Array.from({ length: count }, () => exchange(port, [first()], FLOOD_HOLD_MS, 0, from));
  const replies = await Promise.all(rounds);
  for (const r of replies) if (r.error === 'ECONNREFUSED') result.connectErrors++;
  return replies.map((r) => r.reply);
}

/** A request whose body stops after a few bytes; the fuzzer never closes it: the gateway must. */
function stallBody(port: number): Promise<void> {
  return new Promise((resolve) => {
    const s = net.createConnection({ host: cmd!.host, port, localAddress: source() });
    let reply = '';
    result.stalledBodies.opened++;
    stalled.add(s);
    s.on('data', (d: Buffer) => (reply += d.toString('latin1')));
    s.on('error', () => undefined);
    s.on('close', () => {
      if (!stalled.delete(s)) return; // closed by us at the end
      result.stalledBodies.closedByGateway++;
      if (/^HTTP\/1\.1 408 /.test(reply)) result.stalledBodies.answered408++;
    });
    s.once('connect', async () => {
      s.write(request('POST', '/topics/telemetry?qos=1', [...idHeaders(), `Content-Length: ${1000 + int(100_000)}`]));
      for (let i = 0; i < 3 && !s.destroyed; i++) {
        await new Promise((r) => setTimeout(r, 150));
        s.write(bytes(1 + int(8)));
      }
      resolve();
    });
  });
}

function identity(): { imsi: string | Buffer; imei: string | Buffer } {
  const c = cmd!;
  switch (int(8)) {
    case 0:
      return { imsi: '12ab', imei: c.imei };
    case 1:
      return { imsi: pick(c.imsis), imei: '490154203237517' }; // bad Luhn
    case 2:
      return { imsi: '9'.repeat(40), imei: '1'.repeat(40) };
    case 3:
      return { imsi: bytes(int(20)), imei: bytes(int(20)) };
    case 4:
      return { imsi: '', imei: '' };
    case 5:
      return { imsi: pick(c.imsis), imei: c.imei.slice(0, 14) + '00' }; // IMEISV
    default:
      return { imsi: pick(c.imsis), imei: c.imei };
  }
}

// ---- MQTT cases -------------------------------------------------------------------------------------

const mqttCases: Record<string, () => Buffer[]> = {
  mqtt_random_bytes: () => [bytes(1 + int(2048))],
  mqtt_mutated_connect: () => {
    const id = identity();
    return [mutate(connect({ clientId: id.imei, username: id.imsi, level: pick([3, 4, 5, 4, 4, 255]), will: rand() < 0.3 }))];
  },
  mqtt_odd_connect: () => {
    const id = identity();
    return [
      connect({
        clientId: pick([id.imei, '', 'x'.repeat(200), bytes(30)]),
        username: rand() < 0.8 ? id.imsi : undefined,
        password: rand() < 0.3 ? bytes(int(100)) : undefined,
        name: pick(['MQTT', 'MQIsdp', 'HTTP', '']),
        level: pick([3, 4, 5, 0]),
        flags: int(256),
        keepalive: pick([0, 1, 65535]),
      }),
    ];
  },
  mqtt_valid_connect_then_mutated: () => {
    const id = identity();
    const seq = Array.from({ length: 1 + int(6) }, anyPacket);
    return [connect({ clientId: id.imei, username: id.imsi }), ...seq.map((p) => (rand() < 0.5 ? mutate(p) : p))];
  },
  mqtt_packets_before_connect: () => [anyPacket(), anyPacket()],
  mqtt_oversize_publish: () => {
    const id = identity();
    return [connect({ clientId: id.imei, username: id.imsi }), publish('big', Buffer.alloc(131072 + int(200_000)), 1)];
  },
  // Distinct retained topics of up to 100 KB each: a broker that kept them would grow without bound.
  mqtt_retained_flood: () => {
    const id = identity();
    const retained = Array.from({ length: 2 + int(4) }, () => publish(`state/${int(1e9)}`, Buffer.alloc(50_000 + int(50_000), 0x72), int(2), undefined, 1));
    return [connect({ clientId: id.imei, username: id.imsi }), ...retained];
  },
  mqtt_partial_packet: () => {
    const p = connect({ clientId: cmd!.imei, username: pick(cmd!.imsis) });
    return [p.subarray(0, 1 + int(p.length - 1))];
  },
};

// ---- MQTT 5 cases: properties, topic aliases, flow control -----------------------------------------

/** MQTT 5 properties: [identifier, value bytes] pairs, behind their varint length. */
const props = (pairs: Array<[number, Buffer]>) => {
  const body = Buffer.concat(pairs.map(([id, v]) => Buffer.concat([Buffer.from([id]), v])));
  return Buffer.concat([varint(body.length), body]);
};
const u32 = (n: number) => {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n >>> 0);
  return b;
};
function connect5(o: { clientId: string | Buffer; username?: string | Buffer; properties?: Buffer; flags?: number }): Buffer {
  let flags = o.flags ?? 0x02;
  if (o.username !== undefined) flags |= 0x80;
  const parts = [str('MQTT'), Buffer.from([5, flags]), u16(30), o.properties ?? props([]), str(o.clientId)];
  if (o.username !== undefined) parts.push(str(o.username));
  return packet(1, 0, Buffer.concat(parts));
}
const publish5 = (topic: string, payload: Buffer, qos: number, properties: Buffer, id = 1 + int(65535)) =>
  packet(3, qos << 1, Buffer.concat([str(topic), qos > 0 ? u16(id) : Buffer.alloc(0), properties, payload]));
const alias = (n: number) => props([[0x23, u16(n)]]);
const userProperty = () => [0x26, Buffer.concat([str(`k${int(10)}`), str(bytes(int(20)))])] as [number, Buffer];

function anyPacket5(): Buffer {
  switch (int(9)) {
    case 0:
      return publish5(pick(['', 't']), bytes(int(50)), int(2), alias(pick([0, 1, 17, 65535]))); // alias 0, unset, above the maximum
    case 1:
      return publish5('telemetry', bytes(int(50)), 1, props([userProperty(), userProperty()]));
    case 2:
      return publish5('telemetry', bytes(int(50)), int(2), props([[0x02, u32(int(100))], [0x01, Buffer.from([int(2)])]])); // expiry, payload format
    case 3:
      return publish5('telemetry', bytes(int(50)), 1, Buffer.concat([varint(40), bytes(40)])); // property bytes that mean nothing
    case 4:
      return packet(15, 0, Buffer.from([0x18, 0])); // AUTH (continue authentication), never offered
    case 5:
      return packet(14, 0, Buffer.from([pick([0x00, 0x04, 0x80, 0xff]), 0])); // DISCONNECT with a reason code
    case 6:
      return withId(4); // PUBACK for an id never sent
    default:
      return anyPacket();
  }
}

const mqtt5Cases: Record<string, () => Buffer[]> = {
  mqtt5_odd_connect: () => {
    const id = identity();
    const candidates: Array<[number, Buffer]> = [
      [0x11, u32(pick([0, 60, 0xffffffff]))], // session expiry
      [0x21, u16(pick([0, 1, 65535]))], // receive maximum (0 is a protocol error)
      [0x27, u32(pick([0, 10, 1 << 20]))], // maximum packet size (0 is a protocol error)
      [0x22, u16(int(65536))], // topic alias maximum
      [0x15, str('SCRAM-SHA-1')], // authentication method, never offered
      userProperty(),
    ];
    const properties = props(candidates.filter(() => rand() < 0.5));
    return [connect5({ clientId: id.imei, username: id.imsi, properties, flags: pick([0x00, 0x02, 0x03]) })];
  },
  mqtt5_mutated_connect: () => {
    const id = identity();
    return [mutate(connect5({ clientId: id.imei, username: id.imsi, properties: props([userProperty()]) }))];
  },
  mqtt5_valid_connect_then_packets: () => {
    const id = identity();
    const seq = Array.from({ length: 1 + int(6) }, anyPacket5);
    return [connect5({ clientId: id.imei, username: id.imsi }), ...seq.map((p) => (rand() < 0.3 ? mutate(p) : p))];
  },
  // More unanswered QoS 1 publishes than the advertised Receive Maximum, in one write.
  mqtt5_receive_maximum_flood: () => {
    const id = identity();
    const burst = Buffer.concat(Array.from({ length: 200 + int(200) }, (_, i) => publish5('telemetry', bytes(int(20)), 1, props([]), i + 1)));
    return [connect5({ clientId: id.imei, username: id.imsi }), burst];
  },
  // A remaining length announcing far more than the Maximum Packet Size, then a trickle.
  mqtt5_oversized_remaining_length: () => {
    const id = identity();
    return [connect5({ clientId: id.imei, username: id.imsi }), Buffer.from([0x32, 0xff, 0xff, 0xff, 0x7f]), bytes(1000)];
  },
};
Object.assign(mqttCases, mqtt5Cases);

// ---- HTTP cases -------------------------------------------------------------------------------------

function request(method: string, path: string, headers: string[], body: Buffer | string = ''): Buffer {
  return Buffer.concat([Buffer.from(`${method} ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\n${headers.map((h) => h + '\r\n').join('')}\r\n`), Buffer.from(body)]);
}
const idHeaders = () => {
  const id = identity();
  return [`X-IMSI: ${id.imsi.toString()}`, `X-IMEI: ${id.imei.toString()}`];
};

const httpCases: Record<string, () => { chunks: Buffer[]; gapMs?: number }> = {
  http_random_bytes: () => ({ chunks: [bytes(1 + int(4096))] }),
  http_bad_request_line: () => ({
    chunks: [Buffer.from(pick(['GET\r\n\r\n', 'POST /topics/x HTTP/9.9\r\n\r\n', 'POST  /topics/x  HTTP/1.1\r\n\r\n', '\u0000\u0001 / HTTP/1.1\r\n\r\n', 'POST /topics/x\r\n\r\n', `${'A'.repeat(10_000)} / HTTP/1.1\r\n\r\n`, 'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n']))],
  }),
  http_malformed_headers: () => ({
    chunks: [
      request('POST', '/topics/telemetry?qos=1', [
        ...idHeaders(),
        pick(['NoColonHeader', 'X-IMSI: 001010000000001\r\nX-IMSI: 001010000000002', 'X-Big: ' + 'b'.repeat(70_000), 'Content-Length: -1', 'Content-Length: abc', 'Content-Length: 5\r\nContent-Length: 7', 'Transfer-Encoding: chunked\r\nContent-Length: 3', ' X-Folded: value', 'X-IMEI: 1\u0000', 'Content-Type: \u00ff\u00fe']),
      ], 'hello'),
    ],
  }),
  http_bad_chunked: () => ({
    chunks: [request('POST', '/topics/telemetry?qos=1', [...idHeaders(), 'Transfer-Encoding: chunked'], pick(['zz\r\nabc\r\n0\r\n\r\n', 'ffffffffffff\r\nabc', '3\r\nabcdef\r\n0\r\n\r\n', '-1\r\n\r\n', '5\r\nab']))],
  }),
  http_huge_body: () => {
    const declared = pick([200_000, 10_000_000_000, 1_048_576]);
    return { chunks: [request('POST', '/topics/telemetry?qos=1', [...idHeaders(), `Content-Length: ${declared}`]), ...Array.from({ length: 4 + int(12) }, () => Buffer.alloc(65536, 0x61))] };
  },
  http_huge_chunked_body: () => ({
    chunks: [request('POST', '/topics/telemetry?qos=1', [...idHeaders(), 'Transfer-Encoding: chunked']), ...Array.from({ length: 6 }, () => Buffer.concat([Buffer.from('8000\r\n'), Buffer.alloc(0x8000, 0x62), Buffer.from('\r\n')]))],
  }),
  http_bad_identity: () => ({ chunks: [request('POST', '/topics/telemetry?qos=1', rand() < 0.2 ? [] : idHeaders(), 'x')] }),
  http_bad_path_or_query: () => ({
    chunks: [
      request(
        pick(['POST', 'GET', 'PUT', 'DELETE', 'OPTIONS', 'BREW']),
        pick(['/topics/', '/topics/a/+/b?qos=1', '/topics/%23?qos=1', '/topics/%00?qos=1', '/topics/..%2F..%2Fetc?qos=1', '/topics/t?qos=abc', '/topics/t?qos=2', '/topics/t?qos=-1', '/topics/t?qos=1e9', '/topics/t?qos=1&qos=0', `/topics/${'z/'.repeat(20)}`, `/topics/${'y'.repeat(5000)}`, '/topics/%E0%A4%A?qos=1', '/', '*', '/topics/t?' + '&a=1'.repeat(2000)]),
        idHeaders(),
        'payload',
      ),
    ],
  }),
  http_pipelined_mix: () => ({
    chunks: [Buffer.concat([request('POST', '/topics/t?qos=1', idHeaders(), ''), bytes(int(64)), request('POST', '/topics/t?qos=1', idHeaders(), '')])],
  }),
  http_slow_headers: () => ({ chunks: Array.from({ length: 5 }, (_, i) => Buffer.from(i === 0 ? 'POST /topics/t?qos=1 HTTP/1.1\r\n' : `X-H${i}: ${'v'.repeat(10)}\r\n`)), gapMs: 60 }),
};

// ---- CoAP and raw UDP: datagrams -------------------------------------------------------------------

/** Sends datagrams from one source address and collects the answers for a short while. */
function datagramExchange(port: number, datagrams: Buffer[], waitMs = 300): Promise<Buffer[]> {
  return new Promise((resolve) => {
    const sock = createSocket('udp4');
    const got: Buffer[] = [];
    sock.on('error', () => undefined);
    sock.on('message', (m) => got.push(m));
    sock.bind(0, source(), () => {
      for (const d of datagrams) sock.send(d, port, cmd!.host);
      setTimeout(() => (sock.close(), resolve(got)), waitMs);
    });
  });
}

/** A CoAP request header and options, written by hand so that invalid ones can be written too. */
function coap(o: { type?: number; code?: number; id?: number; token?: Buffer; options?: Array<[number, Buffer]>; payload?: Buffer; version?: number }): Buffer {
  const token = o.token ?? bytes(int(9));
  const head = Buffer.from([((o.version ?? 1) << 6) | ((o.type ?? 0) << 4) | (token.length & 15), o.code ?? 2, 0, 0]);
  head.writeUInt16BE(o.id ?? int(65536), 2);
  let last = 0;
  const opts: Buffer[] = [];
  for (const [num, value] of (o.options ?? []).sort((a, b) => a[0] - b[0])) {
    const delta = num - last;
    last = num;
    const ext = (n: number) => (n < 13 ? [n, Buffer.alloc(0)] : n < 269 ? [13, Buffer.from([n - 13])] : [14, u16(n - 269)]) as [number, Buffer];
    const [d, dx] = ext(delta);
    const [l, lx] = ext(value.length);
    opts.push(Buffer.from([(d << 4) | l]), dx, lx, value);
  }
  const body = o.payload?.length ? [Buffer.from([0xff]), o.payload] : [];
  return Buffer.concat([head, token, ...opts, ...body]);
}
const uri = (path: string, query: string[] = []): Array<[number, Buffer]> => [
  ...path.split('/').map((p) => [11, Buffer.from(p)] as [number, Buffer]),
  ...query.map((q) => [15, Buffer.from(q)] as [number, Buffer]),
];
const claimQuery = () => [`imsi=${pick(cmd!.imsis)}`, `imei=${cmd!.imei}`];
const block1 = (num: number, more: boolean, szx: number) => {
  const v = (num << 4) | (more ? 8 : 0) | szx;
  return v < 256 ? Buffer.from([v]) : v < 65536 ? u16(v) : Buffer.from([v >> 16, (v >> 8) & 255, v & 255]);
};
const goodCoap = () => coap({ options: uri('topics/telemetry', claimQuery()), payload: bytes(50) });

const coapCases: Record<string, () => Buffer[]> = {
  coap_random: () => [bytes(1 + int(300))],
  coap_mutated: () => [mutate(goodCoap())],
  coap_truncated: () => [goodCoap().subarray(0, int(40))],
  coap_bad_version: () => [coap({ version: pick([0, 2, 3]), options: uri('topics/t') })],
  coap_bad_type_or_code: () => [coap({ type: int(4), code: int(256), options: uri(pick(['topics/t', 'self', 'downlink', 'x'])), payload: bytes(int(40)) })],
  coap_unknown_critical: () => [coap({ options: [...uri('topics/t', claimQuery()), [pick([1, 5, 9, 35, 39, 2049, 65001]), bytes(int(20))]], payload: bytes(10) })],
  coap_weird_topic: () => [coap({ options: uri(`topics/${pick(weirdTopics)}`, claimQuery()), payload: bytes(10) })],
  coap_bad_identity: () => [coap({ options: uri('topics/t', [`imsi=${pick(['', '12', 'x'.repeat(20), '0010100000000001234'])}`, `imei=${pick(['', '1', '490154203237519'])}`]) })],
  coap_block_gap: () => [coap({ options: [...uri('topics/t', claimQuery()), [27, block1(1 + int(50), true, 6)]], payload: bytes(1024) })],
  coap_block_huge: () => [coap({ options: [...uri('topics/t', claimQuery()), [27, block1(100_000 + int(900_000), true, 6)], [60, Buffer.from([0x7f, 0xff, 0xff, 0xff])]], payload: bytes(1024) })],
  coap_block_bad_size: () => [coap({ options: [...uri('topics/t', claimQuery()), [27, block1(0, true, int(8))]], payload: bytes(int(100)) })],
  coap_oversize: () => [Buffer.concat([Buffer.from([0x40, 0x02, int(256), int(256)]), bytes(2000 + int(8000))])],
  coap_flood: () => Array.from({ length: 150 }, () => goodCoap()),
  coap_ping: () => [coap({ code: 0, token: Buffer.alloc(0) })],
  coap_valid: () => [goodCoap()],
};

const udpCases: Record<string, () => Buffer[]> = {
  udp_random: () => [bytes(1 + int(500))],
  udp_oversize: () => [bytes(1500 + int(8000))],
  udp_empty: () => [Buffer.alloc(0)],
  udp_flood: () => Array.from({ length: 150 }, () => bytes(20)),
};

async function datagramRound(kind: string): Promise<void> {
  const c = cmd!;
  const isCoap = kind.startsWith('coap');
  const answers = await datagramExchange(isCoap ? c.coapPort! : c.udpPort!, (isCoap ? coapCases : udpCases)[kind]());
  const counts = (result.datagramAnswers ??= {});
  for (const a of answers) {
    const cls = isCoap ? (((a[0] ?? 0) >> 4) & 3) === 3 ? 'RST' : `${(a[1] ?? 0) >> 5}.xx` : `udp 0x0${a[0] ?? 0}`;
    counts[cls] = (counts[cls] ?? 0) + 1;
  }
}

async function round(): Promise<void> {
  const c = cmd!;
  // A quarter of the rounds go to the datagram listeners when the gateway has them.
  if ((c.coapPort || c.udpPort) && rand() < 0.25) {
    const kinds = [...(c.coapPort ? Object.keys(coapCases) : []), ...(c.udpPort ? Object.keys(udpCases) : [])];
    const kind = pick(kinds);
    result.byKind[kind] = (result.byKind[kind] ?? 0) + 1;
    return datagramRound(kind);
  }
  const useMqtt = rand() < 0.5;
  // A flood is hundreds of sockets: drawn at a quarter of the rate of each other kind.
  const common = useMqtt ? Object.keys(mqttCases) : [...Object.keys(httpCases), 'http_stalled_body'];
  const kind = rand() < 1 / (4 * common.length + 1) ? (useMqtt ? 'mqtt_connection_flood' : 'http_connection_flood') : pick(common);
  result.byKind[kind] = (result.byKind[kind] ?? 0) + 1;
  if (kind === 'mqtt_connection_flood') {
    // Half stay silent after the TCP handshake (each holds a place until the CONNECT timeout); half CONNECT
    // as one SIM under IMEISV variants, as a device that reconnects under a new client id each time would.
    const imsi = pick(c.imsis);
    const clientId = () => c.imei.slice(0, 14) + String(int(100)).padStart(2, '0');
    const first = () => (rand() < 0.5 ? Buffer.alloc(0) : rand() < 0.5 ? connect({ clientId: clientId(), username: imsi, keepalive: 0 }) : connect5({ clientId: clientId(), username: imsi }));
    for (const reply of await flood(c.mqttPort, MQTT_FLOOD_SOURCE, FLOOD_CONNECTIONS.mqtt, first)) countConnacks(reply);
    return;
  }
  if (kind === 'http_connection_flood') {
    // No identity: the answer (400, or 503 past the cap) needs no lookup, so the flood measures the cap.
    const first = () => request('GET', '/v1/self', []);
    for (const reply of await flood(c.httpPort, HTTP_FLOOD_SOURCE, FLOOD_CONNECTIONS.http, first)) countHttp(kind, reply, first());
    return;
  }
  if (kind === 'http_stalled_body') return stallBody(c.httpPort);
  if (useMqtt) {
    const r = await exchange(c.mqttPort, mqttCases[kind](), 400);
    if (r.error === 'ECONNREFUSED') result.connectErrors++;
    countConnacks(r.reply);
    return;
  }
  const { chunks, gapMs } = httpCases[kind]();
  const r = await exchange(c.httpPort, chunks, 800, gapMs);
  if (r.error === 'ECONNREFUSED') result.connectErrors++;
  countHttp(kind, r.reply, chunks[0]);
}

async function fuzz(c: FuzzCmd): Promise<FuzzResult> {
  cmd = c;
  state = c.seed | 0;
  const started = Date.now();
  let issued = 0;
  const lane = async () => {
    while (issued < c.rounds && Date.now() - started < c.durationMs) {
      issued++;
      await round();
      result.rounds++;
    }
  };
  await Promise.all(Array.from({ length: c.concurrency }, lane));
  result.elapsedMs = Date.now() - started;
  // Stalled bodies are the gateway's to close (its request and idle timeouts); give it the time to.
  const waitUntil = Date.now() + STALLED_WAIT_MS;
  while (stalled.size && Date.now() < waitUntil) await new Promise((r) => setTimeout(r, 250));
  for (const s of [...stalled]) (stalled.delete(s), s.destroy());
  return result;
}

serveCommands<FuzzCmd>(fuzz);
