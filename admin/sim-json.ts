import type { Sim } from '../storage/sims.ts';
import { iso } from './schemas.ts';

/** A SIM as the API shows it: ISO times, and whether a secret is set rather than its hash. */
export function simJson(sim: Sim, online?: boolean) {
  return {
    imsi: sim.imsi,
    iccid: sim.iccid,
    msisdn: sim.msisdn,
    group: sim.group,
    status: sim.status,
    boundImei: sim.boundImei,
    lockMode: sim.lockMode,
    thingName: sim.thingName,
    tags: sim.tags,
    hasSecret: sim.secretHash !== null,
    createdAt: iso(sim.createdAt)!,
    lastSeenAt: iso(sim.lastSeenAt),
    ...(online === undefined ? {} : { online }),
  };
}
