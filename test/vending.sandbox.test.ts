// The vending service against the sandbox IoT Core (in this process, over real sockets): exactly once,
// throttling absorbed, revocation enforced by the data plane, rotation, orphan certificates, leases.
import { spawnSync } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import mqtt, { type MqttClient } from 'mqtt';
import { pino } from 'pino';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { vendingSection } from '../config/vending.ts';
import { startSandbox, type Sandbox } from '../sandbox/index.ts';
import { AuditLog } from '../storage/audit.ts';
import { SqliteCredentialStore } from '../storage/credentials.ts';
import { openDatabase, type Db } from '../storage/db.ts';
import { sqliteStores } from '../storage/index.ts';
import { SimStore, type Sim } from '../storage/sims.ts';
import { createVending } from '../vending/index.ts';
import { KeyCipher } from '../vending/key-cipher.ts';
import { certificateFingerprint, generateKeyAndCsr } from '../vending/keys.ts';
import { QueueFullError } from '../vending/queue.ts';
import { policyDocument, samePolicy } from '../vending/policy.ts';
import { sandboxIotClient } from '../sandbox/testkit.ts';
import { CreatePolicyCommand, CreatePolicyVersionCommand, GetPolicyCommand, ListPolicyVersionsCommand } from '@aws-sdk/client-iot';
import type { CredentialsRotated, Vendor, VendorHooks } from '../vending/vendor.ts';

const dir = mkdtempSync(join(tmpdir(), 'simbridge-vending-'));
const cipher = new KeyCipher(Buffer.alloc(32, 5));
const silent = pino({ level: 'silent' });
let sb: Sandbox;
const vendors: Vendor[] = [];
const dbs: Db[] = [];
const clients: MqttClient[] = [];
let imsiSeq = 0;

type SandboxState = {
  certificates: Array<{ certificateId: string; certificateArn: string; status: string; subject: string; policies: string[]; things: string[] }>;
  things: Array<{ thingName: string; attributes: Record<string, string>; principals: string[] }>;
};

async function state(): Promise<SandboxState> {
  return (await (await fetch(`${sb.controlEndpoint}/_sandbox/state`)).json()) as SandboxState;
}

function database(name = `db-${dbs.length}`): Db {
  const db = openDatabase({ file: join(dir, `${name}.sqlite`), synchronous: 'normal' });
  dbs.push(db);
  return db;
}

function vendor(db: Db, overrides: Record<string, unknown> = {}, hooks: VendorHooks = {}): Vendor {
  const config = vendingSection.parse({
    endpoint: sb.controlEndpoint,
    credentials: { accessKeyId: 'sandbox', secretAccessKey: 'sandbox' },
    callTimeoutMs: 1000,
    orphanGraceMs: 1500,
    retryDelayMs: 100,
    retryMaxDelayMs: 1000,
    rotation: { enabled: false },
    ...overrides,
  });
  const stores = sqliteStores(db);
  const v = createVending(config, {
    sims: stores.sims,
    credentials: stores.credentials,
    cipher,
    audit: stores.audit,
    log: silent,
    policyFor: (g) => ({ name: `simbridge-test-${g}`, topicTemplates: ['devices/{thing}/{topic}'] }),
    ...hooks,
  }).vendor;
  vendors.push(v);
  return v;
}

function newSim(db: Db): Sim {
  const imsi = `00101${String(Date.now() % 100000).padStart(5, '0')}${String(imsiSeq++).padStart(5, '0')}`;
  return new SimStore(db).register({ imsi, group: 'default', thingName: `sim-${imsi}` }).sim;
}

async function until(cond: () => boolean | Promise<boolean>, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 25));
  }
}

