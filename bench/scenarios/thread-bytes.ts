// Payloads crossing to a worker thread (the outbox writer, the upstream connection thread, the datagram
// thread): what one costs the posting thread, by the form the bytes travel in. Knobs: BENCH_ROUNDS
// (messages per form, 20,000; quick 3,000), BENCH_BATCH (payloads per message, 20).
import { Worker } from 'node:worker_threads';
import { knob, type Ctx, type Scenario } from '../lib/context.ts';
import type { ScenarioResult } from '../lib/report.ts';
import { round } from '../lib/stats.ts';
import { bytesToPost } from '../../lib/worker-calls.ts';

const PAYLOAD_BYTES = 200;
/** A socket read of a device connection: the payloads arrive as slices of reads like this one. */
const READ_BYTES = 16 * 1024;

/** Each form builds one message of `batch` payloads, each sliced from a read of its own. */
const FORMS: Record<string, (reads: Buffer[]) => unknown> = {
  // What the gateway posted before: the payload Buffers as the sockets handed them over.
  buffer_slices: (reads) => reads.map((r) => ({ topic: 'telemetry', payload: r.subarray(0, PAYLOAD_BYTES) })),
  // Copied first into Node's Buffer pool (an 8 KB slab each clone takes along).
  pooled_copies: (reads) => reads.map((r) => ({ topic: 'telemetry', payload: Buffer.from(r.subarray(0, PAYLOAD_BYTES)) })),
  // Copied into a buffer of its own, exactly the payload's size.
  exact_copies: (reads) => reads.map((r) => ({ topic: 'telemetry', payload: new Uint8Array(r.subarray(0, PAYLOAD_BYTES)) })),
  // What the gateway posts now (lib/worker-calls.ts bytesToPost).
  latin1_text: (reads) => reads.map((r) => ({ topic: 'telemetry', payload: bytesToPost(r.subarray(0, PAYLOAD_BYTES)) })),
};

/** Posts `rounds` messages to a thread that counts them, a window of 64 outstanding: µs per payload on this thread. */
async function measure(form: (reads: Buffer[]) => unknown, rounds: number, batch: number): Promise<number> {
  const worker = new Worker('const { parentPort } = require("node:worker_threads"); parentPort.on("message", () => parentPort.postMessage(0));', { eval: true });
  const reads = Array.from({ length: batch }, () => Buffer.alloc(READ_BYTES, 'r'));
  let answered = 0;
  let wake: (() => void) | undefined;
  worker.on('message', () => (answered++, wake?.()));
  await new Promise((r) => worker.once('online', r));
  let busyMs = 0;
  for (let sent = 0; sent < rounds; sent++) {
    while (sent - answered >= 64) await new Promise<void>((r) => (wake = r));
    const started = performance.now();
    worker.postMessage(form(reads));
    busyMs += performance.now() - started;
  }
  await worker.terminate();
  return (busyMs * 1000) / (rounds * batch);
}

async function threadBytes(ctx: Ctx): Promise<ScenarioResult> {
  const rounds = knob('ROUNDS', 20_000, 3_000, ctx);
  const batch = knob('BATCH', 20, 20, ctx);
  const figures: Record<string, number> = {};
  // Twice over, interleaved; the lower of the two (the machine is shared).
  for (let pass = 0; pass < 2; pass++) {
    for (const [name, form] of Object.entries(FORMS)) {
      const us = await measure(form, rounds, batch);
      const key = `us_per_payload_${name}`;
      figures[key] = Math.min(figures[key] ?? Infinity, us);
      ctx.log(`  pass ${pass + 1}, ${name}: ${round(us)} µs per payload`);
    }
  }
  figures.buffer_slices_vs_latin1_ratio = figures.us_per_payload_buffer_slices / figures.us_per_payload_latin1_text;
  return {
    params: { rounds, payloads_per_message: batch, payload_bytes: PAYLOAD_BYTES, read_bytes: READ_BYTES },
    figures: Object.fromEntries(Object.entries(figures).map(([k, v]) => [k, round(v)])),
    intro: [
      `The posting thread's time to build and post one message of ${batch} payloads of ${PAYLOAD_BYTES} bytes to a worker thread, per payload, by the form the bytes travel in; each payload sliced from a ${READ_BYTES / 1024} KB read of its own, as a device socket hands them over.`,
    ],
    notes: [
      'A structured clone copies the whole backing store behind a Buffer and gives every one its own on arrival; a one-byte string is copied as itself. The gateway posts payloads as latin1 text (lib/worker-calls.ts bytesToPost).',
    ],
  };
}

export const scenario: Scenario = {
  title: 'payload bytes crossing to a worker thread, by form',
  run: threadBytes,
};
