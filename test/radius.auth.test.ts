import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { verifyAccountingResponse } from '../bridge/radius/authenticator.ts';
import { startRadiusListener, type RadiusListener } from '../bridge/radius/listener.ts';
import { AccountingClient, buildAccountingRequest, type AccountingRequestInput } from '../bridge/radius/request.ts';
import { openDatabase, type Db } from '../storage/db.ts';
import { tempDir } from './helpers/processes.ts';

const SECRET = 'auth-test-secret';
const IMSI = '001010000000201';
const QUIET_MS = 300; // long enough on loopback for a reply that would come

describe('RADIUS listener: authenticity, duplicates, drops (raw UDP)', () => {
  let db: Db;
  let listener: RadiusListener;
  let nas: AccountingClient;
  let clock = Date.now();
  let nextId = 0;

  const start = (over: Partial<AccountingRequestInput> = {}): AccountingRequestInput => ({
    identifier: nextId++ & 0xff,
    status: 'Start',
    framedIp: '10.1.0.1',
    acctSessionId: 's-1',
    imsi: IMSI,
    imeisv: '4901542032375101',
    ...over,
  });
  const dropped = (reason: string) => listener.counters.dropped[reason] ?? 0;
  /** Sends junk and waits until the listener has counted it. */
  async function sendJunk(datagram: Buffer, from = nas): Promise<void> {
    const received = listener.counters.received;
    from.send(datagram);
    await vi.waitFor(() => expect(listener.counters.received).toBe(received + 1));
  }

  beforeAll(async () => {
    db = openDatabase({ file: join(tempDir('radius-auth'), 'db.sqlite'), synchronous: 'full' });
    listener = await startRadiusListener({
      host: '127.0.0.1',
      port: 0,
      clients: [{ address: '127.0.0.0/30', secret: SECRET }],
      db,
      replyCacheMs: 10_000,
      now: () => clock,
    });
    nas = await AccountingClient.open({ host: '127.0.0.1', port: listener.port, secret: SECRET, localAddress: '127.0.0.1' });
  });

  afterAll(async () => {
    await nas?.close();
    await listener?.close();
    db?.close();
  });

  it('answers a valid Start with a correct Accounting-Response after storing it', async () => {
    const proxyState = { type: 33, value: Buffer.from('hop-1') };
    const req = buildAccountingRequest(start({ extra: [proxyState] }), SECRET);
    const reply = await nas.request(req);
    expect(reply).toBeDefined();
    expect(reply![0]).toBe(5);
    expect(reply![1]).toBe(req[1]);
    expect(reply!.readUInt16BE(2)).toBe(reply!.length);
    expect(verifyAccountingResponse(reply!, req.subarray(4, 20), Buffer.from(SECRET))).toBe(true);
    expect(reply!.subarray(20)).toEqual(Buffer.from([33, 7, ...Buffer.from('hop-1')])); // RFC 2865 §5.33
    expect(listener.sessions.byIp('10.1.0.1')).toMatchObject({ imsi: IMSI, imei: '490154203237518', updates: 1 });
  });

  it('ignores a packet signed with another secret, and one whose authenticator was altered', async () => {
    const before = JSON.stringify(await listener.store.list());
    const bad = dropped('bad_authenticator');
    const wrongSecret = buildAccountingRequest(start({ framedIp: '10.1.0.1', acctSessionId: 'hijack', imsi: '001019999999999' }), 'guessed');
    expect(await nas.request(wrongSecret, QUIET_MS)).toBeUndefined();
    for (const positions of [[4], [9, 10], [17, 18, 19]]) {
      const altered = buildAccountingRequest(start({ framedIp: '10.1.0.9', acctSessionId: 'alt' }), SECRET);
      for (const at of positions) altered[at]! ^= 0x5a;
      expect(await nas.request(altered, QUIET_MS)).toBeUndefined();
    }
    expect(dropped('bad_authenticator')).toBe(bad + 4);
    expect(JSON.stringify(await listener.store.list())).toBe(before);
  });

  it('answers a retransmitted Start with the byte-identical reply without applying it again', async () => {
    const req = buildAccountingRequest(start({ framedIp: '10.1.0.2', acctSessionId: 's-2' }), SECRET);
    const accepted = listener.counters.accepted;
    const first = await nas.request(req);
    const second = await nas.request(req);
    const third = await nas.request(req);
    expect(first).toBeDefined();
    expect(second).toEqual(first);
    expect(third).toEqual(first);
    expect(listener.counters.accepted).toBe(accepted + 1);
    expect(listener.counters.duplicates).toBeGreaterThanOrEqual(2);
    expect(listener.sessions.byIp('10.1.0.2')?.updates).toBe(1);

    // The same octets from another source port are another request (RFC 5080 §2.2.2 keys on the source).
    const other = await AccountingClient.open({ host: '127.0.0.1', port: listener.port, secret: SECRET, localAddress: '127.0.0.1' });
    expect(await other.request(req)).toBeDefined();
    await other.close();
    expect(listener.sessions.byIp('10.1.0.2')?.updates).toBe(2);

    // Once the cached reply has expired, a retransmission is a new record again.
    clock += 10_001;
    expect(await nas.request(req)).toBeDefined();
    expect(listener.sessions.byIp('10.1.0.2')?.updates).toBe(3);
  });

  it('drops, and counts, packets from sources not in the client list', async () => {
    const unknown = dropped('unknown_client');
    const outsider = await AccountingClient.open({ host: '127.0.0.1', port: listener.port, secret: SECRET, localAddress: '127.0.0.9' });
    expect(await outsider.request(buildAccountingRequest(start({ framedIp: '10.1.0.3' }), SECRET), QUIET_MS)).toBeUndefined();
    await outsider.close();
    expect(dropped('unknown_client')).toBe(unknown + 1);
    expect(listener.sessions.byIp('10.1.0.3')).toBeUndefined();
  });

  it('counts truncated, oversize and otherwise malformed packets by reason', async () => {
    const valid = buildAccountingRequest(start({ framedIp: '10.1.0.4' }), SECRET);
    const before = { ...listener.counters.dropped };
    const delta = (reason: string) => dropped(reason) - (before[reason] ?? 0);
    await sendJunk(valid.subarray(0, 12));
    await sendJunk(valid.subarray(0, valid.length - 3));
    await sendJunk(Buffer.alloc(5000, 1));
    const lengthLie = Buffer.from(valid);
    lengthLie.writeUInt16BE(12, 2);
    await sendJunk(lengthLie);
    const attrLie = Buffer.from(valid);
    attrLie[21] = 1;
    await sendJunk(attrLie);
    const accessRequest = Buffer.from(valid);
    accessRequest[0] = 1;
    await sendJunk(accessRequest);
    expect({
      truncated: delta('truncated'),
      oversize: delta('oversize'),
      bad_length: delta('bad_length'),
      bad_attribute: delta('bad_attribute'),
      not_accounting_request: delta('not_accounting_request'),
    }).toEqual({ truncated: 2, oversize: 1, bad_length: 1, bad_attribute: 1, not_accounting_request: 1 });
    // Signed but meaningless: no IMSI.
    expect(await nas.request(buildAccountingRequest(start({ imsi: undefined }), SECRET), QUIET_MS)).toBeUndefined();
    expect(delta('missing_attribute')).toBe(1);
    expect(listener.sessions.byIp('10.1.0.4')).toBeUndefined();
  });

  it('does not answer when the store fails, and applies the retransmission once it works again', async () => {
    db.exec(`CREATE TRIGGER refuse BEFORE INSERT ON network_sessions WHEN NEW.ip = '10.1.0.5' BEGIN SELECT RAISE(ABORT, 'disk says no'); END`);
    const failing = buildAccountingRequest(start({ framedIp: '10.1.0.5', acctSessionId: 's-5' }), SECRET);
    const fine = buildAccountingRequest(start({ framedIp: '10.1.0.6', acctSessionId: 's-6' }), SECRET);
    const failed = dropped('store_failed');
    // Both in one group commit: the failing record must not take the other one down.
    const [a, b] = await Promise.all([nas.request(failing, QUIET_MS), nas.request(fine, QUIET_MS)]);
    expect(a).toBeUndefined();
    expect(b).toBeDefined();
    expect(dropped('store_failed')).toBe(failed + 1);
    expect(listener.sessions.byIp('10.1.0.5')).toBeUndefined();
    expect(listener.sessions.byIp('10.1.0.6')).toBeDefined();
    db.exec('DROP TRIGGER refuse');
    expect(await nas.request(failing)).toBeDefined();
    expect(listener.sessions.byIp('10.1.0.5')?.updates).toBe(1);
  });

  it('serves IPv6 clients and IPv4 ones on a dual-stack socket', async () => {
    const dual = await startRadiusListener({ host: '::', port: 0, clients: [{ address: '::1/128', secret: SECRET }, { address: '127.0.0.1', secret: SECRET }], db, now: () => clock });
    const v6 = await AccountingClient.open({ host: '::1', port: dual.port, secret: SECRET });
    const v4 = await AccountingClient.open({ host: '127.0.0.1', port: dual.port, secret: SECRET });
    expect(await v6.request(buildAccountingRequest(start({ framedIp: '10.1.6.6', acctSessionId: 'v6' }), SECRET))).toBeDefined();
    expect(await v4.request(buildAccountingRequest(start({ framedIp: '10.1.4.4', acctSessionId: 'v4' }), SECRET))).toBeDefined();
    expect(dual.sessions.byIp('10.1.6.6')?.nasIp).toBe('::1');
    expect(dual.sessions.byIp('10.1.4.4')?.nasIp).toBe('127.0.0.1'); // not ::ffff:127.0.0.1
    await v6.close();
    await v4.close();
    await dual.close();
    db.exec("DELETE FROM network_sessions WHERE ip IN ('10.1.6.6', '10.1.4.4')");
  });

  it('ends sessions without updates for sessionTimeoutMs', async () => {
    const short = await startRadiusListener({ host: '127.0.0.1', port: 0, clients: [{ address: '127.0.0.1', secret: SECRET }], db, sessionTimeoutMs: 60_000, now: () => clock });
    const ended: string[] = [];
    short.on('session-end', (s, cause) => ended.push(`${s.ip} ${cause}`));
    clock += 30_000;
    const client = await AccountingClient.open({ host: '127.0.0.1', port: short.port, secret: SECRET });
    expect(await client.request(buildAccountingRequest(start({ framedIp: '10.1.0.1', acctSessionId: 's-1', status: 'InterimUpdate' }), SECRET))).toBeDefined();
    clock += 31_000;
    await short.expireNow();
    expect(ended.sort()).toEqual(['10.1.0.2 expired', '10.1.0.5 expired', '10.1.0.6 expired']);
    expect((await short.store.list()).map((s) => s.ip)).toEqual(['10.1.0.1']);
    await client.close();
    await short.close();
  });
});
