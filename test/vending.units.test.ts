// The small parts of vending on their own: pacing, retry classification, the work queue, key
// encryption and the master key rules.
import { chmodSync, mkdtempSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { describe, expect, it } from 'vitest';
import { vendingSection } from '../config/vending.ts';
import { openDatabase } from '../storage/db.ts';
import { KeyCipher } from '../vending/key-cipher.ts';
import { certificateFingerprint, csrFingerprint, generateKeyAndCsr } from '../vending/keys.ts';
import { sqliteStores } from '../storage/index.ts';
import { checkMasterKey, loadMasterKey, MasterKeyError } from '../vending/master-key.ts';
import { QueueFullError, WorkQueue } from '../vending/queue.ts';
import { backoffMs, classify } from '../vending/retry.ts';
import { scheduleRotation } from '../vending/rotation.ts';
import { policyAllowsSubscribe } from '../vending/policy.ts';
import { TokenBucket } from '../lib/token-bucket.ts';

const dir = mkdtempSync(join(tmpdir(), 'simbridge-vending-units-'));

describe('token bucket', () => {
  it('spaces calls at the rate and serves waiters in arrival order', async () => {
    const bucket = new TokenBucket(50); // one every 20 ms
    const order: number[] = [];
    const t0 = performance.now();
    await Promise.all(Array.from({ length: 6 }, (_, i) => bucket.take().then(() => order.push(i))));
    const elapsed = performance.now() - t0;
    expect(order).toEqual([0, 1, 2, 3, 4, 5]);
    expect(elapsed).toBeGreaterThanOrEqual(5 * 20 - 2);
    expect(elapsed).toBeLessThan(5 * 20 + 80);
  });

  it('skips turns after a penalty', async () => {
    let now = 0;
    const bucket = new TokenBucket(10, 1, () => now);
    await bucket.take();
    bucket.penalize(2);
    let got = false;
    void bucket.take().then(() => (got = true));
    now += 250; // 2.5 tokens of time: not yet back to one whole token (-2 + 2.5 = 0.5)
    await new Promise((r) => setTimeout(r, 300));
    expect(got).toBe(false);
    now += 100;
    await new Promise((r) => setTimeout(r, 320));
    expect(got).toBe(true);
  });
});

describe('token bucket, taking at once', () => {
  it('takes only what may go now, never ahead of a waiter, and mixes with take() within the same quota', async () => {
    let now = 0;
    const bucket = new TokenBucket(10, 2, () => now);
    expect(bucket.takeNow()).toBe(true);
    expect(bucket.takeNow()).toBe(true);
    expect(bucket.takeNow()).toBe(false); // empty: nothing taken
    let got = false;
    void bucket.take().then(() => (got = true));
    now += 150; // 1.5 tokens of time: one may go, but the waiter came first
    expect(bucket.takeNow()).toBe(false);
    // The waiter's timer (100 ms); a busy machine may fire it later.
    for (let i = 0; i < 100 && !got; i++) await new Promise((r) => setTimeout(r, 20));
    expect(got).toBe(true);
    expect(bucket.takeNow()).toBe(false); // the waiter had the whole token; half a token left
    now += 50;
    expect(bucket.takeNow()).toBe(true);
  });
});

describe('pacing within a per-second quota', () => {
  it('never lets more than the quota through in any one-second window, even from a full bucket', async () => {
    const bucket = TokenBucket.withinQuota(50, 5);
    const at: number[] = [];
    await Promise.all(Array.from({ length: 120 }, () => bucket.take(1).then(() => at.push(performance.now()))));
    expect(at).toHaveLength(120);
    for (let i = 0; i < at.length; i++) expect(at.filter((t) => t >= at[i]! && t < at[i]! + 1000).length).toBeLessThanOrEqual(50);
    // A bucket whose capacity equals its rate (what sessions used) lets twice the quota through.
    const loose = new TokenBucket(50, 50);
    const early: number[] = [];
    const t0 = performance.now();
    for (let i = 0; i < 120; i++) void loose.take(1).then(() => early.push(performance.now() - t0));
    await new Promise((r) => setTimeout(r, 1000));
    expect(early.filter((t) => t < 1000).length).toBeGreaterThan(50);
  });
});

describe('retry classification', () => {
  const sdk = (name: string, status?: number, fault?: 'client' | 'server') => Object.assign(new Error(name), { name, $fault: fault, $metadata: { httpStatusCode: status } });
  it('tells throttling, server, network and client failures apart', () => {
    expect(classify(sdk('ThrottlingException', 429, 'client'))).toBe('throttled');
    expect(classify(sdk('ThrottlingException', 400, 'client'))).toBe('throttled');
    expect(classify(sdk('InternalFailureException', 500, 'server'))).toBe('server');
    expect(classify(sdk('ServiceUnavailableException', 503, 'server'))).toBe('server');
    expect(classify(Object.assign(new Error('socket hang up'), { code: 'ECONNRESET' }))).toBe('network');
    expect(classify(Object.assign(new Error('timed out'), { name: 'TimeoutError' }))).toBe('network');
    expect(classify(sdk('InvalidRequestException', 400, 'client'))).toBe('client');
    expect(classify(sdk('ResourceNotFoundException', 404, 'client'))).toBe('client');
  });

  it('backs off exponentially with full jitter, capped', () => {
    expect(backoffMs(0, 100, 5000, () => 0.999)).toBeCloseTo(99.9);
    expect(backoffMs(3, 100, 5000, () => 0.5)).toBe(400);
    expect(backoffMs(20, 100, 5000, () => 0.5)).toBe(2500);
    expect(backoffMs(5, 100, 5000, () => 0)).toBe(0);
  });
});

describe('work queue', () => {
  it('runs one job per key however many submit it, and bounds how many wait', async () => {
    const depths: number[] = [];
    const q = new WorkQueue<string>({ concurrency: 2, maxJobs: 3, onDepth: (d) => depths.push(d) });
    let runs = 0;
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const job = async () => {
      runs++;
      await gate;
      return { done: 'ok' };
    };
    const same = Array.from({ length: 100 }, () => q.submit('a', 'urgent', job));
    const others = [q.submit('b', 'urgent', job), q.submit('c', 'background', job)];
    await expect(q.submit('d', 'urgent', job)).rejects.toBeInstanceOf(QueueFullError);
    expect(q.depth).toBe(3);
    release();
    expect(new Set(await Promise.all(same))).toEqual(new Set(['ok']));
    await Promise.all(others);
    expect(runs).toBe(3);
    expect(q.depth).toBe(0);
    expect(Math.max(...depths)).toBe(3);
  });

  it('gives the worker back while a job pauses, and serves urgent jobs first', async () => {
    const q = new WorkQueue<string>({ concurrency: 1, maxJobs: 10 });
    const log: string[] = [];
    let tries = 0;
    const slow = q.submit('slow', 'urgent', async () => (log.push('slow'), ++tries < 3 ? { retryInMs: 30 } : { done: 'slow' }));
    const bg = q.submit('bg', 'background', async () => (log.push('bg'), { done: 'bg' }));
    const urgent = q.submit('urgent', 'urgent', async () => (log.push('urgent'), { done: 'urgent' }));
    expect(await Promise.all([slow, bg, urgent])).toEqual(['slow', 'bg', 'urgent']);
    expect(log.slice(0, 3)).toEqual(['slow', 'urgent', 'bg']);
  });
});

describe('keys at rest', () => {
  it('seals with AES-256-GCM bound to the owner; a wrong key, another owner or a flipped bit fail', () => {
    const a = new KeyCipher(Buffer.alloc(32, 1));
    const sealed = a.encrypt(Buffer.from('-----BEGIN PRIVATE KEY-----'), '001010000000001');
    expect(sealed.toString('latin1')).not.toContain('PRIVATE KEY');
    expect(a.decrypt(sealed, '001010000000001').toString()).toBe('-----BEGIN PRIVATE KEY-----');
    expect(() => new KeyCipher(Buffer.alloc(32, 2)).decrypt(sealed, '001010000000001')).toThrow();
    expect(() => a.decrypt(sealed, '001010000000002')).toThrow();
    const flipped = Buffer.from(sealed);
    flipped[flipped.length - 1]! ^= 1;
    expect(() => a.decrypt(flipped, '001010000000001')).toThrow();
    expect(() => a.decrypt(Buffer.alloc(0), '001010000000001')).toThrow(/too short/);
    expect(() => new KeyCipher(Buffer.alloc(16))).toThrow(/32 bytes/);
  });

  it('recognises the key of a CSR by its fingerprint, for EC and RSA', async () => {
    for (const alg of ['ec-p256', 'rsa-2048'] as const) {
      const k = await generateKeyAndCsr('sim-1', alg);
      expect(csrFingerprint(k.csrPem)).toBe(k.fingerprint);
      expect(k.csrPem).toContain('BEGIN CERTIFICATE REQUEST');
    }
    expect(() => certificateFingerprint('not a certificate')).toThrow();
  });
});

describe('master key', () => {
  const hex = 'ab'.repeat(32);
  it('reads SIMBRIDGE_MASTER_KEY as hex or base64 and refuses anything else', () => {
    expect(loadMasterKey({ env: { SIMBRIDGE_MASTER_KEY: hex } })).toEqual(Buffer.alloc(32, 0xab));
    expect(loadMasterKey({ env: { SIMBRIDGE_MASTER_KEY: Buffer.alloc(32, 7).toString('base64') } })).toEqual(Buffer.alloc(32, 7));
    expect(() => loadMasterKey({ env: { SIMBRIDGE_MASTER_KEY: hex.slice(1) + 'g' } })).toThrow(MasterKeyError);
    expect(() => loadMasterKey({ env: { SIMBRIDGE_MASTER_KEY: 'correct horse battery staple and more words' } })).toThrow(/64 hex digits or base64/);
  });

  it('refuses to start outside the sandbox without one, and a key file others can read', () => {
    expect(() => loadMasterKey({ env: {} })).toThrow(/no master key/);
    const file = join(dir, 'k.key');
    writeFileSync(file, hex, { mode: 0o644 });
    chmodSync(file, 0o644);
    expect(() => loadMasterKey({ env: {}, file })).toThrow(/readable by others .*644.*chmod 600/);
    chmodSync(file, 0o600);
    expect(loadMasterKey({ env: {}, file })).toEqual(Buffer.alloc(32, 0xab));
    expect(() => loadMasterKey({ env: {}, file: join(dir, 'missing.key') })).toThrow(/cannot read master key file/);
  });

  it('generates one in the sandbox data directory, mode 600, and reuses it', () => {
    const at = join(dir, 'sandbox-data', 'master.key');
    const first = loadMasterKey({ env: {}, generateAt: at });
    expect(statSync(at).mode & 0o777).toBe(0o600);
    expect(loadMasterKey({ env: {}, generateAt: at })).toEqual(first);
  });

  it('is a clear startup error when it does not open this database, also before a check value existed', async () => {
    const db = openDatabase({ file: join(dir, 'mk.db'), synchronous: 'normal' });
    const right = new KeyCipher(Buffer.alloc(32, 1));
    const wrong = new KeyCipher(Buffer.alloc(32, 2));
    const stores = sqliteStores(db);
    db.prepare("INSERT INTO sims (imsi, group_name, thing_name, created_at) VALUES ('001010000000001', 'default', 'sim-001010000000001', 0)").run();
    db.prepare(
      "INSERT INTO credentials (imsi, thing_name, step, key_alg, key_enc, csr_pem, created_at, updated_at) VALUES ('001010000000001', 'sim-001010000000001', 'key', 'ec-p256', ?, 'csr', 0, 0)",
    ).run(right.encrypt(Buffer.from('key'), '001010000000001'));
    await expect(checkMasterKey(stores, wrong)).rejects.toThrow(/does not match the one this database was created with/);
    await checkMasterKey(stores, right); // writes the check value
    await expect(checkMasterKey(stores, wrong)).rejects.toThrow(MasterKeyError);
    await checkMasterKey(stores, right);
    db.close();
  });
});

describe('rotation schedule', () => {
  it('runs the job on its cron schedule until stopped', async () => {
    let runs = 0;
    const task = scheduleRotation('* * * * * *', async () => ++runs, pino({ level: 'silent' }));
    await new Promise((r) => setTimeout(r, 2300));
    task.stop();
    const seen = runs;
    expect(seen).toBeGreaterThanOrEqual(1);
    await new Promise((r) => setTimeout(r, 1200));
    expect(runs).toBe(seen);
  });
});

describe('vending config', () => {
  it('has the AWS quotas as defaults and checks cross-field limits', () => {
    const c = vendingSection.parse({});
    expect(c.quotas).toMatchObject({ CreateCertificateFromCsr: 15, AttachPolicy: 15, CreateThing: 100, AttachThingPrincipal: 100, UpdateCertificate: 10 });
    expect(c.keyAlgorithm).toBe('ec-p256');
    expect(() => vendingSection.parse({ thingAttributes: ['imsi', 'group', 'imei', 'iccid'] })).toThrow(/at most 3 attributes/);
    expect(vendingSection.parse({ thingType: 'sim', thingAttributes: ['imsi', 'group', 'imei', 'iccid'] }).thingAttributes).toHaveLength(4);
    expect(() => vendingSection.parse({ callTimeoutMs: 5000, orphanGraceMs: 4000 })).toThrow(/longer than callTimeoutMs/);
    expect(() => vendingSection.parse({ rotation: { schedule: 'every day' } })).toThrow(/cron/);
  });
});

describe('policy pre-check of a subscription', () => {
  const thing = { name: 'sim-001010000000001', attributes: { imsi: '001010000000001' } };
  it('allows filters under the group\'s templates and the thing\'s own shadow and Jobs, nothing else', () => {
    const templates = ['devices/{thing}/{topic}', 'batches/{imsi}'];
    expect(policyAllowsSubscribe(templates, 'devices/sim-001010000000001/commands/#', thing)).toBe(true);
    expect(policyAllowsSubscribe(templates, '$aws/things/sim-001010000000001/shadow/update/+', thing)).toBe(true);
    expect(policyAllowsSubscribe(templates, 'batches/001010000000001', thing)).toBe(true);
    expect(policyAllowsSubscribe(templates, 'devices/sim-001010000000002/commands/#', thing)).toBe(false);
    expect(policyAllowsSubscribe(templates, '$aws/things/sim-001010000000001/jobs/notify', thing)).toBe(true);
    expect(policyAllowsSubscribe(templates, '$aws/things/sim-001010000000002/jobs/notify', thing)).toBe(false);
    expect(policyAllowsSubscribe(templates, '$aws/things/sim-001010000000001/tunnels/notify', thing)).toBe(false);
    expect(policyAllowsSubscribe(templates, 'batches/#', thing)).toBe(false);
  });
  it('refuses a template whose policy variable the thing cannot resolve (an attribute it does not carry)', () => {
    expect(policyAllowsSubscribe(['devices/{imei}/{topic}'], 'devices/490154203237518/x', thing)).toBe(false);
  });
});
