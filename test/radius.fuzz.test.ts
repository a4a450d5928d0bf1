import { isIPv4 } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isImsi, luhnDigit } from '../lib/ids.ts';
import { parseAccountingRequest } from '../bridge/radius/accounting.ts';
import { signAccountingRequest } from '../bridge/radius/authenticator.ts';
import { decodePacket, encodePacket, encodeVendorSpecific, type Attribute } from '../bridge/radius/codec.ts';
import { startRadiusListener, type RadiusListener, type RadiusLogger } from '../bridge/radius/listener.ts';
import { AccountingClient, buildAccountingRequest } from '../bridge/radius/request.ts';
import { openDatabase, type Db } from '../storage/db.ts';
import { tempDir } from './helpers/processes.ts';

const SECRET = 'fuzz-secret';
const SEED = Number(process.env.RADIUS_FUZZ_SEED ?? 20240611);

/** mulberry32: a small seeded PRNG, so that a failure can be replayed with RADIUS_FUZZ_SEED. */
function rng(seed: number) {
  let a = seed >>> 0;
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const int = (n: number) => Math.floor(next() * n);
  const bytes = (n: number) => Buffer.from(Array.from({ length: n }, () => int(256)));
  const pick = <T>(xs: readonly T[]): T => xs[int(xs.length)]!;
  return { next, int, bytes, pick };
}
type Rng = ReturnType<typeof rng>;

const IPS = ['10.9.0.1', '10.9.0.2', '10.9.0.3', '10.9.0.4'];
const IMSIS = ['001010000000301', '001010000000302', '001010000000303'];

/** A well-formed request from a small pool of IPs, sessions and SIMs, so that Starts, Stops and evictions collide. */
function validRequest(r: Rng, identifier: number): Buffer {
  return buildAccountingRequest(
    {
      identifier,
      status: r.pick(['Start', 'Start', 'InterimUpdate', 'Stop', 'Stop', 'AccountingOn'] as const),
      framedIp: r.pick(IPS),
      acctSessionId: `s-${r.int(4)}`,
      imsi: r.pick(IMSIS),
      imeisv: r.pick(['4901542032375101', '490154203237510', '1234', { bcd: '4901542032375101' }, { bcd: '490154203237518' }]),
      ratType: r.pick([6, 8, 9]),
      nasIp: r.pick(['192.0.2.1', '192.0.2.2']),
    },
    SECRET,
  );
}

/** Attributes with plausible types and arbitrary values: signed, they get past framing and authentication. */
function randomAttributes(r: Rng): Attribute[] {
  const attrs: Attribute[] = [];
  for (let i = r.int(12); i > 0; i--) {
    const type = r.pick([40, 40, 8, 44, 31, 4, 32, 26, 26, 33, r.int(256)]);
    if (type === 26 && r.next() < 0.8) {
      const subs = Array.from({ length: 1 + r.int(3) }, () => ({ type: r.pick([1, 2, 20, 21, r.int(256)]), value: r.bytes(r.int(20)) }));
      attrs.push({ type, value: encodeVendorSpecific(r.pick([10415, 10415, 9]), subs) });
    } else {
      const len = r.pick([0, 1, 4, 4, 8, r.int(254)]);
      attrs.push({ type, value: type === 40 && len === 4 ? Buffer.from([0, 0, 0, r.pick([1, 2, 3, 7, 8, 15])]) : r.bytes(len) });
    }
  }
  return attrs;
}

/** Damage of the kinds a hostile or broken peer produces. */
function mutate(r: Rng, packet: Buffer): Buffer {
  const b = Buffer.from(packet);
  switch (r.int(7)) {
    case 0: // bit flips
      for (let i = 1 + r.int(4); i > 0; i--) b[r.int(b.length)]! ^= 1 << r.int(8);
      return b;
    case 1: // truncation
      return b.subarray(0, r.int(b.length));
    case 2: // Length field lies
      b.writeUInt16BE(r.pick([0, 19, 20, b.length - 1, b.length + 1, 4096, 4097, 65535, r.int(65536)]), 2);
      return b;
    case 3: // an attribute Length lies
      if (b.length > 21) b[21] = r.pick([0, 1, 2, 255, r.int(256)]);
      return b;
    case 4: // huge VSAs up to and past the 4096 limit
      return Buffer.concat([b, ...Array.from({ length: 1 + r.int(20) }, () => Buffer.concat([Buffer.from([26, 255, 0, 0, 0x28, 0xaf, 1, 249]), r.bytes(247)]))]);
    case 5: // padding after Length
      return Buffer.concat([b, r.bytes(r.int(64))]);
    default: // pure noise
      return r.bytes(r.int(200));
  }
}

