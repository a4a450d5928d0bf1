import pino from 'pino';
import { describe, expect, it } from 'vitest';
import { plan } from '../bridge/batching/planner.ts';
import { DeviceJobs, type DeviceJobsOptions } from '../bridge/jobs.ts';
import { createMetrics } from '../bridge/metrics.ts';
import type { GroupConfig } from '../config/schema.ts';
import type { AuditStore } from '../storage/audit.ts';
import type { Sim } from '../storage/sims.ts';
import type { DeviceCredentials } from '../vending/vendor.ts';
import { groupTopics } from '../bridge/topics.ts';
import { batchingSection } from '../config/batching.ts';
import { sleepingJobsOn } from '../config/jobs.ts';
import { decodeJobReport } from '../bridge/ingress/job-report.ts';
import { encode as cborEncode } from 'cbor-x';
import type { OutboxMessage } from '../storage/outbox.ts';

const vars = { thing: 'sim-001010000000001', imsi: '001010000000001', imei: '490154203237518' };
const limits = { maxTopicBytes: 256, maxTopicLevels: 8 };
const own = '$aws/things/sim-001010000000001/jobs';
const other = '$aws/things/sim-001010000000002/jobs';

describe('a device\'s own Jobs topics', () => {
  const topics = groupTopics({ upstreamTopic: 'devices/{thing}/{topic}', batching: { topic: 'devices/{thing}/batch' }, basicIngest: { rule: 'fleet' } }, vars);

  it('publishes only the Jobs requests of its own thing, as they are (never under Basic Ingest)', () => {
    for (const t of ['get', 'start-next', 'fw-1/get', '$next/get', 'fw-1/update']) {
      expect(topics.checkPublish(`${own}/${t}`, limits)).toBeUndefined();
      expect(topics.publishTopic(`${own}/${t}`)).toBe(`${own}/${t}`);
    }
    for (const t of ['notify', 'notify-next', 'get/accepted', 'fw-1/update/rejected', 'a/b/c']) expect(topics.checkPublish(`${own}/${t}`, limits)).toBe('topic_invalid');
    expect(topics.checkPublish(`${other}/get`, limits)).toBe('topic_invalid');
  });

  it('subscribes to its own Jobs answers and notifications, never another thing\'s', () => {
    for (const f of ['notify-next', 'notify', '+/update/accepted', 'start-next/accepted', '#']) {
      expect(topics.checkSubscribe(`${own}/${f}`, limits)).toBeUndefined();
      expect(topics.toUpstream(`${own}/${f}`)).toBe(`${own}/${f}`);
    }
    expect(topics.toDevice(`${own}/notify-next`)).toBe(`${own}/notify-next`);
    expect(topics.checkSubscribe(`${other}/notify-next`, limits)).toBe('topic_invalid');
    expect(topics.checkSubscribe('$aws/things/+/jobs/notify', limits)).toBe('topic_invalid');
    expect(topics.toDevice(`${other}/notify-next`)).toBeUndefined();
  });
});

describe('batching leaves service requests alone', () => {
  const T0 = Date.parse('2026-11-28T10:00:00Z');
  const row = (id: number, deviceTopic: string, at: number): OutboxMessage => ({ id, imsi: vars.imsi, deviceTopic, payload: Buffer.from(`p${id}`), qos: 1, receivedAt: at });

  it('sends a Jobs request at once and alone, after the batch before it, in order', () => {
    const topics = groupTopics({ upstreamTopic: 'devices/{thing}/{topic}', batching: { topic: 'devices/{thing}/batch' } }, vars);
    const rows = [row(1, 'meter', T0), row(2, 'meter', T0 + 1), row(3, `${own}/start-next`, T0 + 2), row(4, 'meter', T0 + 3)];
    const cfg = batchingSection.parse({ policy: 'window', maxMessages: 10, maxDelayMs: 60_000 });
    const out = plan({ rows, more: false, cfg, topics, identity: { imsi: vars.imsi, imei: vars.imei, thing: vars.thing }, batchTopic: 'devices/sim-001010000000001/batch', maxMessageBytes: 131072, now: T0 + 10, releaseBefore: -Infinity });
    expect(out.units.map((u) => [u.topic, u.rows.map((r) => r.id)])).toEqual([
      ['devices/sim-001010000000001/batch', [1, 2]],
      [`${own}/start-next`, [3]],
    ]);
    expect(out.units[1]!.batched).toBe(false);
    // The reading after it opens the next batch, which waits for its window.
    expect(out.open?.rows.map((r) => r.id)).toEqual([4]);
  });

  it('sends a shadow report (connectivity) to the shadow, not inside a batch', () => {
    const topics = groupTopics({ upstreamTopic: 'devices/{thing}/{topic}', batching: { topic: 'devices/{thing}/batch' } }, vars);
    const shadow = '$aws/things/sim-001010000000001/shadow/update';
    const cfg = batchingSection.parse({ policy: 'schedule' });
    const out = plan({ rows: [row(1, shadow, T0)], more: false, cfg, topics, identity: { imsi: vars.imsi, imei: vars.imei, thing: vars.thing }, batchTopic: 'devices/sim-001010000000001/batch', maxMessageBytes: 131072, now: T0 + 10, releaseBefore: -Infinity });
    expect(out.units.map((u) => [u.topic, u.batched])).toEqual([[shadow, false]]);
  });
});

