import { createSocket, type Socket } from 'node:dgram';
import { isIPv6 } from 'node:net';
import type { Logger } from 'pino';
import type { AdmittedDevice } from '../admission.ts';
import type { Downlink } from '../downlink.ts';
import { UplinkRefusal, type IngressProtocol, type Uplink } from '../uplink.ts';
import type { HeldMessage } from '../../storage/downlink.ts';

/**
 * The steps the CoAP and raw UDP listeners share, around admission (identify → IMEI lock): bind the
 * socket, commit the message, answer with what is held for the device, drain at close. Each listener
 * keeps only its own wire format (CoAP codes and options, the UDP acknowledgement byte).
 */

/** Binds a datagram socket; `name` labels its later errors in the log. */
export async function bindDatagramSocket(opts: { host: string; port: number; receiveBufferBytes: number }, log: Logger, name: string): Promise<Socket> {
  // A burst of a waking fleet must fit in the kernel's buffer while the event loop is busy (Linux's default is about 200 datagrams).
  const sock = createSocket({ type: isIPv6(opts.host) ? 'udp6' : 'udp4', recvBufferSize: opts.receiveBufferBytes });
  await new Promise<void>((resolve, reject) => {
    sock.once('error', reject);
    sock.bind(opts.port, opts.host, () => {
      sock.off('error', reject);
      resolve();
    });
  });
  sock.on('error', (err) => log.warn({ err: err.message }, `${name} socket error`));
  return sock;
}

/**
 * Commits the message (the outbox) before anything is answered: the answer is the durable ack. A
 * refusal comes back as a value and is already counted by the uplink; anything else throws.
 */
export async function commit(uplink: Uplink, protocol: IngressProtocol, device: AdmittedDevice, topic: string, payload: Buffer, qos: number): Promise<number | UplinkRefusal> {
  try {
    return await uplink.accept(protocol, device, topic, payload, qos);
  } catch (err) {
    if (err instanceof UplinkRefusal) return err;
    throw err;
  }
}

/**
 * The device is awake now: what is held for it rides in this answer, and counts as delivered once
 * `send` has sent it (a lost answer is the device's to ask again).
 */
export function answerWithHeld(downlink: Downlink, device: AdmittedDevice, send: (held: HeldMessage[]) => void): void {
  downlink.touchHttp(device);
  const held = downlink.pending(device.sim.imsi);
  send(held);
  if (held.length) downlink.delivered(held.map((m) => m.id));
}

/** Waits, at most `ms`, for the messages being committed to get their answers. */
export async function drainPending(pending: () => number, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms;
  while (pending() > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
}
