// A group's templates are filled once per device and reused (bridge/topics.ts): what is reused must
// always be what filling them anew would give.
import { describe, expect, it } from 'vitest';
import { groupBatchTopic, groupTopics, type GroupTopicConfig } from '../bridge/topics.ts';

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

  it("keeps both a device's presented and its bound IMEI, each filled as itself, and a third one anew", () => {
    const g = group('devices/{imei}/{topic}', 'batches/{imei}');
    const unbound = { ...device, imei: '' };
    // The uplink fills with the IMEI the device presents, delivery with the one the SIM is bound to.
    const presented = groupTopics(g, device);
    const bound = groupTopics(g, unbound);
    expect(groupTopics(g, { ...device })).toBe(presented);
    expect(groupTopics(g, { ...unbound })).toBe(bound);
    expect(presented.publishTopic('t')).toBe('devices/490154203237518/t');
    expect(bound.publishTopic('t')).toBe('devices//t');
    expect(groupBatchTopic(g, unbound)).toBe('batches/');
    expect(groupBatchTopic(g, device)).toBe('batches/490154203237518');
    expect(groupTopics(g, { ...device, imei: '356938035643809' }).publishTopic('t')).toBe('devices/356938035643809/t');
    expect(groupTopics(g, device).publishTopic('t')).toBe('devices/490154203237518/t');
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
