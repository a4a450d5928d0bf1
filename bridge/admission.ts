import { createHash } from 'node:crypto';
import type { GroupConfig } from '../config/schema.ts';
import type { AuditStore } from '../storage/audit.ts';
import { verifySecret } from '../storage/secret-hash.ts';
import type { Sim, SimRegistry, SimRouting } from '../storage/sims.ts';
import { Refusal, type DeviceClaim, type IdentitySource, type NetworkIdentity } from './identity/source.ts';
import { checkImeiLock } from './imei-lock.ts';

/** A device let in: its SIM record, the IMEI it is using now and how it was identified. */
export interface AdmittedDevice {
  sim: Sim;
  imei?: string;
  msisdn?: string;
  source: string;
}

export interface AdmissionOptions {
  /** SIM records as every message reads them, from memory. */
  routing: SimRouting;
  /** The registry, for first contacts (registration, IMEI binding). */
  sims: SimRegistry;
  audit: AuditStore;
  unknownSims(): 'register' | 'reject';
  defaultGroup(): string;
  group(name: string): GroupConfig;
  thingName(imsi: string, group: string): string;
  /** A SIM showed up in another device than the one it is locked to. */
  onImeiViolation?(sim: Sim): void;
}

/**
 * identify → look up the SIM (or register it) → check its status → its secret (claimed identity, where
 * the group requires one) → the IMEI lock. Every refusal that concerns a SIM is written to the audit log
 * under the refusal's reason.
 */
export class Admission {
  /** Last secret verified per SIM (as a SHA-256, with the hash it matched), so scrypt runs once per change. */
  private readonly verifiedSecrets = new Map<string, { digest: string; against: string }>();

  constructor(private readonly opts: AdmissionOptions) {}

  async admit(source: IdentitySource, remoteAddress: string, claim: DeviceClaim): Promise<AdmittedDevice | Refusal> {
    const result = await this.check(source, remoteAddress, claim);
    if (result instanceof Refusal && result.imsi) {
      await this.opts.audit.record(result.reason, result.imsi, { remoteAddress, source: source.name, detail: result.detail, ...result.facts });
    }
    return result;
  }

  private async check(source: IdentitySource, remoteAddress: string, claim: DeviceClaim): Promise<AdmittedDevice | Refusal> {
    const identity = source.identify(remoteAddress, claim);
    if (identity instanceof Refusal) return identity;
    const sim = this.opts.routing.forRouting(identity.imsi) ?? (await this.register(identity, source.name, remoteAddress));
    if (sim instanceof Refusal) return sim;
    if (sim.status === 'suspended') return new Refusal('sim_suspended', 'SIM is suspended', sim.imsi);
    if (sim.status === 'terminated') return new Refusal('sim_terminated', 'SIM is terminated', sim.imsi);
    const group = this.opts.group(sim.group);
    if (source.name === 'claimed' && group.requireSecret && !(await this.secretMatches(sim, claim.secret))) {
      return new Refusal('bad_secret', 'the SIM\'s secret is missing or wrong', sim.imsi);
    }
    // A device's own word is no ground for locking a SIM to it: whoever claims the SIM first would own it.
    const mayBind = source.name !== 'claimed' || group.bindClaimedImei;
    const locked = await checkImeiLock(this.opts.sims, this.opts.audit, sim, identity.imei, group.lock, mayBind);
    if (locked instanceof Refusal) {
      if (locked.reason === 'imei_mismatch') this.opts.onImeiViolation?.(sim);
      return locked;
    }
    return { sim: locked, imei: identity.imei, msisdn: identity.msisdn ?? locked.msisdn ?? undefined, source: source.name };
  }

  /** A SIM seen for the first time: registered, or refused where unknown SIMs are. */
  private async register(identity: NetworkIdentity, source: string, remoteAddress: string): Promise<Sim | Refusal> {
    const { sims, audit } = this.opts;
    if (this.opts.unknownSims() === 'reject') return new Refusal('unknown_sim', 'SIM is not registered', identity.imsi);
    const group = this.opts.defaultGroup();
    // A claimed SIM registered now would have no secret to pass: registering it would only let anyone
    // fill the registry. Answered as a wrong secret, so a guesser cannot tell which IMSIs exist.
    if (source === 'claimed' && this.opts.group(group).requireSecret) {
      return new Refusal('bad_secret', 'the SIM\'s secret is missing or wrong', identity.imsi);
    }
    const reg = await sims.register({ imsi: identity.imsi, group, thingName: this.opts.thingName(identity.imsi, group), msisdn: identity.msisdn });
    if (reg.created) await audit.record('sim_registered', identity.imsi, { remoteAddress, source });
    return reg.sim;
  }

  private async secretMatches(sim: Sim, secret: string | undefined): Promise<boolean> {
    if (!secret || !sim.secretHash) return false;
    const digest = createHash('sha256').update(secret).digest('hex');
    const known = this.verifiedSecrets.get(sim.imsi);
    if (known && known.against === sim.secretHash) return known.digest === digest;
    if (!(await verifySecret(secret, sim.secretHash))) return false;
    this.verifiedSecrets.set(sim.imsi, { digest, against: sim.secretHash });
    return true;
  }
}
