import type { Logger } from 'pino';
import type { GroupConfig } from '../config/schema.ts';
import type { Outbox } from '../storage/outbox.ts';
import type { Sim } from '../storage/sims.ts';
import { RatType } from './radius/dictionary.ts';

export interface ConnectivityState {
  online: boolean;
  ip?: string;
  /** 3GPP-RAT-Type as the network reported it. */
  rat?: number | null;
  /** what saw the change: mqtt, radius */
  via: string;
}

/**
 * Writes a device's connectivity into the reported state of its thing's shadow, for groups that ask for
 * it. The update goes through the outbox like any uplink: durable, in order with the device's messages,
 * on the device's own session (its policy allows its own shadow).
 */
export class Connectivity {
  constructor(
    private readonly opts: { outbox: Outbox; group(name: string): GroupConfig; log: Logger },
  ) {}

  report(sim: Sim, state: ConnectivityState): void {
    if (!this.opts.group(sim.group).connectivity) return;
    const now = new Date().toISOString();
    const connectivity = {
      online: state.online,
      via: state.via,
      ...(state.ip ? { ip: state.ip } : {}),
      ...(state.rat != null ? { rat: RatType[state.rat] ?? String(state.rat) } : {}),
      [state.online ? 'since' : 'lastSeen']: now,
    };
    const payload = Buffer.from(JSON.stringify({ state: { reported: { connectivity } } }));
    this.opts.outbox
      .enqueue({ imsi: sim.imsi, deviceTopic: `$aws/things/${sim.thingName}/shadow/update`, payload, qos: 1, receivedAt: Date.now(), system: true })
      .catch((err) => this.opts.log.warn({ thing: sim.thingName, err: String(err) }, 'connectivity update not stored'));
  }
}