function connectAs(creds: { thingName: string; certificatePem: string; privateKeyPem: string }): Promise<MqttClient> {
  // No retries: IoT Core refuses a CONNECT by closing the socket, which must reject here.
  return mqtt
    .connectAsync(`mqtts://${sb.dataHost}:${sb.dataPort}`, {
      ca: sb.caPem,
      cert: creds.certificatePem,
      key: creds.privateKeyPem,
      clientId: creds.thingName,
      protocolVersion: 4,
      reconnectPeriod: 0,
      connectTimeout: 5_000,
    }, false)
    .then((c) => (clients.push(c), c));
}

beforeAll(async () => {
  sb = await startSandbox({ dataDir: join(dir, 'sandbox'), controlPort: 0, dataPort: 0, observerPort: 0 });
});

afterEach(() => {
  sb.faults.reset();
});

afterAll(async () => {
  for (const c of clients) c.end(true);
  for (const v of vendors) v.stop();
  for (const db of dbs) db.close();
  await sb?.close();
});

describe('vending against the sandbox', () => {
  it('vends one certificate for 100 concurrent first contacts of one SIM, and stores its key sealed', async () => {
    const db = database();
    const v = vendor(db);
    const sim = newSim(db);
    const all = await Promise.all(Array.from({ length: 100 }, () => v.ensure(sim)));
    expect(new Set(all.map((c) => c.certificateId)).size).toBe(1);
    expect(sb.faults.stats().requests.CreateCertificateFromCsr).toBe(1);

    const s = await state();
    const thing = s.things.find((t) => t.thingName === sim.thingName)!;
    expect(thing.attributes).toEqual({ imsi: sim.imsi, group: 'default' });
    expect(thing.principals).toHaveLength(1);
    const cert = s.certificates.find((c) => c.certificateArn === thing.principals[0])!;
    expect(cert).toMatchObject({ certificateId: all[0]!.certificateId, status: 'ACTIVE', subject: `CN=${sim.thingName}`, policies: ['simbridge-test-default'] });

    const row = new SqliteCredentialStore(db).ready(sim.imsi)!;
    expect(row.keyEnc.toString('latin1')).not.toContain('PRIVATE KEY');
    expect(() => new KeyCipher(Buffer.alloc(32, 6)).decrypt(row.keyEnc, sim.imsi)).toThrow();
    const { createPublicKey } = await import('node:crypto');
    const { fingerprint } = await import('../vending/keys.ts');
    expect(fingerprint(createPublicKey(all[0]!.privateKeyPem))).toBe(certificateFingerprint(all[0]!.certificatePem));
  });

  it('vends an RSA-2048 key into a thing group, with the configured attributes, and the device connects with it', async () => {
    const db = database();
    const v = vendor(db, { keyAlgorithm: 'rsa-2048', thingGroup: 'simbridge-{group}', thingAttributes: ['imsi', 'group', 'imei'] });
    const sim = newSim(db);
    new SimStore(db).bindImei(sim.imsi, '490154203237518');
    const creds = await v.ensure(new SimStore(db).get(sim.imsi)!);
    expect(creds.privateKeyPem).toContain('BEGIN PRIVATE KEY');
    const { createPublicKey } = await import('node:crypto');
    expect(createPublicKey(creds.privateKeyPem).asymmetricKeyType).toBe('rsa');
    const s = (await state()) as SandboxState & { thingGroups: Array<{ thingGroupName: string; things: string[] }> };
    expect(s.thingGroups.find((g) => g.thingGroupName === 'simbridge-default')!.things).toContain(sim.thingName);
    expect(s.things.find((t) => t.thingName === sim.thingName)!.attributes).toEqual({ imsi: sim.imsi, group: 'default', imei: '490154203237518' });
    await (await connectAs(creds)).publishAsync(`devices/${sim.thingName}/rsa`, 'ok', { qos: 1 });
  });

  it('replaces a policy written for an older topic template with a new default version, dropping the oldest non-default at five', async () => {
    const iot = sandboxIotClient(sb.controlEndpoint);
    const arn = 'arn:aws:iot:us-east-1:123456789012';
    const old = (n: number) =>
      JSON.stringify({
        Version: '2012-10-17',
        Statement: [
          { Effect: 'Allow', Action: 'iot:Connect', Resource: `${arn}:client/\${iot:Connection.Thing.ThingName}` },
          { Effect: 'Allow', Action: 'iot:Publish', Resource: `${arn}:topic/old/${n}/*` },
        ],
      });
    await iot.send(new CreatePolicyCommand({ policyName: 'simbridge-test-lifecycle', policyDocument: old(1) }));
    for (let n = 2; n <= 5; n++) await iot.send(new CreatePolicyVersionCommand({ policyName: 'simbridge-test-lifecycle', policyDocument: old(n) }));
    const db = database();
    const v = vendor(db, {}, { policyFor: () => ({ name: 'simbridge-test-lifecycle', topicTemplates: ['devices/{thing}/{topic}'] }) } as VendorHooks);
    const sim = newSim(db);
    const creds = await v.ensure(sim);
    const versions = await iot.send(new ListPolicyVersionsCommand({ policyName: 'simbridge-test-lifecycle' }));
    expect(versions.policyVersions!.map((x) => [x.versionId, x.isDefaultVersion])).toEqual([['1', false], ['3', false], ['4', false], ['5', false], ['6', true]]);
    const current = await iot.send(new GetPolicyCommand({ policyName: 'simbridge-test-lifecycle' }));
    expect(samePolicy(current.policyDocument!, policyDocument({ region: 'us-east-1', account: '123456789012', topicTemplates: ['devices/{thing}/{topic}'] }))).toBe(true);
    await (await connectAs(creds)).publishAsync(`devices/${sim.thingName}/now-allowed`, 'ok', { qos: 1 });
    // The same document again changes nothing.
    const again = vendor(database(), {}, { policyFor: () => ({ name: 'simbridge-test-lifecycle', topicTemplates: ['devices/{thing}/{topic}'] }) } as VendorHooks);
    await again.ensure(newSim(dbs.at(-1)!));
    expect((await iot.send(new ListPolicyVersionsCommand({ policyName: 'simbridge-test-lifecycle' }))).policyVersions).toHaveLength(5);
    iot.destroy();
  });

  it('absorbs throttling and 5xx at the quota: every SIM vended, no failure reaches the vending state machine', async () => {
    const db = database();
    const failures: Error[] = [];
    const v = vendor(db, { callMaxAttempts: 12 }, { onFailure: (e) => failures.push(e) });
    const ops = ['CreateCertificateFromCsr', 'CreateThing', 'AttachPolicy', 'AttachThingPrincipal'];
    sb.faults.configure({ throttleRate: 0.3, failureRate: 0.05, operations: ops, tps: { CreateCertificateFromCsr: 15, AttachPolicy: 15 } });
    const sims = Array.from({ length: 20 }, () => newSim(db));
    const creds = await Promise.all(sims.map((s) => v.ensure(s)));
    expect(new Set(creds.map((c) => c.certificateId)).size).toBe(20);
    expect(failures).toEqual([]);
    expect(v.failureCounts).toEqual({ throttled: 0, server: 0, network: 0, client: 0 });
    expect(sb.faults.stats().totals.throttled).toBeGreaterThan(0);
  });

  it('revokes: the certificate is deactivated, detached and deleted, the data plane refuses it; reactivation vends a fresh one', async () => {
    const db = database();
    const revoked: string[] = [];
    const v = vendor(db, {}, { onRevoked: (ev) => void revoked.push(...ev.certificateIds) });
    const sim = newSim(db);
    const creds = await v.ensure(sim);
    const live = await connectAs(creds);
    await live.publishAsync(`devices/${sim.thingName}/hello`, 'hi', { qos: 1 });
    const dropped = new Promise<void>((r) => live.once('close', () => r()));

    const sims = new SimStore(db);
    sims.setStatus(sim.imsi, 'terminated');
    expect(await v.revoke(sim.imsi, 'sim_terminated')).toEqual({ certificateIds: [creds.certificateId] });
    await dropped;
    expect(revoked).toEqual([creds.certificateId]);
    await expect(connectAs(creds)).rejects.toThrow();
    let s = await state();
    expect(s.certificates.find((c) => c.certificateId === creds.certificateId)).toBeUndefined();
    expect(s.things.find((t) => t.thingName === sim.thingName)!.principals).toEqual([]);
    expect(await v.ready(sim.imsi)).toBeUndefined();
    await expect(v.ensure(sims.get(sim.imsi)!)).rejects.toThrow(/terminated/);
    expect(new SqliteCredentialStore(db).history(sim.imsi).map((r) => [r.step, r.keyEnc.length])).toEqual([['retired', 0]]);

    sims.setStatus(sim.imsi, 'active');
    const fresh = await v.ensure(sims.get(sim.imsi)!);
    expect(fresh.certificateId).not.toBe(creds.certificateId);
    expect(fresh.privateKeyPem).not.toBe(creds.privateKeyPem);
    await (await connectAs(fresh)).publishAsync(`devices/${sim.thingName}/again`, 'hi', { qos: 1 });
    s = await state();
    expect(s.things.find((t) => t.thingName === sim.thingName)!.principals).toEqual([s.certificates.find((c) => c.certificateId === fresh.certificateId)!.certificateArn]);
  });

  it('vends in the aws-cn partition: the policy takes its ARNs from the certificate, so the device connects and publishes', async () => {
    const cn = await startSandbox({ dataDir: join(dir, 'sandbox-cn'), controlPort: 0, dataPort: 0, observerPort: 0, region: 'cn-north-1', partition: 'aws-cn' });
    try {
      const db = database();
      const v = vendor(db, { endpoint: cn.controlEndpoint, region: 'cn-north-1' }, { policyFor: () => ({ name: 'simbridge-cn', topicTemplates: ['devices/{thing}/{topic}'] }) } as VendorHooks);
      const sim = newSim(db);
      const creds = await v.ensure(sim);
      const cnState = (await (await fetch(`${cn.controlEndpoint}/_sandbox/state`)).json()) as SandboxState & { policies: Array<{ policyName: string; policyDocument: string }> };
      expect(cnState.certificates.find((c) => c.certificateId === creds.certificateId)!.certificateArn).toMatch(/^arn:aws-cn:iot:cn-north-1:/);
      expect(cnState.policies.find((p) => p.policyName === 'simbridge-cn')!.policyDocument).toContain('arn:aws-cn:iot:cn-north-1:');
      const device = await mqtt.connectAsync({
        protocol: 'mqtts', host: cn.dataHost, port: cn.dataPort, ca: cn.caPem, cert: creds.certificatePem, key: creds.privateKeyPem,
        clientId: creds.thingName, protocolVersion: 4, reconnectPeriod: 0, connectTimeout: 5_000,
      });
      clients.push(device);
      await device.publishAsync(`devices/${sim.thingName}/hello`, 'ni hao', { qos: 1 });
    } finally {
      await cn.close();
    }
  });

  it('deletes a revoked certificate once IoT Core has propagated the detachment (DeleteConflictException until then)', async () => {
    const slow = await startSandbox({ dataDir: join(dir, 'sandbox-slow'), controlPort: 0, dataPort: 0, observerPort: 0, propagation: { attachmentsMs: 2500 } });
    try {
      const db = database();
      const v = vendor(db, { endpoint: slow.controlEndpoint, propagationWaitMs: 15_000 });
      const sim = newSim(db);
      const creds = await v.ensure(sim);
      await new Promise((r) => setTimeout(r, 2700)); // in service: the attachments have propagated
      new SimStore(db).setStatus(sim.imsi, 'terminated');
      const started = Date.now();
      expect(await v.revoke(sim.imsi, 'sim_terminated')).toEqual({ certificateIds: [creds.certificateId] });
      const slowState = async () => (await (await fetch(`${slow.controlEndpoint}/_sandbox/state`)).json()) as SandboxState;
      await until(async () => !(await slowState()).certificates.some((c) => c.certificateId === creds.certificateId), 20_000);
      // Deleted only after the detachment had propagated, by retrying the conflict.
      expect(Date.now() - started).toBeGreaterThanOrEqual(2000);
      expect(new SqliteCredentialStore(db).history(sim.imsi).map((r) => r.step)).toEqual(['retired']);
    } finally {
      await slow.close();
    }
  });

  it('keeps a revoked certificate INACTIVE and detached when deleteRevoked is off', async () => {
    const db = database();
    const v = vendor(db, { deleteRevoked: false });
    const sim = newSim(db);
    const creds = await v.ensure(sim);
    await v.revoke(sim.imsi, 'imei_lock_violation');
    const cert = (await state()).certificates.find((c) => c.certificateId === creds.certificateId)!;
    expect(cert).toMatchObject({ status: 'INACTIVE', policies: [], things: [] });
    await expect(connectAs(creds)).rejects.toThrow();
  });

  it('rotates a certificate by age, tells the session, then retires the old one', async () => {
    const db = database();
    const events: CredentialsRotated[] = [];
    // Like IoT Core's, sandbox certificates are valid until 2049: expiry never makes them due, age does.
    const v = vendor(db, { rotation: { enabled: false, maxAgeDays: 0 } }, { onRotated: async (ev) => void events.push(ev) });
    const sim = newSim(db);
    const old = await v.ensure(sim);
    const described = (await state()).certificates.find((c) => c.certificateId === old.certificateId) as { notAfter?: string } | undefined;
    expect(described?.notAfter).toBe('2049-12-31T23:59:59.000Z');
    expect(await vendor(db, { rotation: { enabled: false, renewBeforeDays: 400 } }).rotateExpiring()).toBe(0);
    const session = await connectAs(old);
    const dropped = new Promise<void>((r) => session.once('close', () => r()));
    expect(await v.rotateExpiring()).toBeGreaterThanOrEqual(1);
    await until(() => events.some((e) => e.imsi === sim.imsi));
    const ev = events.find((e) => e.imsi === sim.imsi)!;
    expect(ev.previousCertificateId).toBe(old.certificateId);
    expect(ev.credentials.certificateId).not.toBe(old.certificateId);
    expect((await v.ready(sim.imsi))!.certificateId).toBe(ev.credentials.certificateId);
    await dropped; // the old certificate was retired after the hook
    await until(async () => !(await state()).certificates.some((c) => c.certificateId === old.certificateId));
    const s = await state();
    const newArn = s.certificates.find((c) => c.certificateId === ev.credentials.certificateId)!.certificateArn;
    expect(s.things.find((t) => t.thingName === sim.thingName)!.principals).toEqual([newArn]);
    await (await connectAs(ev.credentials)).publishAsync(`devices/${sim.thingName}/rotated`, 'ok', { qos: 1 });
    expect(new SqliteCredentialStore(db).history(sim.imsi).map((r) => r.step)).toEqual(['retired', 'ready']);
  });

  it('deactivates a certificate whose answer was lost (timeout), keeping the one recorded', async () => {
    const db = database();
    const v = vendor(db, { callTimeoutMs: 400, orphanGraceMs: 800 });
    const sim = newSim(db);
    // The first CreateCertificateFromCsr is carried out but its answer comes after our timeout.
    sb.faults.configure({ answerDelayMs: 1500, operations: ['CreateCertificateFromCsr'] });
    const vended = v.ensure(sim);
    await until(() => (sb.faults.stats().requests.CreateCertificateFromCsr ?? 0) >= 1);
    sb.faults.configure({ answerDelayMs: 0 });
    const creds = await vended;
    const mine = async () => (await state()).certificates.filter((c) => c.subject === `CN=${sim.thingName}`);
    expect((await mine()).length).toBe(2);
    await until(async () => (await mine()).length === 1);
    expect((await mine())[0]).toMatchObject({ certificateId: creds.certificateId, status: 'ACTIVE' });
    const audit = new AuditLog(db).query({ imsi: sim.imsi, kinds: ['orphan_certificate_disposed'] }).items;
    expect(audit).toHaveLength(1);
  });

  it('renews its lease through a long step, so a second vendor on the database does not double-vend', async () => {
    const file = `shared-${Date.now()}`;
    const dbA = database(file);
    const dbB = database(file);
    const a = vendor(dbA, { leaseMs: 300, callTimeoutMs: 3000, orphanGraceMs: 4000 });
    const b = vendor(dbB, { leaseMs: 300, callTimeoutMs: 3000, orphanGraceMs: 4000 });
    const sim = newSim(dbA);
    sb.faults.configure({ latencyMs: 1200, operations: ['CreateCertificateFromCsr'] });
    const first = a.ensure(sim);
    await until(() => (sb.faults.stats().requests.CreateCertificateFromCsr ?? 0) >= 1);
    const second = b.ensure(new SimStore(dbB).get(sim.imsi)!);
    const [x, y] = await Promise.all([first, second]);
    expect(x.certificateId).toBe(y.certificateId);
    expect(sb.faults.stats().requests.CreateCertificateFromCsr).toBe(1);
  });

  it('takes over at once from a holder that died on this host, and after expiry from another host', async () => {
    const db = database();
    const store = new SqliteCredentialStore(db);
    const deadPid = spawnSync(process.execPath, ['-e', '0']).pid;
    const holders = [`${hostname()}/${deadPid}/crashed`, 'another-host/1/gone'];
    const sims = holders.map(() => newSim(db));
    for (const [i, holder] of holders.entries()) {
      const k = await generateKeyAndCsr(sims[i]!.thingName, 'ec-p256');
      const leaseMs = i === 0 ? 600_000 : -1; // the dead local holder's lease is still running; the other has expired
      store.createGeneration(
        { imsi: sims[i]!.imsi, thingName: sims[i]!.thingName, purpose: 'first', keyAlg: 'ec-p256', keyEnc: cipher.encrypt(Buffer.from(k.privateKeyPem), sims[i]!.imsi), csrPem: k.csrPem, pubkeySha256: k.fingerprint },
        holder,
        leaseMs,
      );
    }
    const v = vendor(db);
    const t0 = Date.now();
    const creds = await Promise.all(sims.map((s) => v.ensure(s)));
    expect(Date.now() - t0).toBeLessThan(5_000);
    expect(creds.every((c) => /^[0-9a-f]{64}$/.test(c.certificateId))).toBe(true);
    // The CSR stored before the takeover was used: the certificate carries the stored key.
    expect(certificateFingerprint(creds[0]!.certificatePem)).toBe(store.ready(sims[0]!.imsi)!.pubkeySha256);
  });

  it('bounds its queue and reports the depth', async () => {
    const db = database();
    const depths: number[] = [];
    const v = vendor(db, { maxQueue: 3, concurrency: 1 }, { onQueueDepth: (d) => depths.push(d) });
    const sims = Array.from({ length: 5 }, () => newSim(db));
    const results = await Promise.allSettled(sims.map((s) => v.ensure(s)));
    expect(results.filter((r) => r.status === 'fulfilled')).toHaveLength(3);
    const refused = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected');
    expect(refused.map((r) => r.reason)).toEqual([expect.any(QueueFullError), expect.any(QueueFullError)]);
    expect(Math.max(...depths)).toBe(3);
    expect(v.queueDepth).toBe(0);
  });
});