describe('jobs for HTTP devices when IoT Core does not answer', () => {
  const sim = { imsi: vars.imsi, thingName: vars.thing, group: 'default' } as Sim;
  const audited: string[] = [];
  const make = (pool: Partial<DeviceJobsOptions['pool']>, credentials: DeviceJobsOptions['credentials'] = async () => ({}) as DeviceCredentials) =>
    new DeviceJobs({
      pool: pool as DeviceJobsOptions['pool'],
      credentials,
      group: () => ({ httpJobs: true }) as GroupConfig,
      settings: () => ({ answerTimeoutMs: 100, responseWaitMs: 50, holdMs: 60_000 }),
      audit: { record: async (kind: string) => void audited.push(kind) } as unknown as AuditStore,
      metrics: createMetrics(),
      log: pino({ level: 'silent' }),
    });
  // A session that takes every request and never answers.
  const silent = { subscribe: async () => 1 as const, unsubscribe: async () => undefined, session: async () => ({ publish: async () => undefined }) as never };

  it('answers upstream_timeout when no answer comes, and upstream_unavailable when the session cannot open', async () => {
    const jobs = make(silent);
    expect(await jobs.update(sim, 'fw-1', { status: 'SUCCEEDED' })).toMatchObject({ ok: false, reason: 'upstream_timeout' });
    const down = make(silent, async () => Promise.reject(new Error('vending failed')));
    expect(await down.update(sim, 'fw-1', { status: 'SUCCEEDED' })).toMatchObject({ ok: false, reason: 'upstream_unavailable', message: expect.stringContaining('vending failed') });
    jobs.close();
    down.close();
  });

  it('refuses a malformed report before asking IoT Core, and audits it', async () => {
    const jobs = make({ ...silent, session: async () => Promise.reject(new Error('must not be asked')) });
    for (const body of [{ status: 'DONE' }, { status: 'SUCCEEDED', expectedVersion: 'x' }, { status: 'SUCCEEDED', statusDetails: { a: 1 } }, { status: 'SUCCEEDED', extra: 1 }, 'text']) {
      expect(await jobs.update(sim, 'fw-1', body)).toMatchObject({ ok: false, reason: 'job_update_invalid' });
    }
    expect(await jobs.update(sim, 'bad id', { status: 'SUCCEEDED' })).toMatchObject({ ok: false, reason: 'job_update_invalid' });
    expect(audited.filter((k) => k === 'job_update_refused').length).toBeGreaterThanOrEqual(6);
    jobs.close();
  });

  it('lets the 202 go after responseWaitMs with the last list known', async () => {
    const jobs = make(silent);
    const started = Date.now();
    expect(await jobs.forResponse(sim)!.settle()).toEqual([]);
    expect(Date.now() - started).toBeLessThan(1000);
    jobs.close();
  });
});

describe('the group flag and the report body, shared by HTTP and CoAP', () => {
  it('runs Jobs with sleepingJobs, or with its former name httpJobs; sleepingJobs wins when both are set', () => {
    expect(sleepingJobsOn({})).toBe(false);
    expect(sleepingJobsOn({ sleepingJobs: true })).toBe(true);
    expect(sleepingJobsOn({ httpJobs: true })).toBe(true);
    expect(sleepingJobsOn({ sleepingJobs: false, httpJobs: true })).toBe(false);
  });

  it('decodes a report in JSON or CBOR, and gives undefined (job_update_invalid) for anything else', () => {
    const report = { status: 'SUCCEEDED', expectedVersion: 2, statusDetails: { installed: '5.0' } };
    expect(decodeJobReport(Buffer.from(JSON.stringify(report)), 'json')).toEqual(report);
    expect(decodeJobReport(Buffer.from(cborEncode(report)), 'cbor')).toEqual(report);
    expect(decodeJobReport(Buffer.from('{oops'), 'json')).toBeUndefined();
    expect(decodeJobReport(Buffer.from([0xff, 0xff]), 'cbor')).toBeUndefined();
  });
});
