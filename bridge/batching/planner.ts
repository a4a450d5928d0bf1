import type { BatchingConfig } from '../../config/batching.ts';
import type { OutboxMessage } from '../../storage/outbox.ts';
import type { DeviceTopics } from '../topics.ts';
import { EnvelopeBuilder, prepare, type Identity, type PreparedReading } from './envelope.ts';

/** What goes up in one publish: one message as it is, or a batch envelope of several. */
export interface Unit {
  rows: OutboxMessage[];
  topic: string;
  payload: Buffer;
  qos: 0 | 1;
  batched: boolean;
}

/** A window batch not due yet, as the last plan left it: the next plan continues it with newer rows only. */
export interface OpenBatch {
  rows: OutboxMessage[];
  builder: EnvelopeBuilder;
}

export interface PlanInput {
  /** The device's next rows, in order (after those of `open`, when given). */
  rows: OutboxMessage[];
  /** The batch the previous plan left open; it is continued, not rebuilt. */
  open?: OpenBatch;
  /** More rows exist beyond these. */
  more: boolean;
  cfg: BatchingConfig;
  topics: DeviceTopics;
  identity: Identity;
  /** The group's batch topic, filled for this device. */
  batchTopic: string;
  /** Hard cap of one upstream message, topic included (IoT Core: 128 KB). */
  maxMessageBytes: number;
  now: number;
  /** Rows received at or before this time may go now whatever their batch looks like (schedule, flush). */
  releaseBefore: number;
}

/**
 * Turns a device's queued rows into publish units by its group's policy. Order is kept: units cover
 * consecutive rows. Returns how long to wait when the next batch is not due yet.
 */
export function plan(input: PlanInput): { units: Unit[]; waitMs?: number; open?: OpenBatch } {
  const { rows, cfg } = input;
  if (cfg.policy === 'immediate') return { units: rows.map((r) => single(input, r)) };

  const units: Unit[] = [];
  const topicBytes = Buffer.byteLength(input.batchTopic);
  const budget = Math.min(cfg.maxBytes, input.maxMessageBytes) - topicBytes;
  // A reading that does not fit one batch opens the next: prepared once, it is not encoded again.
  const prepared: PreparedReading[] = [];
  const prepareAt = (k: number) => (prepared[k] ??= prepare(rows[k]!));
  let i = 0;
  let open = input.open;
  while (i < rows.length || open) {
    let builder: EnvelopeBuilder;
    let taken: OutboxMessage[];
    /** Rows of `taken` that came with the open batch, not from `rows`. */
    let carried = 0;
    if (open) {
      ({ builder, rows: taken } = open);
      carried = taken.length;
      open = undefined;
    } else {
      const first = rows[i]!;
      // A request to the thing's shadow or Jobs service is not a reading: it goes now, alone, as it is.
      if (isServiceRequest(first)) {
        units.push(single(input, first));
        i++;
        continue;
      }
      // Schedule sends only what arrived before the schedule fired; later rows wait for the next run.
      if (cfg.policy === 'schedule' && first.receivedAt > input.releaseBefore) break;
      builder = new EnvelopeBuilder(input.identity);
      if (!builder.tryAdd(prepareAt(i), budget)) {
        // Too big for any batch: it goes alone, as it is, on its own topic.
        units.push(single(input, first));
        i++;
        continue;
      }
      taken = [first];
    }
    const first = taken[0]!;
    let full = false;
    for (let j = i + taken.length - carried; j < rows.length; j++) {
      const row = rows[j]!;
      // Order is kept: a service request closes the batch before it, which goes now.
      if (isServiceRequest(row)) {
        full = true;
        break;
      }
      if (cfg.policy === 'schedule' && row.receivedAt > input.releaseBefore) break;
      if (taken.length >= cfg.maxMessages || !builder.tryAdd(prepareAt(j), budget)) {
        full = true;
        break;
      }
      taken.push(row);
    }
    if (!full && taken.length >= cfg.maxMessages) full = true;
    const fromRows = taken.length - carried;
    const ranOut = i + fromRows >= rows.length;
    if (!full && ranOut && input.more) break; // the rest of this batch is beyond what was read
    const due = full || first.receivedAt <= input.releaseBefore || (cfg.policy === 'window' && input.now - first.receivedAt >= cfg.maxDelayMs);
    if (!due) return { units, waitMs: Math.max(1, first.receivedAt + cfg.maxDelayMs - input.now), open: { rows: taken, builder } };
    units.push({ rows: taken, topic: input.batchTopic, payload: builder.build(), qos: 1, batched: true });
    i += fromRows;
  }
  return { units };
}

/** A row for the thing's own reserved topics (shadow, Jobs), which ingress lets through only for the device's own thing. */
function isServiceRequest(row: OutboxMessage): boolean {
  return row.deviceTopic.startsWith('$aws/things/');
}

function single(input: PlanInput, row: OutboxMessage): Unit {
  return { rows: [row], topic: input.topics.publishTopic(row.deviceTopic), payload: row.payload, qos: row.qos, batched: false };
}
