// Registering a SIM at its first contact, against SQLite and PostgreSQL alike: many devices (or nodes)
// that show up at once with one new SIM all get its record, exactly one of them creates it, and a thing
// name that belongs to another SIM is still refused.
import { describe, expect, it } from 'vitest';
import { storeDialects } from './helpers/store-dialects.ts';

describe.each(storeDialects())('SIM registration on $name', (dialect) => {
  it('gives every concurrent first contact of one SIM its record, created exactly once', async () => {
    const { stores } = await dialect.fresh();
    // On PostgreSQL two inserts of one row can both pass ON CONFLICT's check on the IMSI and then meet on
    // another unique column (the thing name), inside one statement: no test can hold them at that point,
    // so the race is given many chances (on the old code it surfaced in most runs of this test).
    const sims = Array.from({ length: 200 }, (_, i) => `0010100009${String(i).padStart(5, '0')}`);
    const callsPerSim = 8;
    const results = await Promise.allSettled(
      sims.flatMap((imsi) => Array.from({ length: callsPerSim }, () => stores.sims.register({ imsi, group: 'default', thingName: `sim-${imsi}` }))),
    );
    const failures = results.flatMap((r) => (r.status === 'rejected' ? [String((r.reason as Error).message)] : []));
    expect(failures).toEqual([]);
    const done = results.map((r) => (r as PromiseFulfilledResult<Awaited<ReturnType<typeof stores.sims.register>>>).value);
    for (const [n, imsi] of sims.entries()) {
      const mine = done.slice(n * callsPerSim, (n + 1) * callsPerSim);
      expect(mine.filter((r) => r.created), imsi).toHaveLength(1);
      expect(mine.every((r) => r.sim.imsi === imsi && r.sim.thingName === `sim-${imsi}`), imsi).toBe(true);
    }
  });

  it('still refuses a thing name that belongs to another SIM', async () => {
    const { stores } = await dialect.fresh();
    await stores.sims.register({ imsi: '001010000990001', group: 'default', thingName: 'shared-name' });
    await expect(stores.sims.register({ imsi: '001010000990002', group: 'default', thingName: 'shared-name' })).rejects.toThrow(/thing_name/);
    expect(await stores.sims.get('001010000990002')).toBeUndefined();
  });
});
