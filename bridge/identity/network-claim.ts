import { normaliseImei, sameDevice } from '../../lib/ids.ts';
import { Refusal, type DeviceClaim } from './source.ts';

/**
 * In network modes a device may still say who it is; when that disagrees with the network it is
 * refused, because identity from the network beats anything a device claims.
 * Only values shaped like the identifier count as claims: in network modes the MQTT username and client
 * id are free for other uses (a random client id is no IMEI claim).
 * Returns the claimed IMEI (normalised) when the network does not know one.
 */
export function checkClaimAgainstNetwork(network: { imsi: string; imei?: string | null }, claim: DeviceClaim): { imei?: string } | Refusal {
  if (claim.imsi && /^\d+$/.test(claim.imsi) && claim.imsi !== network.imsi) {
    return new Refusal('claim_mismatch', 'claimed IMSI differs from the network\'s', network.imsi);
  }
  if (!claim.imei || !/^\d{14,16}$/.test(claim.imei)) return { imei: network.imei ?? undefined };
  const claimed = normaliseImei(claim.imei);
  if ('problem' in claimed) return new Refusal('invalid_imei', `IMEI ${claimed.problem.replaceAll('_', ' ')}`, network.imsi);
  if (network.imei && !sameDevice(network.imei, claimed.imei)) {
    return new Refusal('claim_mismatch', 'claimed IMEI differs from the network\'s', network.imsi);
  }
  return { imei: network.imei ?? claimed.imei };
}
