// A group's templates are filled once per device and reused (bridge/topics.ts): what is reused must
// always be what filling them anew would give.
import { describe, expect, it } from 'vitest';
import { groupBatchTopic, groupTopics, publishNamesImei, UDP_DEVICE_TOPIC, type GroupTopicConfig } from '../bridge/topics.ts';

const group = (upstreamTopic: string, batchTopic = 'batches/{thing}'): GroupTopicConfig => ({ upstreamTopic, batching: { topic: batchTopic } });
const device = { thing: 'sim-001010000000001', imsi: '001010000000001', imei: '490154203237518' };

describe('group topics bound to a device', () => {
  it('reuses the filled templates for the same group and device', () => {
    const g = group('devices/{thing}/{topic}');
    expect(groupTopics(g, { ...device })).toBe(groupTopics(g, { ...device }));
    expect(groupTopics(g, device).publishTopic('telemetry')).toBe('devices/sim-001010000000001/telemetry');
    expect(groupBatchTopic(g, device)).toBe('batches/sim-001010000000001');
  });

  it('fills anew when the device bound to the SIM changes, or its thing', () => {
    const g = group('devices/{imei}/{topic}', 'batches/{imei}');
    expect(groupTopics(g, device).publishTopic('t')).toBe('devices/490154203237518/t');
    const moved = { ...device, imei: '356938035643809' };
    expect(groupTopics(g, moved).publishTopic('t')).toBe('devices/356938035643809/t');
    expect(groupBatchTopic(g, moved)).toBe('batches/356938035643809');
    expect(groupTopics(g, { ...device, thing: 'renamed' }).isOwnReserved('$aws/things/renamed/shadow/update')).toBe(true);
  });

  it("tells which messages go to a topic named by the IMEI: the group's template, its UDP topic, its batch topic when it batches", () => {
    const unbound = { ...device, imei: '' };
    const byImei = group('devices/{imei}/{topic}');
    const topics = groupTopics(byImei, unbound);
    expect(publishNamesImei(byImei, 'telemetry', topics)).toBe(true);
    // The thing's own shadow and Jobs are not filled from a template.
    expect(publishNamesImei(byImei, '$aws/things/sim-001010000000001/shadow/update', topics)).toBe(false);
    const udpByThing = { ...byImei, udpTopic: 'devices/{thing}/udp' };
    expect(publishNamesImei(udpByThing, UDP_DEVICE_TOPIC, groupTopics(udpByThing, unbound))).toBe(false);
    const batchByImei = { upstreamTopic: 'devices/{thing}/{topic}', batching: { topic: 'batches/{imei}', policy: 'immediate' } };
    expect(publishNamesImei(batchByImei, 'telemetry', groupTopics(batchByImei, unbound))).toBe(false);
    const windowed = { ...batchByImei, batching: { ...batchByImei.batching, policy: 'window' } };
    expect(publishNamesImei(windowed, 'telemetry', groupTopics(windowed, unbound))).toBe(true);
    expect(publishNamesImei(group('devices/{thing}/{topic}'), 'telemetry', groupTopics(group('devices/{thing}/{topic}'), unbound))).toBe(false);
  });

  it('follows a reloaded group: a new config object is filled from its own template', () => {
    const before = group('devices/{thing}/{topic}');
    const after = group('fleet/{imsi}/{topic}');
    expect(groupTopics(before, device).publishTopic('t')).toBe('devices/sim-001010000000001/t');
    expect(groupTopics(after, device).publishTopic('t')).toBe('fleet/001010000000001/t');
  });

  it("tells the thing's own reserved topics from everything else", () => {
    const topics = groupTopics(group('devices/{thing}/{topic}'), device);
    expect(topics.isOwnReserved('$aws/things/sim-001010000000001/jobs/get')).toBe(true);
    expect(topics.isOwnReserved('$aws/things/sim-001010000000002/shadow/get')).toBe(false);
    expect(topics.isOwnReserved('telemetry')).toBe(false);
    expect(topics.checkPublish('$aws/things/sim-001010000000001/jobs/notify', { maxTopicBytes: 256, maxTopicLevels: 8 })).toBe('topic_invalid');
    expect(topics.checkPublish('$aws/things/sim-001010000000001/jobs/get', { maxTopicBytes: 256, maxTopicLevels: 8 })).toBeUndefined();
  });
});
