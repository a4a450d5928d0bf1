import { AddressTable, normaliseAddress } from '../../lib/address-table.ts';
import { checkClaimAgainstNetwork } from './network-claim.ts';
import { Refusal, type DeviceClaim, type IdentitySource, type NetworkIdentity } from './source.ts';

/** Fixed-IP SIMs: a configured table of address or CIDR → IMSI. The IMEI is unknown unless claimed. */
export class StaticIdentity implements IdentitySource {
  readonly name = 'static';
  private readonly table = new AddressTable<string>();

  constructor(entries: Array<{ address: string; imsi: string }>) {
    for (const e of entries) this.table.add(e.address, e.imsi);
  }

  identify(remoteAddress: string, claim: DeviceClaim): NetworkIdentity | Refusal {
    const imsi = this.table.lookup(remoteAddress);
    if (!imsi) return new Refusal('unidentified', `no static identity for ${normaliseAddress(remoteAddress)}`);
    const checked = checkClaimAgainstNetwork({ imsi }, claim);
    if (checked instanceof Refusal) return checked;
    return { imsi, imei: checked.imei, source: this.name };
  }
}
