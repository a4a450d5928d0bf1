import { isImsi, normaliseImei } from '../../lib/ids.ts';
import { Refusal, type DeviceClaim, type IdentitySource, type NetworkIdentity } from './source.ts';

/** The device states its own IMSI and IMEI. Only for labs or a public APN over VPN, where configured. */
export class ClaimedIdentity implements IdentitySource {
  readonly name = 'claimed';

  identify(_remoteAddress: string, claim: DeviceClaim): NetworkIdentity | Refusal {
    if (!claim.imsi || !isImsi(claim.imsi)) {
      return new Refusal('invalid_imsi', 'IMSI must be 6 to 15 digits');
    }
    if (claim.imei === undefined || claim.imei === '') return { imsi: claim.imsi, source: this.name };
    const imei = normaliseImei(claim.imei);
    if ('problem' in imei) {
      return new Refusal('invalid_imei', `IMEI ${imei.problem.replaceAll('_', ' ')}: 15 digits with a Luhn check digit, or a 16-digit IMEISV`, claim.imsi);
    }
    return { imsi: claim.imsi, imei: imei.imei, source: this.name };
  }
}
