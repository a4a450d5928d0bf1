import type { Logger } from 'pino';
import type { GroupConfig } from '../config/schema.ts';
import type { AuditStore } from '../storage/audit.ts';
import type { GatewayOutbox } from '../storage/index.ts';
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
 * on the device's own session (its policy allows its own shadow). The shadow service answers on
 * `update/rejected` when it refuses one: that is listened for a while after each report, and audited.
 */
export interface ConnectivityOptions {
  outbox: GatewayOutbox;
  group(name: string): GroupConfig;
  /**
   * Listens on the device's session for the shadow service's answers on `update/rejected` (IoT Core
   * refuses an update that would make the document exceed 8 KB, or a version conflict); resolves with
   * a function that stops listening.
   */
  listenRejected?(sim: Sim, onRejected: (payload: Buffer) => void): Promise<() => Promise<void>>;
  /** How long to listen after a report: the subscription would otherwise keep a sleepy device's session open. */
  answerWaitMs?: number;
  audit?: AuditStore;
  log: Logger;
}

export class Connectivity {
  /** Devices whose rejected answers are being listened for, with the timer that stops it. */
  private readonly listening = new Map<string, { stop: Promise<(() => Promise<void>) | undefined>; timer: NodeJS.Timeout }>();

  constructor(private readonly opts: ConnectivityOptions) {}

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
    const enqueue = () =>
      this.opts.outbox
        .enqueue({ imsi: sim.imsi, deviceTopic: `$aws/things/${sim.thingName}/shadow/update`, payload, qos: 1, receivedAt: Date.now(), system: true })
        .catch((err) => this.opts.log.warn({ thing: sim.thingName, err: String(err) }, 'connectivity update not stored'));
    // The update is sent once the session listens for a refusal of it.
    void this.listen(sim).then(enqueue);
  }

  private async listen(sim: Sim): Promise<void> {
    const { listenRejected } = this.opts;
    if (!listenRejected) return;
    const wait = this.opts.answerWaitMs ?? 30_000;
    const known = this.listening.get(sim.imsi);
    if (known) {
      known.timer.refresh();
      await known.stop;
      return;
    }
    const stop = listenRejected(sim, (payload) => this.rejected(sim, payload)).catch((err) => {
      this.opts.log.warn({ thing: sim.thingName, err: String(err) }, 'cannot listen for shadow refusals');
      return undefined;
    });
    const timer = setTimeout(() => {
      this.listening.delete(sim.imsi);
      void stop.then((s) => s?.());
    }, wait).unref();
    this.listening.set(sim.imsi, { stop, timer });
    await stop;
  }

  /** IoT Core's shadow service refused a connectivity update: say so, the report is lost. */
  private rejected(sim: Sim, payload: Buffer): void {
    let answer: { code?: number; message?: string } = {};
    try {
      answer = JSON.parse(payload.toString('utf8')) as typeof answer;
    } catch {
      // keep it empty: the refusal itself is what matters
    }
    this.opts.log.warn({ thing: sim.thingName, code: answer.code, message: answer.message }, 'shadow update rejected');
    this.opts.audit?.record('shadow_update_rejected', sim.imsi, { code: answer.code, message: answer.message }).catch((err) => this.opts.log.warn({ err: String(err) }, 'shadow refusal not audited'));
  }
}
