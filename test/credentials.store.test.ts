import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { credentialsOnThread } from '../storage/credentials.ts';
import { openDatabase, type Db } from '../storage/db.ts';
import { sqliteStores } from '../storage/index.ts';
import { SimStore } from '../storage/sims.ts';

const dirs: string[] = [];
const dbs: Db[] = [];
afterEach(() => {
  for (const db of dbs.splice(0)) db.close();
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

function setup() {
  const dir = mkdtempSync(join(tmpdir(), 'credentials-'));
  dirs.push(dir);
  const db = openDatabase({ file: join(dir, 's.db'), synchronous: 'normal' });
  dbs.push(db);
  const imsi = '001010000000901';
  new SimStore(db).register({ imsi, group: 'default', thingName: `sim-${imsi}` });
  return { stores: sqliteStores(db), imsi };
}

const key = (imsi: string, purpose: 'first' | 'rotation' = 'first') => ({
  imsi,
  thingName: `sim-${imsi}`,
  purpose,
  keyAlg: 'ec-p256',
  keyEnc: Buffer.from('sealed'),
  csrPem: 'csr',
  pubkeySha256: 'fp',
});

/** Walks a generation to the policy step, the way vending does. */
async function toPolicy(stores: ReturnType<typeof sqliteStores>, imsi: string, purpose: 'first' | 'rotation', certId: string) {
  const row = (await stores.credentials.createGeneration(key(imsi, purpose), 'me', 60_000))!;
  expect(await stores.credentials.markCsrSent(row.id, 'me', Date.now() + 60_000)).toBe(true);
  expect(await stores.credentials.advance(row.id, 'me', 'csr_sent', 'certificate', { certId, certArn: `arn:${certId}` })).toBe(true);
  expect(await stores.credentials.advance(row.id, 'me', 'certificate', 'thing')).toBe(true);
  expect(await stores.credentials.advance(row.id, 'me', 'thing', 'policy', { policyName: 'p' })).toBe(true);
  return row;
}

describe('the credential store seen by vending (promise-shaped)', () => {
  it('writes a step and its audit event together, and neither when the step is fenced off', async () => {
    const { stores, imsi } = setup();
    const row = (await stores.credentials.createGeneration(key(imsi), 'me', 60_000))!;
    await stores.credentials.markCsrSent(row.id, 'me', Date.now() + 60_000);
    const entry = { kind: 'certificate_created' as const, imsi, detail: { certificateId: 'c1' } };

    // Another owner: the compare-and-set refuses, and no audit row claims a certificate was recorded.
    expect(await stores.credentials.advance(row.id, 'someone-else', 'csr_sent', 'certificate', { certId: 'c1' }, entry)).toBe(false);
    expect((await stores.audit.query({ imsi, kinds: ['certificate_created'] })).items).toHaveLength(0);

    expect(await stores.credentials.advance(row.id, 'me', 'csr_sent', 'certificate', { certId: 'c1' }, entry)).toBe(true);
    const events = (await stores.audit.query({ imsi, kinds: ['certificate_created'] })).items;
    expect(events.map((e) => e.detail)).toEqual([{ certificateId: 'c1' }]);
    expect((await stores.credentials.byId(row.id))!.certId).toBe('c1');
  });

  it('promotes a rotation with one audit event naming the certificate it replaces', async () => {
    const { stores, imsi } = setup();
    const first = await toPolicy(stores, imsi, 'first', 'old');
    expect((await stores.credentials.promote(first.id, 'me', Date.now() + 1000)).ok).toBe(true);
    const next = await toPolicy(stores, imsi, 'rotation', 'new');

    const r = await stores.credentials.promote(next.id, 'me', Date.now() + 1000, (replaced) => ({ kind: 'vended', imsi, detail: { replaces: replaced?.certId } }));
    expect(r.ok).toBe(true);
    expect(r.previous).toMatchObject({ certId: 'old', step: 'retiring', retireReason: 'rotated' });
    const vended = (await stores.audit.query({ imsi, kinds: ['vended'] })).items;
    expect(vended.map((e) => e.detail)).toEqual([{ replaces: 'old' }]);
    expect((await stores.credentials.ready(imsi))!.certId).toBe('new');
    expect(await stores.credentials.countByState()).toEqual({ ready: 1, vending: 0 });
  });

  it('answers with rejections, not throws, when the database is gone', async () => {
    const { stores } = setup();
    dbs[0]!.close();
    dbs.length = 0;
    const call = stores.credentials.byId(1);
    expect(call).toBeInstanceOf(Promise);
    await expect(call).rejects.toThrow();
  });
});

describe('the credentials table on a thread of its own', () => {
  it('commits on its own connection and hands keys back as Buffers; the callback methods stay on the caller', async () => {
    const { stores, imsi } = setup();
    const db = dbs.at(-1)!;
    const onThread = credentialsOnThread({ file: db.name, synchronous: 'normal' }, stores.credentials);
    try {
      const writesHere = () => (db.prepare('SELECT total_changes() AS n').get() as { n: number }).n;
      const before = writesHere();
      const row = (await onThread.createGeneration({ ...key(imsi), keyEnc: Buffer.from([0, 1, 2, 255]) }, 'me', 60_000))!;
      expect(await onThread.markCsrSent(row.id, 'me', Date.now() + 60_000)).toBe(true);
      // Written on the thread's connection: nothing on this one, yet this one reads it.
      expect(writesHere()).toBe(before);
      expect((await stores.credentials.byId(row.id))?.csrSentAt).not.toBeNull();
      const back = (await onThread.byId(row.id))!;
      expect(Buffer.isBuffer(back.keyEnc)).toBe(true);
      expect([...back.keyEnc]).toEqual([0, 1, 2, 255]);
      const [sealed] = await onThread.sealedKeys(0, 10);
      expect(Buffer.isBuffer(sealed!.keyEnc)).toBe(true);
      expect(await onThread.replaceSealedKey(row.id, sealed!.keyEnc, Buffer.from('resealed'))).toBe(true);
      expect((await stores.credentials.byId(row.id))?.keyEnc.toString()).toBe('resealed');
      // A lease check takes a function, which cannot cross threads: it runs here.
      expect(await onThread.acquireLease(row.id, 'other', 60_000, (holder) => holder === 'me')).toBe(true);
      expect(writesHere()).toBe(before + 1);
    } finally {
      await onThread.stop();
    }
  });
});

