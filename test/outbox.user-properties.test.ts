// MQTT 5 user properties are stored with their message in both dialects and read back after a restart,
// so a batch built later still carries them (bridge/batching/envelope.ts).
import { describe, expect, it } from 'vitest';
import type { CommitWriter } from '../storage/outbox-commit.ts';
import { storeDialects } from './helpers/store-dialects.ts';

describe.each(storeDialects())('user properties in the outbox on $name', (dialect) => {
  it('keeps them with their message, and leaves other messages without', async () => {
    const f = await dialect.fresh();
    const writer: CommitWriter = { commit: (req) => f.commit(req), ready: async () => undefined, close: async () => undefined };
    const outbox = await f.outbox(writer);
    const imsi = '001010000000601';
    const base = { imsi, deviceTopic: 'meter', qos: 1 as const, receivedAt: Date.now() };
    await outbox.enqueue({ ...base, payload: Buffer.from('{"kwh":1}'), userProperties: '{"unit":"kWh"}' });
    await outbox.enqueue({ ...base, payload: Buffer.from('{"kwh":2}') });
    const restarted = await f.outbox(writer);
    const rows = await restarted.peek(imsi, 0, 10);
    expect(rows.map((r) => r.userProperties)).toEqual(['{"unit":"kWh"}', undefined]);
  });
});
