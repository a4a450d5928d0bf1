import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { openDatabase } from '../storage/db.ts';
import { sqliteStores } from '../storage/index.ts';
import { workerWriter } from '../storage/outbox-commit.ts';
import { Outbox } from '../storage/outbox.ts';
import { SimStore } from '../storage/sims.ts';

describe('SIM records for the per-message path', () => {
  it('are served from memory, and every write through the shared registry is seen at once', async () => {
    const db = openDatabase({ file: join(mkdtempSync(join(tmpdir(), 'sims-cache-')), 's.db'), synchronous: 'normal' });
    // One store per process, shared by admission, delivery, admin and vending (built in app/steps/storage.ts):
    // admin and vending write through its promise-shaped registry, messages read its routing cache.
    const { sims, simRouting: routing } = sqliteStores(db);
    const imsi = '001010000000777';
    await sims.register({ imsi, group: 'default', thingName: `sim-${imsi}` });
    const first = routing.forRouting(imsi);
    expect(first?.status).toBe('active');
    expect(routing.forRouting(imsi)).toBe(first); // no read: the same record

    await sims.setStatus(imsi, 'suspended');
    expect(routing.forRouting(imsi)?.status).toBe('suspended');
    await sims.bindImei(imsi, '490154203237518');
    expect(routing.forRouting(imsi)?.boundImei).toBe('490154203237518');
    await sims.update(imsi, { group: 'meters', status: 'active' });
    expect(routing.forRouting(imsi)).toMatchObject({ group: 'meters', status: 'active' });
    await sims.upsertMany([{ imsi, group: 'trackers', thingName: `sim-${imsi}` }], { force: false });
    expect(routing.forRouting(imsi)?.group).toBe('trackers');
    await sims.bindImeiChecked(imsi, '356938035643809', true);
    expect(routing.forRouting(imsi)?.boundImei).toBe('356938035643809');
    expect(routing.forRouting('001010000000778')).toBeUndefined();
    db.close();
  });

  it('are read in one go at start-up (active SIMs only), and a later write still clears them', () => {
    const db = openDatabase({ file: join(mkdtempSync(join(tmpdir(), 'sims-warm-')), 's.db'), synchronous: 'normal' });
    const setup = new SimStore(db);
    setup.register({ imsi: '001010000000781', group: 'default', thingName: 'sim-781' });
    setup.register({ imsi: '001010000000782', group: 'default', thingName: 'sim-782' });
    setup.setStatus('001010000000782', 'suspended');
    const gateway = new SimStore(db);
    expect(gateway.warmRoutingCache()).toBe(1);
    // Changed behind the cache's back (not through a SimStore): the warmed record is what is served.
    db.prepare("UPDATE sims SET group_name = 'elsewhere' WHERE imsi = '001010000000781'").run();
    expect(gateway.forRouting('001010000000781')?.group).toBe('default');
    expect(gateway.forRouting('001010000000782')?.status).toBe('suspended'); // not warmed: read on demand
    gateway.bindImei('001010000000781', '490154203237518');
    expect(gateway.forRouting('001010000000781')).toMatchObject({ group: 'elsewhere', boundImei: '490154203237518' });
    db.close();
  });

  it('note the first delivery upstream once per binding: a new IMEI starts the wait again', () => {
    const db = openDatabase({ file: join(mkdtempSync(join(tmpdir(), 'sims-delivered-')), 's.db'), synchronous: 'normal' });
    const sims = new SimStore(db);
    const imsi = '001010000000791';
    sims.register({ imsi, group: 'default', thingName: `sim-${imsi}`, boundImei: '490154203237518' });
    expect(sims.forRouting(imsi)?.deliveredAt).toBeNull();
    sims.markDelivered(imsi, 1000);
    sims.markDelivered(imsi, 2000); // only the first counts
    expect(sims.forRouting(imsi)?.deliveredAt).toBe(1000);
    expect(sims.get(imsi)?.deliveredAt).toBe(1000);
    sims.bindImei(imsi, '490154203237518'); // the same device again
    expect(sims.get(imsi)?.deliveredAt).toBe(1000);
    sims.bindImei(imsi, '353456780000011'); // a device swap
    expect(sims.forRouting(imsi)?.deliveredAt).toBeNull();
    sims.markDelivered(imsi, 3000);
    expect(sims.get(imsi)?.deliveredAt).toBe(3000);
    db.close();
  });

  it('write the first delivery with the outbox\'s next commit, not in a commit of their own on the event loop', async () => {
    const file = join(mkdtempSync(join(tmpdir(), 'sims-delivered-writer-')), 's.db');
    const db = openDatabase({ file, synchronous: 'full' });
    const writer = workerWriter({ file, synchronous: 'full' });
    const outbox = new Outbox(db, writer);
    const sims = new SimStore(db);
    sims.writeDeliveredWith((imsi, at, imei) => outbox.noteFirstDelivery(imsi, at, imei));
    const stored = (imsi: string) => (db.prepare('SELECT delivered_at FROM sims WHERE imsi = ?').get(imsi) as { delivered_at: number | null }).delivered_at;
    const [kept, swapped] = ['001010000000795', '001010000000796'];
    for (const imsi of [kept, swapped]) sims.register({ imsi, group: 'default', thingName: `sim-${imsi}`, boundImei: '490154203237518' });
    const writesBefore = (db.prepare('SELECT total_changes() AS n').get() as { n: number }).n;
    sims.markDelivered(kept, 1000);
    sims.markDelivered(swapped, 1000);
    // Seen at once by the per-message path; nothing written on this connection.
    expect(sims.forRouting(kept)?.deliveredAt).toBe(1000);
    expect((db.prepare('SELECT total_changes() AS n').get() as { n: number }).n).toBe(writesBefore);
    // A device swap before the commit: the old device's delivery must not count for the new binding.
    sims.bindImei(swapped, '353456780000011');
    await outbox.settle();
    expect(stored(kept)).toBe(1000);
    expect(stored(swapped)).toBeNull();
    await outbox.close();
    db.close();
  });
});
