import type { SessionLookup } from '../../storage/network-sessions.ts';
import { normaliseAddress } from '../../lib/address-table.ts';
import { checkClaimAgainstNetwork } from './network-claim.ts';
import { Refusal, type DeviceClaim, type IdentitySource, type NetworkIdentity } from './source.ts';

/** The source IP's live RADIUS accounting session says who the device is. */
export class RadiusIdentity implements IdentitySource {
  readonly name = 'radius';

  constructor(private readonly sessions: SessionLookup) {}

  identify(remoteAddress: string, claim: DeviceClaim): NetworkIdentity | Refusal {
    const ip = normaliseAddress(remoteAddress);
    const session = this.sessions.byIp(ip);
    if (!session) return new Refusal('unidentified', `no network session for ${ip}`);
    const checked = checkClaimAgainstNetwork(session, claim);
    if (checked instanceof Refusal) return checked;
    return { imsi: session.imsi, imei: checked.imei, msisdn: session.msisdn ?? undefined, source: this.name };
  }
}
