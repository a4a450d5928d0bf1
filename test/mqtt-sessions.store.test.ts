// Persistent MQTT sessions and their kept commands: the store's rules, against SQLite and PostgreSQL alike.
import { describe, expect, it } from 'vitest';
import { WHILE_CONNECTED, type MqttSessionStore } from '../storage/mqtt-sessions.ts';
import { storeDialects } from './helpers/store-dialects.ts';

const A = { imsi: '001010000000001', clientId: '490154203237518' };
const B = { imsi: '001010000000002', clientId: 'sensor-b' };
const command = (topic: string, receivedAt: number) => ({ topic, payload: Buffer.from(topic), qos: 1 as const, receivedAt });

describe.each(storeDialects())('MQTT session store on $name', (dialect) => {
  const store = async (): Promise<MqttSessionStore> => (await dialect.fresh()).stores.mqttSessions;

  it('keeps a session\'s filters and expiry, and forgets it once it expired', async () => {
    const s = await store();
    await s.save(A, { filters: [['commands/#', 1], ['config', 0]], expirySeconds: 60, expiresAt: 10_000 });
    await s.save(B, { filters: [], expirySeconds: 30, expiresAt: WHILE_CONNECTED });
    expect(await s.load(A, 9_999)).toEqual({ filters: [['commands/#', 1], ['config', 0]], expirySeconds: 60, expiresAt: 10_000 });
    expect(await s.load(A, 10_000)).toBeUndefined();
    expect((await s.list(9_999)).map((x) => [x.imsi, x.clientId, x.expiresAt])).toEqual([[A.imsi, A.clientId, 10_000], [B.imsi, B.clientId, WHILE_CONNECTED]]);
    expect((await s.list(10_000)).map((x) => x.clientId)).toEqual([B.clientId]);
    // A save replaces what was there.
    await s.save(A, { filters: [['config', 1]], expirySeconds: 5, expiresAt: WHILE_CONNECTED });
    expect(await s.load(A, 20_000)).toEqual({ filters: [['config', 1]], expirySeconds: 5, expiresAt: WHILE_CONNECTED });
  });

  it('keeps at most maxMessages commands per session, pushing out the oldest and returning it', async () => {
    const s = await store();
    expect(await s.keep(A, command('c1', 1), 2, 1_000)).toEqual([]);
    expect(await s.keep(A, command('c2', 2), 2, 1_000)).toEqual([]);
    await s.keep(B, command('b1', 3), 2, 1_000);
    const dropped = await s.keep(A, command('c3', 4), 2, 1_000);
    expect(dropped.map((m) => [m.topic, m.payload.toString(), m.receivedAt, m.expiresAt])).toEqual([['c1', 'c1', 1, 1_000]]);
    const pending = await s.pending(A, 0);
    expect(pending.map((m) => m.topic)).toEqual(['c2', 'c3']);
    expect(Buffer.isBuffer(pending[0]!.payload)).toBe(true);
    expect((await s.pending(B, 0)).map((m) => m.topic)).toEqual(['b1']);
  });

  it('hands out only commands not yet expired, and forgets those delivered', async () => {
    const s = await store();
    await s.keep(A, command('soon', 1), 10, 500);
    await s.keep(A, command('later', 2), 10, 5_000);
    expect((await s.pending(A, 499)).map((m) => m.topic)).toEqual(['soon', 'later']);
    expect((await s.pending(A, 500)).map((m) => m.topic)).toEqual(['later']);
    const [later] = await s.pending(A, 500);
    await s.delivered([later!.id]);
    expect(await s.pending(A, 0)).toHaveLength(1);
    await s.delivered([]);
  });

  it('removes a session with its commands and returns them; a session that kept nothing returns none', async () => {
    const s = await store();
    await s.save(A, { filters: [['x', 1]], expirySeconds: 60, expiresAt: WHILE_CONNECTED });
    await s.keep(A, command('k1', 1), 10, 9_000);
    await s.keep(A, command('k2', 2), 10, 9_000);
    expect((await s.remove(A)).map((m) => m.topic)).toEqual(['k1', 'k2']);
    expect(await s.load(A, 0)).toBeUndefined();
    expect(await s.pending(A, 0)).toEqual([]);
    expect(await s.remove(B)).toEqual([]);
  });

  it('starts the expiry of sessions a previous run left connected, from now', async () => {
    const s = await store();
    await s.save(A, { filters: [], expirySeconds: 60, expiresAt: WHILE_CONNECTED });
    await s.save(B, { filters: [], expirySeconds: 30, expiresAt: 7_000 });
    expect(await s.settle(100_000)).toBe(1);
    expect((await s.load(A, 0))?.expiresAt).toBe(160_000);
    expect((await s.load(B, 0))?.expiresAt).toBe(7_000);
  });

  it('lists and settles only the SIMs named (those a node of several came to hold)', async () => {
    const s = await store();
    await s.save(A, { filters: [['commands/#', 1]], expirySeconds: 60, expiresAt: WHILE_CONNECTED });
    await s.save(B, { filters: [], expirySeconds: 30, expiresAt: WHILE_CONNECTED });
    expect(await s.settle(100_000, [B.imsi])).toBe(1);
    expect((await s.load(A, 0))?.expiresAt).toBe(WHILE_CONNECTED);
    expect((await s.load(B, 0))?.expiresAt).toBe(130_000);
    expect((await s.list(0, [A.imsi])).map((x) => [x.imsi, x.clientId, x.filters])).toEqual([[A.imsi, A.clientId, [['commands/#', 1]]]]);
    expect(await s.list(0, [])).toEqual([]);
    expect(await s.settle(100_000, [])).toBe(0);
  });

  it('expires sessions with every command they kept, and commands past their own expiry', async () => {
    const s = await store();
    await s.save(A, { filters: [], expirySeconds: 60, expiresAt: 1_000 });
    await s.keep(A, command('a-fresh', 1), 10, 50_000);
    await s.save(B, { filters: [], expirySeconds: 60, expiresAt: WHILE_CONNECTED });
    await s.keep(B, command('b-old', 2), 10, 900);
    await s.keep(B, command('b-fresh', 3), 10, 50_000);
    const { sessions, messages } = await s.expire(1_000);
    expect(sessions).toEqual([A]);
    expect(messages.map((m) => [m.imsi, m.clientId, m.topic])).toEqual([[A.imsi, A.clientId, 'a-fresh'], [B.imsi, B.clientId, 'b-old']]);
    expect((await s.pending(B, 0)).map((m) => m.topic)).toEqual(['b-fresh']);
    expect(await s.expire(1_000)).toEqual({ sessions: [], messages: [] });
  });

  it('holds a session to maxMessages when commands for it are kept at the same time', async () => {
    const s = await store();
    // Commands that arrive together are kept on as many connections as the pool has (PostgreSQL); an
    // overlap is likely, not certain, in one burst: several sessions get one each.
    for (let n = 0; n < 10; n++) {
      const key = { imsi: A.imsi, clientId: `burst-${n}` };
      const kept = await Promise.all(Array.from({ length: 20 }, (_, i) => s.keep(key, command(`c${i}`, i), 2, 1_000)));
      const pending = await s.pending(key, 0);
      expect(pending, key.clientId).toHaveLength(2);
      const dropped = kept.flat();
      // Every command is either still kept or returned as pushed out, once.
      expect([...dropped, ...pending].map((m) => m.topic).sort(), key.clientId).toEqual(Array.from({ length: 20 }, (_, i) => `c${i}`).sort());
    }
  });
});
