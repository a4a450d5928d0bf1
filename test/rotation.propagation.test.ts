// A rotation against a sandbox that, like IoT Core, takes a while to let a new certificate connect
// (propagation.certificatesMs, attachmentsMs): the old certificate must stay in service until the
// device's session has connected with the new one. The vendor and the upstream pool are the real
// ones, wired as app/gateway.ts wires them, and talk to the sandbox over real sockets.
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterAll, describe, expect, it } from 'vitest';
import { createMetrics } from '../bridge/metrics.ts';
import { UpstreamPool, type UpstreamSession } from '../bridge/upstream/session-pool.ts';
import { vendingSection } from '../config/vending.ts';
import { startSandbox, type Sandbox } from '../sandbox/index.ts';
import { openDatabase } from '../storage/db.ts';
import { sqliteStores } from '../storage/index.ts';
import { SimStore } from '../storage/sims.ts';
import { createVending } from '../vending/index.ts';
import { KeyCipher } from '../vending/key-cipher.ts';
import type { CredentialsRotated, DeviceCredentials } from '../vending/vendor.ts';

const PROPAGATION_MS = 3000;
const dir = mkdtempSync(join(tmpdir(), 'simbridge-rotation-'));
const silent = pino({ level: 'silent' });
const cleanups: Array<() => unknown> = [];
afterAll(async () => {
  for (const c of cleanups.reverse()) await Promise.resolve(c()).catch(() => undefined);
});

interface SandboxState {
  certificates: Array<{ certificateId: string; status: string }>;
  connections: Array<{ clientId: string; certificateId: string }>;
}

async function state(sb: Sandbox): Promise<SandboxState> {
  return (await (await fetch(`${sb.controlEndpoint}/_sandbox/state`)).json()) as SandboxState;
}

async function until<T>(probe: () => Promise<T | undefined>, ms: number): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const v = await probe().catch(() => undefined);
    if (v !== undefined) return v;
    if (Date.now() > end) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe('a rotation while IoT Core propagates the new certificate', () => {
  it('retires the old certificate only after a session on the new one has connected, even when a caller still holds the old one', async () => {
    const sb = await startSandbox({
      dataDir: join(dir, 'sandbox'),
      controlPort: 0,
      dataPort: 0,
      observerPort: 0,
      propagation: { certificatesMs: PROPAGATION_MS, attachmentsMs: PROPAGATION_MS },
    });
    cleanups.push(() => sb.close());
    const db = openDatabase({ file: join(dir, 'gateway.sqlite'), synchronous: 'normal' });
    cleanups.push(() => db.close());
    const stores = sqliteStores(db);
    const retireAfterMs = 30_000;
    const config = vendingSection.parse({
      endpoint: sb.controlEndpoint,
      credentials: { accessKeyId: 'sandbox', secretAccessKey: 'sandbox' },
      callTimeoutMs: 2000,
      retryDelayMs: 100,
      retryMaxDelayMs: 1000,
      rotation: { enabled: false, maxAgeDays: 0, retireAfterMs },
    });
    const { vendor } = createVending(config, {
      sims: stores.sims,
      credentials: stores.credentials,
      cipher: new KeyCipher(Buffer.alloc(32, 7)),
      audit: stores.audit,
      log: silent,
      policyFor: () => ({ name: 'simbridge-rotation', topicTemplates: ['devices/{thing}/{topic}'] }),
    });
    cleanups.push(() => vendor.stop());
    const pool = new UpstreamPool({
      endpoint: async () => sb.dataHost,
      port: sb.dataPort,
      caPem: sb.caPem,
      keepAliveSeconds: 30,
      connectTimeoutMs: 3000,
      operationTimeoutMs: 3000,
      maxSessions: 10,
      idleTimeoutMs: 600_000,
      connectsPerSecond: 50,
      minConnectIntervalMs: 200,
      publishesPerSecond: 90,
      bytesPerSecond: 400_000,
      publishBurst: 5,
      byteBurst: 200_000,
      maxSubscriptions: 50,
      client: 'node',
    threads: 1,
      metrics: createMetrics(),
      log: silent,
    });
    cleanups.push(() => pool.closeAll());
    // As app/gateway.ts wires them.
    vendor.onRotated((ev) => pool.replace(ev.credentials, retireAfterMs));
    const rotated: CredentialsRotated[] = [];
    vendor.onRotated(async (ev) => void rotated.push(ev));

    const { sim } = new SimStore(db).register({ imsi: '001019900000001', group: 'default', thingName: 'sim-001019900000001' });
    const old: DeviceCredentials = await vendor.ensure(sim);
    // The first certificate itself needs the propagation delay before it may connect.
    await until(async () => pool.session(old), 20_000);

    // Watch the sandbox: when a connection on the new certificate first shows, when the old one leaves ACTIVE.
    let newCertificateId: string | undefined;
    let newConnectedAt: number | undefined;
    let oldRetiredAt: number | undefined;
    let watching = true;
    const watcher = (async () => {
      while (watching) {
        const s = await state(sb);
        const now = Date.now();
        if (newCertificateId && newConnectedAt === undefined && s.connections.some((c) => c.certificateId === newCertificateId)) newConnectedAt = now;
        const oldCert = s.certificates.find((c) => c.certificateId === old.certificateId);
        if (oldRetiredAt === undefined && oldCert?.status !== 'ACTIVE') oldRetiredAt = now;
        await new Promise((r) => setTimeout(r, 25));
      }
    })();

    expect(await vendor.rotateExpiring()).toBe(1);
    const ev = await until(async () => rotated[0], 20_000);
    newCertificateId = ev.credentials.certificateId;
    expect(ev.previousCertificateId).toBe(old.certificateId);

    // Deliveries that read the credentials just before the promotion keep asking for a session with them
    // while the new certificate propagates: none may bring the old certificate back into use.
    const staleUses: string[] = [];
    for (const end = Date.now() + PROPAGATION_MS; Date.now() < end; ) {
      const s: UpstreamSession | undefined = await pool.session(old).catch(() => undefined);
      if (s && s.creds.certificatePem !== ev.credentials.certificatePem) staleUses.push(s.creds.certificatePem);
      await new Promise((r) => setTimeout(r, 100));
    }
    expect(staleUses).toEqual([]);

    await until(async () => oldRetiredAt, 40_000);
    watching = false;
    await watcher;
    expect(newConnectedAt, 'the new certificate connected before the old one was retired').toBeDefined();
    expect(oldRetiredAt!).toBeGreaterThanOrEqual(newConnectedAt!);
    expect(pool.peek(sim.thingName)?.creds.certificatePem).toBe(ev.credentials.certificatePem);
    // The session on the new certificate works.
    await pool.peek(sim.thingName)!.publish(`devices/${sim.thingName}/after-rotation`, Buffer.from('ok'), 1);
  }, 90_000);
});
