import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { RadiusCounters } from './radius/listener.ts';

/** Outbox depth and age per group, read when scraped. */
export interface OutboxByGroup {
  group: string;
  rows: number;
  bytes: number;
  oldestReceivedAt: number | null;
}

/** The gateway's Prometheus metrics, one registry per gateway instance. */
export function createMetrics(readOutboxByGroup: () => OutboxByGroup[] = () => []) {
  const registry = new Registry();
  // Two gauges read the same scan of the outbox: one scan per scrape.
  let memo: { at: number; groups: OutboxByGroup[] } | undefined;
  const outboxByGroup = () => {
    if (!memo || Date.now() - memo.at > 250) memo = { at: Date.now(), groups: readOutboxByGroup() };
    return memo.groups;
  };
  // The RADIUS listener keeps its own counters (tests read them); they are copied out when scraped.
  let radius: (() => RadiusCounters) | undefined;
  // Process and event-loop figures (nodejs_eventloop_lag_*): a blocked loop delays every acknowledgement.
  collectDefaultMetrics({ register: registry });
  return {
    outboxMessages: new Gauge({
      name: 'simbridge_outbox_messages',
      help: 'messages waiting in the outbox, by group',
      labelNames: ['group'] as const,
      registers: [registry],
      collect() {
        this.reset();
        for (const g of outboxByGroup()) this.set({ group: g.group }, g.rows);
      },
    }),
    outboxOldestAge: new Gauge({
      name: 'simbridge_outbox_oldest_age_seconds',
      help: 'age of the oldest message waiting in the outbox, by group',
      labelNames: ['group'] as const,
      registers: [registry],
      collect() {
        this.reset();
        const now = Date.now();
        for (const g of outboxByGroup()) if (g.oldestReceivedAt !== null) this.set({ group: g.group }, (now - g.oldestReceivedAt) / 1000);
      },
    }),
    registry,
    ingress: new Counter({
      name: 'simbridge_ingress_messages_total',
      help: 'device messages by protocol, group and result',
      labelNames: ['protocol', 'group', 'result'] as const,
      registers: [registry],
    }),
    refusals: new Counter({
      name: 'simbridge_refusals_total',
      help: 'refused connections, requests and messages by protocol and reason',
      labelNames: ['protocol', 'reason'] as const,
      registers: [registry],
    }),
    upstreamPublishes: new Counter({
      name: 'simbridge_upstream_publishes_total',
      help: 'upstream publishes (single messages or batches) by group and result',
      labelNames: ['group', 'result'] as const,
      registers: [registry],
    }),
    billedUnits: new Counter({
      name: 'simbridge_upstream_billed_units_total',
      help: 'IoT Core billing units (5 KB of payload and topic) of acknowledged publishes, by group',
      labelNames: ['group'] as const,
      registers: [registry],
    }),
    batchSize: new Histogram({
      name: 'simbridge_batch_messages',
      help: 'device messages carried per upstream publish, by group',
      labelNames: ['group'] as const,
      buckets: [1, 2, 5, 10, 20, 50, 100, 200, 500],
      registers: [registry],
    }),
    outboxCommitSeconds: new Histogram({
      name: 'simbridge_outbox_commit_seconds',
      help: 'time of one outbox write transaction on the writer thread (acknowledgements wait for it)',
      buckets: [0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
      registers: [registry],
    }),
    upstreamSessions: new Gauge({ name: 'simbridge_upstream_sessions', help: 'open upstream sessions', registers: [registry] }),
    upstreamConnects: new Counter({
      name: 'simbridge_upstream_connects_total',
      help: 'upstream connection attempts by result',
      labelNames: ['result'] as const,
      registers: [registry],
    }),
    vends: new Counter({ name: 'simbridge_vends_total', help: 'vending attempts by result', labelNames: ['result'] as const, registers: [registry] }),
    vendQueueDepth: new Gauge({ name: 'simbridge_vend_queue_depth', help: 'SIMs waiting for or in vending', registers: [registry] }),
    vendSeconds: new Histogram({ name: 'simbridge_vend_seconds', help: 'time to vend a device', registers: [registry], buckets: [0.1, 0.5, 1, 2, 5, 10, 30, 60] }),
    downlink: new Counter({
      name: 'simbridge_downlink_messages_total',
      help: 'messages down to devices by protocol and result (delivered, held, dropped, expired, retained_not_wanted)',
      labelNames: ['protocol', 'result'] as const,
      registers: [registry],
    }),
    jobRequests: new Counter({
      name: 'simbridge_job_requests_total',
      help: 'IoT Jobs requests made for sleeping HTTP and CoAP devices, by kind (pending, update) and result (accepted, rejected code, timeout, unavailable)',
      labelNames: ['kind', 'result'] as const,
      registers: [registry],
    }),
    fileDownloads: new Counter({
      name: 'simbridge_file_downloads_total',
      help: 'downloads of files named by job documents, by result (ok, checksum_mismatch, size_mismatch, too_large, failed)',
      labelNames: ['result'] as const,
      registers: [registry],
    }),
    fileBytesServed: new Counter({
      name: 'simbridge_file_bytes_served_total',
      help: 'bytes of cached files sent to devices, by protocol',
      labelNames: ['protocol'] as const,
      registers: [registry],
    }),
    fileCacheBytes: new Gauge({
      name: 'simbridge_file_cache_bytes',
      help: 'bytes held in the file cache',
      registers: [registry],
    }),
    fileCacheEvictions: new Counter({
      name: 'simbridge_file_cache_evictions_total',
      help: 'files removed from the file cache to stay within files.maxBytes',
      registers: [registry],
    }),
    dropped: new Counter({
      name: 'simbridge_messages_dropped_total',
      help: 'queued messages dropped to make room (drop-oldest), by group and reason',
      labelNames: ['group', 'reason'] as const,
      registers: [registry],
    }),
    datagramDuplicates: new Counter({
      name: 'simbridge_datagram_duplicates_total',
      help: 'retransmitted CoAP requests answered without being processed again, by protocol',
      labelNames: ['protocol'] as const,
      registers: [registry],
    }),
    deadLetters: new Counter({ name: 'simbridge_dead_letters_total', help: 'messages moved to the dead letters', labelNames: ['reason'] as const, registers: [registry] }),
    radiusPackets: new Counter({
      name: 'simbridge_radius_packets_total',
      help: 'RADIUS accounting packets by result (received, accepted, duplicate, dropped, ignored, send_failed) and reason',
      labelNames: ['result', 'reason'] as const,
      registers: [registry],
      collect() {
        const c = radius?.();
        if (!c) return;
        this.reset();
        this.inc({ result: 'received', reason: '' }, c.received);
        this.inc({ result: 'accepted', reason: '' }, c.accepted);
        this.inc({ result: 'duplicate', reason: '' }, c.duplicates);
        this.inc({ result: 'send_failed', reason: '' }, c.sendFailed);
        for (const [reason, n] of Object.entries(c.dropped)) this.inc({ result: 'dropped', reason }, n);
        for (const [reason, n] of Object.entries(c.ignored)) this.inc({ result: 'ignored', reason }, n);
      },
    }),
    radiusCommits: new Counter({
      name: 'simbridge_radius_commits_total',
      help: 'RADIUS accounting transactions committed (accepted / commits = records per group commit)',
      registers: [registry],
      collect() {
        const c = radius?.();
        if (c) (this.reset(), this.inc(c.commits));
      },
    }),
    /** Makes the RADIUS listener's counters part of every scrape. */
    watchRadius(read: () => RadiusCounters) {
      radius = read;
    },
  };
}

export type Metrics = ReturnType<typeof createMetrics>;
