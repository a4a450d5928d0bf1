import type { Logger } from 'pino';
import type { AdmittedDevice } from '../admission.ts';
import type { Downlink } from '../downlink.ts';
import { UplinkRefusal, type IngressProtocol, type Uplink } from '../uplink.ts';
import type { HeldMessage } from '../../storage/downlink.ts';
import { ThreadedDatagramSocket } from './threaded-socket.ts';

/**
 * The steps the CoAP and raw UDP listeners share, around admission (identify → IMEI lock): bind the
 * socket, commit the message, answer with what is held for the device, drain at close. Each listener
 * keeps only its own wire format (CoAP codes and options, the UDP acknowledgement byte).
 */

/** Binds a datagram socket, read on a thread of its own (threaded-socket.ts); `name` labels its later errors in the log. */
export async function bindDatagramSocket(opts: { host: string; port: number; receiveBufferBytes: number }, log: Logger, name: string): Promise<ThreadedDatagramSocket> {
  // A burst of a waking fleet must fit in the kernel's buffer (Linux's default is about 200 datagrams);
  // the socket is read on a thread of its own so that a busy event loop here does not cap the intake.
  const sock = await ThreadedDatagramSocket.bind({
    host: opts.host,
    port: opts.port,
    recvBufferSize: opts.receiveBufferBytes,
    onLost: (err) => log.error({ err: err.message }, `${name} receiving thread stopped; the listener is down`),
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
export function answerWithHeld(downlink: Downlink, device: AdmittedDevice, protocol: 'coap' | 'udp', send: (held: HeldMessage[]) => void): void {
  downlink.touchHttp(device);
  const held = downlink.pending(device.sim.imsi);
  send(held);
  if (held.length) downlink.delivered(held.map((m) => m.id), protocol);
}

/** Waits, at most `ms`, for the messages being committed to get their answers. */
export async function drainPending(pending: () => number, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms;
  while (pending() > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
}
