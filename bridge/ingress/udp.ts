import type { RemoteInfo } from 'node:dgram';
import type { Logger } from 'pino';
import type { Admission } from '../admission.ts';
import type { Downlink } from '../downlink.ts';
import { Refusal, type IdentitySource } from '../identity/source.ts';
import type { Metrics } from '../metrics.ts';
import { UDP_DEVICE_TOPIC } from '../topics.ts';
import { UplinkRefusal, type Uplink } from '../uplink.ts';
import { DatagramGuard } from './datagram-guard.ts';
import { answerWithHeld, bindDatagramSocket, commit, drainPending } from './datagram-steps.ts';
import { downlinkJson } from './http.ts';

export interface UdpIngressOptions {
  host: string;
  port: number;
  maxDatagramBytes: number;
  maxPending: number;
  perAddressPerSecond: number;
  perAddressBurst: number;
  maxAddresses: number;
  receiveBufferBytes: number;
  identity: IdentitySource;
  admission: Admission;
  uplink: Uplink;
  downlink: Downlink;
  /** The group's `udpAck` for a SIM (its group, or the default group when the SIM is not known). */
  udpAck(imsi: string): 'none' | 'commit';
  metrics: Metrics;
  log: Logger;
}

export interface UdpIngress {
  port: number;
  listening(): boolean;
  close(): Promise<void>;
}

/**
 * The acknowledgement datagram (`udpAck: commit`), first byte:
 *   0x00 stored (committed), followed by nothing, or by {"downlink":[…]} (JSON) when commands were held;
 *   0x01 refused for good, followed by the reason in ASCII (e.g. "imei_mismatch"): do not resend;
 *   0x02 not stored now, followed by the reason ("outbox_full", "busy"): resend later.
 */
export const UDP_ACK = { stored: 0x00, refused: 0x01, retryLater: 0x02 } as const;

const retryLaterReasons = new Set(['outbox_full', 'storage_unavailable', 'busy']);

/**
 * Raw UDP for devices: one datagram is one message, stored under the group's `udpTopic`. Identity comes
 * from the source address only (RADIUS session or static table); the pipeline is the gateway's own:
 * identify → IMEI lock → commit → (udpAck: commit) an acknowledgement datagram. Addresses the gateway
 * cannot identify are never answered.
 */
export async function startUdpIngress(opts: UdpIngressOptions): Promise<UdpIngress> {
  const { metrics, log } = opts;
  const guard = new DatagramGuard(opts);
  let pending = 0;
  let closing = false;

  const sock = await bindDatagramSocket(opts, log, 'UDP');
  sock.on('overflow', (n: number) => metrics.refusals.inc({ protocol: 'udp', reason: 'receive_queue_full' }, n));
  sock.on('message', (msg: Buffer, rinfo: RemoteInfo) => {
    if (closing) return;
    const problem = guard.check(rinfo.address, msg.length);
    if (problem) return void metrics.refusals.inc({ protocol: 'udp', reason: problem });
    pending++;
    void handle(msg, rinfo).finally(() => pending--);
  });

  function send(rinfo: RemoteInfo, status: number, body?: Buffer) {
    const datagram = body ? Buffer.concat([Buffer.from([status]), body]) : Buffer.from([status]);
    sock.send(datagram, rinfo.port, rinfo.address, (err: Error | null) => err && log.debug({ err: err.message }, 'UDP acknowledgement not sent'));
  }

  function refuse(rinfo: RemoteInfo, imsi: string | undefined, reason: string, counted = false) {
    if (!counted) metrics.refusals.inc({ protocol: 'udp', reason });
    if (imsi && opts.udpAck(imsi) === 'commit') send(rinfo, retryLaterReasons.has(reason) ? UDP_ACK.retryLater : UDP_ACK.refused, Buffer.from(reason));
  }

  async function handle(msg: Buffer, rinfo: RemoteInfo) {
    try {
      const device = await opts.admission.admit(opts.identity, rinfo.address, {});
      if (device instanceof Refusal) return refuse(rinfo, device.imsi, device.reason);
      if (pending > opts.maxPending) return refuse(rinfo, device.sim.imsi, 'busy');
      const id = await commit(opts.uplink, 'udp', device, UDP_DEVICE_TOPIC, msg, 1);
      if (id instanceof UplinkRefusal) return refuse(rinfo, device.sim.imsi, id.reason, true);
      if (opts.udpAck(device.sim.imsi) !== 'commit') return;
      answerWithHeld(opts.downlink, device, 'udp', (held) =>
        send(rinfo, UDP_ACK.stored, held.length ? Buffer.from(JSON.stringify({ downlink: held.map(downlinkJson) })) : undefined),
      );
    } catch (err) {
      metrics.refusals.inc({ protocol: 'udp', reason: 'internal_error' });
      log.error({ err: (err as Error).message }, 'UDP datagram failed');
    }
  }

  return {
    port: sock.address().port,
    listening: () => !closing && sock.isOpen,
    async close() {
      closing = true;
      await drainPending(() => pending);
      await new Promise<void>((resolve) => sock.close(() => resolve()));
    },
  };
}
