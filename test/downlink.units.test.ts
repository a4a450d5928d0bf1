// Downlink refusals in process, over the real session pool and a stand-in upstream link: each reason is
// told apart by the class of the error behind it.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { Downlink, DownlinkRefusal } from '../bridge/downlink.ts';
import { createMetrics } from '../bridge/metrics.ts';
import { configSchema } from '../config/schema.ts';
import { openDatabase } from '../storage/db.ts';
import { sqliteStores } from '../storage/index.ts';
import { SimStore } from '../storage/sims.ts';
import { fakeUpstreamPool } from './helpers/fake-pool.ts';

const IMSI = '001010000000301';
const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0)) await c();
});

function setup(maxSubscriptions: number) {
  const dir = mkdtempSync(join(tmpdir(), 'simbridge-downlink-'));
  const db = openDatabase({ file: join(dir, 'simbridge.db'), synchronous: 'normal' });
  const { sim } = new SimStore(db).register({ imsi: IMSI, group: 'default', thingName: `sim-${IMSI}` });
  const config = configSchema.parse({ groups: { default: {} } });
  const metrics = createMetrics();
  const log = pino({ level: 'silent' });
  const { pool, link } = fakeUpstreamPool({ metrics, log }, { maxSubscriptions });
  const downlink = new Downlink({
    pool,
    credentials: async (s) => ({ thingName: s.thingName, certificateId: 'c', certificatePem: '', privateKeyPem: '' }),
    group: () => config.groups.default!,
    limits: config.limits,
    store: sqliteStores(db).downlink,
    policyAllows: () => true,
    audit: sqliteStores(db).audit,
    metrics,
    log,
  });
  cleanups.push(async () => {
    downlink.close();
    await pool.closeAll();
    db.close();
    rmSync(dir, { recursive: true, force: true });
  });
  return { link, downlink, metrics, device: { sim, source: 'claimed' } };
}

/** The refusal a subscribe ends in (fails the test if it is granted). */
async function refusal(p: Promise<unknown>): Promise<DownlinkRefusal> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(DownlinkRefusal);
  return err as DownlinkRefusal;
}

describe('downlink refusals', () => {
  it('past the subscriptions allowed per device: subscription_limit', async () => {
    const { link, downlink, device } = setup(2);
    const deliver = () => undefined;
    expect(await downlink.subscribe(device, 'commands/a', 1, deliver)).toBe(1);
    expect(await downlink.subscribe(device, 'commands/b', 1, deliver)).toBe(1);
    const refused = await refusal(downlink.subscribe(device, 'commands/c', 1, deliver));
    expect(refused.reason).toBe('subscription_limit');
    expect(new Set(link.subscribed.map((s) => s.filter))).toEqual(new Set([`devices/sim-${IMSI}/commands/a`, `devices/sim-${IMSI}/commands/b`]));
  });

  it('refused by IoT Core: upstream_refused', async () => {
    const { link, downlink, device } = setup(50);
    link.refuseFilter = (f) => f.endsWith('/secret');
    const refused = await refusal(downlink.subscribe(device, 'secret', 1, () => undefined));
    expect(refused.reason).toBe('upstream_refused');
    expect(refused.message).toMatch(/refused upstream/);
  });
});

describe('downlink metric', () => {
  it('counts held messages delivered in a CoAP or UDP answer under that protocol', async () => {
    const { downlink, metrics } = setup(50);
    downlink.delivered([101, 102], 'coap');
    downlink.delivered([103], 'udp');
    downlink.delivered([104]);
    const text = await metrics.registry.metrics();
    expect(text).toMatch(/simbridge_downlink_messages_total\{protocol="coap",result="delivered"\} 2/);
    expect(text).toMatch(/simbridge_downlink_messages_total\{protocol="udp",result="delivered"\} 1/);
    expect(text).toMatch(/simbridge_downlink_messages_total\{protocol="http",result="delivered"\} 1/);
  });
});
