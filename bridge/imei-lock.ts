import type { LockMode } from '../config/schema.ts';
import type { AuditStore } from '../storage/audit.ts';
import type { Sim, SimRegistry } from '../storage/sims.ts';
import { sameDevice } from '../lib/ids.ts';
import { Refusal } from './identity/source.ts';

/**
 * The IMEI lock: a SIM works only in the device it is bound to, so a stolen SIM is useless elsewhere.
 * IMEIs are compared on TAC+SNR. Returns the SIM (re-read after a first-contact bind) or a refusal.
 * Without mayBind (an IMEI only the device vouches for), first contact admits but does not bind.
 */
export async function checkImeiLock(sims: SimRegistry, audit: AuditStore, sim: Sim, imei: string | undefined, groupMode: LockMode, mayBind = true): Promise<Sim | Refusal> {
  const mode = (sim.lockMode as LockMode | null) ?? groupMode;
  if (mode === 'any') return sim;
  if (!sim.boundImei) {
    if (mode === 'locked') return new Refusal('imei_not_bound', 'SIM is locked and not yet bound to a device; an installer must bind it', sim.imsi, { seen: imei ?? null });
    if (!imei || !mayBind) return sim; // first-contact, but nothing (trustworthy) to bind yet
    if (await sims.bindImei(sim.imsi, imei, true)) {
      await audit.record('imei_bound', sim.imsi, { imei, by: 'first-contact' });
      return { ...sim, boundImei: imei };
    }
    // Another connection bound it a moment ago: judge against what it bound.
    const now = await sims.get(sim.imsi);
    if (!now?.boundImei) return sim;
    sim = now;
  }
  if (!imei) return new Refusal('imei_unknown', 'SIM is bound to a device but this connection\'s IMEI is unknown', sim.imsi, { bound: sim.boundImei });
  if (!sameDevice(sim.boundImei!, imei)) {
    return new Refusal('imei_mismatch', 'SIM is bound to another device', sim.imsi, { bound: sim.boundImei, seen: imei });
  }
  return sim;
}
