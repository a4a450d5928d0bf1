import type { RemoteInfo } from 'node:dgram';
import type { Logger } from 'pino';
import type { Admission } from '../admission.ts';
import type { Downlink } from '../downlink.ts';
import { Refusal, type IdentitySource } from '../identity/source.ts';
import type { Metrics } from '../metrics.ts';
import { UDP_DEVICE_TOPIC } from '../topics.ts';
import { UplinkRefusal, type Uplink } from '../uplink.ts';
import { DatagramGuard } from './datagram-guard.ts';
import { downlinkJson } from './http.ts';
import { ThreadedDatagramSocket } from './threaded-socket.ts';

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

  // A burst of a waking fleet must fit in the kernel's buffer (Linux's default is about 200 datagrams);
  // the socket is read on a thread of its own so that a busy event loop here does not cap the intake.
  const sock = await ThreadedDatagramSocket.bind({
    host: opts.host,
    port: opts.port,
    recvBufferSize: opts.receiveBufferBytes,
    onLost: (err) => log.error({ err: err.message }, 'UDP receiving thread stopped; the listener is down'),
  });
  sock.on('error', (err) => log.warn({ err: err.message }, 'UDP socket error'));
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
      try {
        await opts.uplink.accept('udp', device, UDP_DEVICE_TOPIC, msg, 1);
      } catch (err) {
        if (err instanceof UplinkRefusal) return refuse(rinfo, device.sim.imsi, err.reason, true);
        throw err;
      }
      if (opts.udpAck(device.sim.imsi) !== 'commit') return;
      opts.downlink.touchHttp(device);
      const held = opts.downlink.pending(device.sim.imsi);
      send(rinfo, UDP_ACK.stored, held.length ? Buffer.from(JSON.stringify({ downlink: held.map(downlinkJson) })) : undefined);
      if (held.length) opts.downlink.delivered(held.map((m) => m.id), 'udp');
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
      const deadline = Date.now() + 5000;
      while (pending > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
      await new Promise<void>((resolve) => sock.close(() => resolve()));
    },
  };
}
