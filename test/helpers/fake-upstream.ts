import type { ConnectionEvents, ConnectSettings, UpstreamConnection, UpstreamLink } from '../../bridge/upstream/connections.ts';

export interface FakePublish {
  thing: string;
  topic: string;
  payload: string;
  qos: 0 | 1;
}

interface Waiting {
  resolve(): void;
  reject(err: Error): void;
}

/**
 * A stand-in for the upstream connection threads, for fast in-process tests of what sits above them.
 * It records every publish attempt and every acknowledged one; PUBACKs come on the next turn of the
 * event loop, or when the test releases them (`holdAcks`). A refused publish closes the connection,
 * failing whatever else was in flight on it, as IoT Core does (MQTT 3.1.1 has no negative PUBACK).
 */
export class FakeUpstreamLink implements UpstreamLink {
  connects = 0;
  /** Connect attempts to refuse before accepting again. */
  refuseConnects = 0;
  readonly attempts: FakePublish[] = [];
  readonly acked: FakePublish[] = [];
  /** Which publishes IoT Core refuses. */
  refuse: (p: FakePublish) => boolean = () => false;
  holdAcks = false;
  /** Subscriptions IoT Core refuses (granted QoS 128). */
  refuseFilter: (filter: string) => boolean = () => false;
  readonly subscribed: Array<{ thing: string; filter: string }> = [];
  private readonly held: Waiting[] = [];

  async connect(settings: ConnectSettings, events: ConnectionEvents): Promise<UpstreamConnection> {
    if (this.refuseConnects > 0) {
      this.refuseConnects--;
      throw new Error('connection refused');
    }
    this.connects++;
    let open = true;
    const inflight = new Set<Waiting>();
    const close = (why: string) => {
      if (!open) return;
      open = false;
      for (const w of inflight) w.reject(new Error(why));
      events.interrupted(why);
    };
    return {
      publish: async (topic, payload, qos) => {
        if (!open) throw new Error('connection closed');
        const p: FakePublish = { thing: settings.clientId, topic, payload: payload.toString(), qos };
        this.attempts.push(p);
        const refused = this.refuse(p);
        if (refused) {
          // Closed on the next turn, as a broker does after reading the packet.
          setImmediate(() => close('connection closed by the broker'));
        }
        await new Promise<void>((resolve, reject) => {
          const w: Waiting = {
            resolve: () => (inflight.delete(w), resolve()),
            reject: (err) => (inflight.delete(w), reject(err)),
          };
          inflight.add(w);
          if (this.holdAcks) this.held.push(w);
          else setImmediate(() => (open && !refused ? w.resolve() : undefined));
        });
        this.acked.push(p);
      },
      subscribe: async (filter) => {
        if (this.refuseFilter(filter)) return 128;
        this.subscribed.push({ thing: settings.clientId, filter });
        return 1;
      },
      unsubscribe: async () => undefined,
      disconnect: async () => {
        open = false;
        for (const w of inflight) w.reject(new Error('disconnected'));
      },
    };
  }

  /** Sends the PUBACKs held so far (or the first n of them). */
  releaseAcks(n = Infinity): void {
    for (const w of this.held.splice(0, n)) w.resolve();
  }

  get heldAcks(): number {
    return this.held.length;
  }

  async ready(): Promise<void> {}

  async close(): Promise<void> {}
}
