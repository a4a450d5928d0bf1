import type { Queryable } from './connect.ts';

/**
 * The advisory lock namespaces simbridge takes on PostgreSQL, in one place so that no two collide. Each is
 * the first key of a two-key, transaction-scoped lock whose second key is the hash of what is locked (the
 * migrations' single-key lock, storage/postgres/connect.ts, is a key space of its own).
 */
export const LOCKS = {
  /** Commits for one SIM across nodes (migration 013's function takes it). */
  simCommit: 0x53494d,
  /** Keeps of one persistent MQTT session. */
  mqttSession: 0x4d5153,
  /** RADIUS changes of one IP address. */
  radiusIp: 0x524144,
  /** Downlink held for one HTTP (CoAP, UDP) device. */
  heldDownlink: 0x484c44,
} as const;

/** Inside a transaction: waits for the lock of one thing in a namespace, and holds it until the transaction ends. */
export async function lockInTransaction(c: Queryable, space: keyof typeof LOCKS, key: string): Promise<void> {
  await c.query('SELECT pg_advisory_xact_lock($1, hashtext($2))', [LOCKS[space], key]);
}
