// The credential store's compare-and-set rules, against SQLite and PostgreSQL alike: a process that lost
// its lease, or a row retired under it, records nothing; a SIM never has two generations being vended
// nor zero or two certificates in use; a step's audit event commits with it or not at all.
import { describe, expect, it } from 'vitest';
import type { NewKey } from '../storage/credentials.ts';
import { storeDialects } from './helpers/store-dialects.ts';

const IMSI = '001010000000401';
const MIN = 60_000;

const key = (purpose: NewKey['purpose'] = 'first', sealed = 'sealed-1'): NewKey => ({
  imsi: IMSI,
  thingName: 'sim-401',
  purpose,
  keyAlg: 'ec-p256',
  keyEnc: Buffer.from(sealed),
  csrPem: 'csr',
  pubkeySha256: 'ab'.repeat(32),
});

describe.each(storeDialects())('credentials on $name', (dialect) => {
  async function setup() {
    const f = await dialect.fresh();
    await f.stores.sims.register({ imsi: IMSI, group: 'default', thingName: 'sim-401' });
    return f.credentials;
  }

  it('write a step and its audit event in one commit, and neither when the step is fenced off', async () => {
    const f = await dialect.fresh();
    await f.stores.sims.register({ imsi: IMSI, group: 'default', thingName: 'sim-401' });
    const c = f.credentials;
    const gen = (await c.createGeneration(key(), 'n', MIN))!;
    const created = { kind: 'certificate_created' as const, imsi: IMSI, detail: { certificateId: 'c1' } };
    expect(await c.advance(gen.id, 'other', 'key', 'certificate', { certId: 'c1' }, created)).toBe(false);
    expect((await f.stores.audit.query({ imsi: IMSI })).items).toEqual([]);
    expect(await c.advance(gen.id, 'n', 'key', 'certificate', { certId: 'c1' }, created)).toBe(true);
    await c.advance(gen.id, 'n', 'certificate', 'policy');
    expect(await c.promote(gen.id, 'other', 0, () => ({ kind: 'vended', imsi: IMSI, detail: {} }))).toEqual({ ok: false });
    const promoted = await c.promote(gen.id, 'n', 0, (previous) => ({ kind: 'vended', imsi: IMSI, detail: { replaces: previous?.certId ?? null } }));
    expect(promoted.ok).toBe(true);
    const events = (await f.stores.audit.query({ imsi: IMSI })).items.map((e) => [e.kind, e.detail]);
    expect(events).toEqual([['vended', { replaces: null }], ['certificate_created', { certificateId: 'c1' }]]);
  });

  it('vend one generation at a time, step by step, only under the lease, and promote it', async () => {
    const c = await setup();
    const gen = (await c.createGeneration(key(), 'node-a', MIN))!;
    expect(gen).toMatchObject({ step: 'key', leaseOwner: 'node-a', keyEnc: Buffer.from('sealed-1') });
    expect(await c.createGeneration(key(), 'node-b', MIN)).toBeUndefined(); // one being vended already
    expect(await c.acquireLease(gen.id, 'node-b', MIN)).toBe(false);
    expect(await c.acquireLease(gen.id, 'node-b', MIN, (holder) => holder === 'node-a')).toBe(true); // a dead holder is taken over
    expect(await c.markCsrSent(gen.id, 'node-a', 0)).toBe(false); // lost its lease: records nothing
    expect(await c.markCsrSent(gen.id, 'node-b', 0)).toBe(true);
    expect(await c.markCsrSent(gen.id, 'node-b', 5000)).toBe(true); // a second send: flagged for an orphan check
    expect((await c.byId(gen.id))?.orphanCheckAt).toBe(5000);
    expect(await c.advance(gen.id, 'node-b', 'csr_sent', 'certificate', { certId: 'c1', certPem: 'pem', notAfter: 9e12 })).toBe(true);
    expect(await c.advance(gen.id, 'node-b', 'csr_sent', 'certificate')).toBe(false); // not from that step any more
    for (const [from, to] of [['certificate', 'thing'], ['thing', 'policy']] as const) expect(await c.advance(gen.id, 'node-b', from, to)).toBe(true);
    expect(await c.promote(gen.id, 'node-a', 0)).toEqual({ ok: false });
    expect(await c.promote(gen.id, 'node-b', 0)).toEqual({ ok: true, previous: undefined });
    expect(await c.ready(IMSI)).toMatchObject({ id: gen.id, certId: 'c1', leaseOwner: null });
    expect(await c.createGeneration(key(), 'node-a', MIN)).toBeUndefined(); // a first vend of a SIM that has a certificate
    expect(await c.knownCertificateIds(['c1', 'c2'])).toEqual(new Set(['c1']));
    expect(await c.countByState()).toEqual({ ready: 1, vending: 0 });
  });

  it('rotate: the new certificate goes in use and the old one retires, its key wiped once retired', async () => {
    const c = await setup();
    const first = (await c.createGeneration(key(), 'n', MIN))!;
    for (const [from, to] of [['key', 'certificate'], ['certificate', 'thing'], ['thing', 'policy']] as const) await c.advance(first.id, 'n', from, to, { certId: `cert-${to}` });
    await c.promote(first.id, 'n', 0);
    const next = (await c.createGeneration(key('rotation', 'sealed-2'), 'n', MIN))!;
    expect(await c.vending(IMSI)).toMatchObject({ id: next.id, purpose: 'rotation' });
    expect(await c.expiring(Number.MAX_SAFE_INTEGER, 10)).toEqual([]); // being re-vended already
    await c.advance(next.id, 'n', 'key', 'policy');
    const promoted = await c.promote(next.id, 'n', 1234);
    expect(promoted.previous).toMatchObject({ id: first.id, step: 'retiring', retireReason: 'rotated', retireAfter: 1234 });
    expect((await c.dueRetirements(10)).map((r) => r.id)).toEqual([first.id]);
    await c.acquireLease(first.id, 'n', MIN);
    expect(await c.markRetired(first.id, 'n')).toBe(true);
    expect((await c.byId(first.id))?.keyEnc.length).toBe(0);
    expect((await c.sealedKeys(0, 10)).map((k) => k.keyEnc.toString())).toEqual(['sealed-2']);
    expect(await c.replaceSealedKey(next.id, Buffer.from('stale'), Buffer.from('sealed-3'))).toBe(false);
    expect(await c.replaceSealedKey(next.id, Buffer.from('sealed-2'), Buffer.from('sealed-3'))).toBe(true);
    expect((await c.anySealedKey())?.keyEnc.toString()).toBe('sealed-3');
    expect((await c.history(IMSI)).map((r) => r.step)).toEqual(['retired', 'ready']);
  });

  it('revoke: every live generation retires; orphan checks wait until the certificate request is over', async () => {
    const c = await setup();
    const gen = (await c.createGeneration(key(), 'n', MIN))!;
    await c.flagOrphanCheck(gen.id, 100);
    await c.flagOrphanCheck(gen.id, 50); // an earlier flag does not move it back
    expect(await c.dueOrphanChecks(10)).toEqual([]); // no certificate recorded yet: an answer may be on its way
    expect((await c.markRetiring(IMSI, 'revoked', 0)).map((r) => [r.id, r.step, r.retireReason])).toEqual([[gen.id, 'retiring', 'revoked']]);
    expect((await c.dueOrphanChecks(10)).map((r) => r.orphanCheckAt)).toEqual([100]);
    await c.clearOrphanCheck(gen.id, 99); // flagged again meanwhile: kept
    expect(await c.dueOrphanChecks(10)).toHaveLength(1);
    await c.clearOrphanCheck(gen.id, 100);
    expect(await c.dueOrphanChecks(10)).toEqual([]);
    await c.recordFailure(gen.id, 'ThrottlingException');
    expect(await c.failureTally()).toEqual({ attempts: 1, throttled: 1 });
    expect(await c.simsWithoutCredentials()).toEqual([IMSI]);
    expect(await c.vendingImsis()).toEqual([]);
  });
});
