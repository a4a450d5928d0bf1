// Simulated device identities and the payload format that lets the collector match what arrives
// upstream with what a device sent.

import { luhnDigit } from '../../lib/ids.ts';

export interface DeviceSpec {
  /** Index within the run's device set; also the id embedded in payloads. */
  idx: number;
  imsi: string;
  imei: string;
  /** Loopback source address the device binds (127.0.0.2, 127.0.0.3, ...). */
  localAddress: string;
  /** Topic the device publishes to (the device topic for simbridge, the full upstream topic for a bridge). */
  topic: string;
}

/** Loopback source address of device i: 127.0.0.2 upwards, then 127.0.1.x, ... (never .0, .1 or .255). */
export function loopbackAddress(i: number): string {
  const host = (i % 250) + 2;
  const net = Math.floor(i / 250);
  return `127.0.${net}.${host}`;
}

/**
 * `count` devices. `series` keeps device sets of different targets (simbridge, the bridge) apart:
 * IMSI 00101 + series (1 digit) + 9-digit index; IMEI = TAC 35 + series + 5 digits, SNR, Luhn.
 */
export function devices(count: number, series: number, topic: (imsi: string) => string, addressOffset = 0): DeviceSpec[] {
  return Array.from({ length: count }, (_, idx) => {
    const imsi = `00101${series}${String(idx).padStart(9, '0')}`;
    const body = `35${series}00000${String(idx).padStart(6, '0')}`.slice(0, 14);
    return { idx, imsi, imei: body + String(luhnDigit(body)), localAddress: loopbackAddress(idx + addressOffset), topic: topic(imsi) };
  });
}

export const SIMBRIDGE_TOPIC = () => 'telemetry';
/** What simbridge's default template makes of SIMBRIDGE_TOPIC; a bridge's devices publish to it directly. */
export const UPSTREAM_TOPIC = (imsi: string) => `devices/sim-${imsi}/telemetry`;

/** Wall-clock time in ms with sub-ms resolution, comparable across processes on this machine. */
export function nowMs(): number {
  return performance.timeOrigin + performance.now();
}

/**
 * A reading: a JSON document `{"r":"~R<tag>:<device>:<seq>:<sent ms>~","p":"....."}` padded to `size`
 * bytes. Being JSON, a batching gateway splices it verbatim into its envelope, so the collector finds the
 * marker inside batched upstream messages too (base64-wrapped readings are decoded as well).
 */
export function payload(tag: string, dev: number, seq: number, size: number): Buffer {
  const head = `{"r":"~R${tag}:${dev}:${seq}:${nowMs().toFixed(3)}~","p":"`;
  const pad = Math.max(0, size - head.length - 2);
  return Buffer.from(head + '.'.repeat(pad) + '"}');
}

export const READING = /~R([A-Za-z0-9]+):(\d+):(\d+):(\d+\.\d+)~/g;