describe('RADIUS decoder under random and mutated input', () => {
  it('never throws, and what it accepts is consistent', () => {
    const r = rng(SEED);
    let accepted = 0;
    for (let i = 0; i < 4000; i++) {
      const base = r.next() < 0.5 ? validRequest(r, i & 0xff) : encodePacket({ code: r.int(256), identifier: i & 0xff, attributes: randomAttributes(r) });
      const input = r.next() < 0.8 ? mutate(r, base) : base;
      const d = decodePacket(input);
      if (!d.ok) continue;
      accepted++;
      const p = d.value;
      expect(p.bytes.length).toBe(input.readUInt16BE(2));
      expect(p.attributes.reduce((n, a) => n + 2 + a.value.length, 20)).toBe(p.bytes.length);
      const parsed = parseAccountingRequest(p, '127.0.0.1'); // must not throw either
      if (parsed.ok && (parsed.value.kind === 'start' || parsed.value.kind === 'interim')) {
        expect(isIPv4(parsed.value.report.ip)).toBe(true);
        expect(isImsi(parsed.value.report.imsi)).toBe(true);
      }
    }
    expect(accepted).toBeGreaterThan(500); // the run did reach past framing
  });
});

describe('RADIUS listener under random and mutated traffic', () => {
  let db: Db;
  let listener: RadiusListener;
  let nas: AccountingClient;
  const errors: string[] = [];
  const logger: RadiusLogger = { debug() {}, info() {}, warn() {}, error: (_o, msg) => errors.push(msg ?? '') };
  let ends = 0;

  beforeAll(async () => {
    db = openDatabase({ file: join(tempDir('radius-fuzz'), 'db.sqlite'), synchronous: 'normal' });
    listener = await startRadiusListener({ host: '127.0.0.1', port: 0, clients: [{ address: '127.0.0.1', secret: SECRET }], db, logger });
    listener.on('session-end', () => ends++);
    listener.on('session-start', () => {
      throw new Error('a careless handler'); // must not break the listener
    });
    nas = await AccountingClient.open({ host: '127.0.0.1', port: listener.port, secret: SECRET, localAddress: '127.0.0.1' });
  });

  afterAll(async () => {
    await nas?.close();
    await listener?.close();
    db?.close();
  });

  it('survives thousands of hostile packets, keeps its table consistent and still answers', async () => {
    const r = rng(SEED + 1);
    const secret = Buffer.from(SECRET);
    for (let i = 0; i < 3000; i++) {
      const id = i & 0xff;
      let packet: Buffer;
      const kind = r.int(4);
      if (kind === 0) packet = validRequest(r, id);
      else if (kind === 1) packet = mutate(r, validRequest(r, id)); // unsigned damage: fails framing or authentication
      else if (kind === 2) packet = signAccountingRequest(encodePacket({ code: 4, identifier: id, attributes: randomAttributes(r) }), secret);
      else {
        // damage, then a valid signature over it when it still frames: reaches the accounting parser
        packet = mutate(r, validRequest(r, id));
        if (packet.length >= 20 && packet.length <= 4096 && packet.readUInt16BE(2) === packet.length) signAccountingRequest(packet, secret);
      }
      nas.send(packet);
      if (i % 50 === 49) await new Promise((resolve) => setTimeout(resolve, 2)); // let the listener drain its socket
    }

    const probe = buildAccountingRequest({ identifier: 7, status: 'Start', framedIp: '10.9.9.9', acctSessionId: 'probe', imsi: '001010000000399' }, SECRET);
    let reply: Buffer | undefined;
    for (let attempt = 0; attempt < 5 && !reply; attempt++) reply = await nas.request(probe, 1000);
    expect(reply).toBeDefined();

    const c = listener.counters;
    const droppedTotal = Object.values(c.dropped).reduce((a, b) => a + b, 0);
    expect(c.received).toBe(c.accepted + c.duplicates + droppedTotal); // every datagram accounted for
    expect(c.accepted).toBeGreaterThan(500);
    expect(c.dropped.store_failed).toBeUndefined();
    expect(errors.filter((m) => m !== 'radius event handler threw')).toEqual([]);
    expect(ends).toBeGreaterThan(0);

    const rows = db.prepare('SELECT * FROM network_sessions').all() as Array<Record<string, unknown>>;
    for (const row of rows) {
      expect(isIPv4(row.ip as string), JSON.stringify(row)).toBe(true);
      expect(isImsi(row.imsi as string), JSON.stringify(row)).toBe(true);
      const imei = row.imei as string | null;
      if (imei !== null) expect(/^\d{15}$/.test(imei) && luhnDigit(imei.slice(0, 14)) === Number(imei[14])).toBe(true);
      expect(row.acct_session_id).not.toBe('');
      expect(row.updated_at as number).toBeGreaterThanOrEqual(row.started_at as number);
    }
    expect(db.prepare('SELECT ip FROM network_sessions GROUP BY ip HAVING count(*) > 1').all()).toEqual([]);
    expect(db.pragma('integrity_check', { simple: true })).toBe('ok');
  });
});
