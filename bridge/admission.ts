import type { AuditLog } from '../storage/audit.ts';
import type { Sim, SimStore } from '../storage/sims.ts';
import { Refusal, type DeviceClaim, type IdentitySource } from './identity/source.ts';

/** A device let in: its SIM record and the IMEI it is using now. */
export interface AdmittedDevice {
  sim: Sim;
  imei?: string;
}

export interface AdmissionOptions {
  sims: SimStore;
  audit: AuditLog;
  unknownSims: 'register' | 'reject';
  defaultGroup: string;
  thingName(imsi: string, group: string): string;
}

/**
 * identify → look up the SIM (or register it) → check its status. Every refusal that concerns a SIM is
 * written to the audit log.
 */
export class Admission {
  constructor(private readonly opts: AdmissionOptions) {}

  admit(source: IdentitySource, remoteAddress: string, claim: DeviceClaim): AdmittedDevice | Refusal {
    const result = this.check(source, remoteAddress, claim);
    if (result instanceof Refusal && result.imsi) {
      this.opts.audit.record(`refused_${result.reason}`, result.imsi, { remoteAddress, detail: result.detail, source: source.name });
    }
    return result;
  }

  private check(source: IdentitySource, remoteAddress: string, claim: DeviceClaim): AdmittedDevice | Refusal {
    const identity = source.identify(remoteAddress, claim);
    if (identity instanceof Refusal) return identity;
    const { sims, audit } = this.opts;
    let sim = sims.get(identity.imsi);
    if (!sim) {
      if (this.opts.unknownSims === 'reject') return new Refusal('unknown_sim', 'SIM is not registered', identity.imsi);
      const group = this.opts.defaultGroup;
      const reg = sims.register({ imsi: identity.imsi, group, thingName: this.opts.thingName(identity.imsi, group), boundImei: identity.imei, msisdn: identity.msisdn });
      sim = reg.sim;
      if (reg.created) audit.record('sim_registered', sim.imsi, { remoteAddress, imei: identity.imei, source: source.name });
    }
    if (sim.status === 'suspended') return new Refusal('sim_suspended', 'SIM is suspended', sim.imsi);
    if (sim.status === 'terminated') return new Refusal('sim_terminated', 'SIM is terminated', sim.imsi);
    return { sim, imei: identity.imei };
  }
}
