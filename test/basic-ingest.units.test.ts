import { describe, expect, it } from 'vitest';
import { groupBatchTopic, groupTopics } from '../bridge/topics.ts';
import { topicViolation } from '../sandbox/data/limits.ts';
import { policyDocument } from '../vending/policy.ts';

const vars = { thing: 'sim-001010000000001', imsi: '001010000000001', imei: '490154203237518' };
const limits = { maxTopicBytes: 256, maxTopicLevels: 8 };
const group = { upstreamTopic: 'devices/{thing}/{topic}', batching: { topic: 'devices/{thing}/batch' }, basicIngest: { rule: 'fleet' } };

describe('Basic Ingest topics', () => {
  it('prefixes uplink and batches, not subscriptions and not the thing\'s own shadow', () => {
    const topics = groupTopics(group, vars);
    expect(topics.publishTopic('a/b')).toBe('$aws/rules/fleet/devices/sim-001010000000001/a/b');
    expect(topics.toUpstream('cmd/#')).toBe('devices/sim-001010000000001/cmd/#');
    expect(topics.publishTopic('$aws/things/sim-001010000000001/shadow/update')).toBe('$aws/things/sim-001010000000001/shadow/update');
    expect(groupBatchTopic(group, vars)).toBe('$aws/rules/fleet/devices/sim-001010000000001/batch');
    expect(groupBatchTopic({ ...group, basicIngest: undefined }, vars)).toBe('devices/sim-001010000000001/batch');
  });

  it('counts levels and bytes without the $aws/rules/{rule}/ prefix, on the gateway and in the sandbox', () => {
    const topics = groupTopics(group, vars);
    expect(topics.checkPublish('1/2/3/4/5/6', limits)).toBeUndefined();
    expect(topics.checkPublish('1/2/3/4/5/6/7', limits)).toBe('topic_too_deep');
    const long = 'x'.repeat(256 - 'devices/sim-001010000000001/'.length);
    expect(topics.checkPublish(long, limits)).toBeUndefined();
    expect(topics.checkPublish(`${long}x`, limits)).toBe('topic_too_long');
    expect(topicViolation('$aws/rules/fleet/1/2/3/4/5/6/7/8')).toBeUndefined();
    expect(topicViolation('$aws/rules/fleet/1/2/3/4/5/6/7/8/9')).toMatch(/9 levels/);
    expect(topicViolation(`$aws/rules/fleet/${'x'.repeat(256)}`)).toBeUndefined();
    expect(topicViolation(`$aws/rules/fleet/${'x'.repeat(257)}`)).toMatch(/257 bytes/);
    expect(topicViolation('1/2/3/4/5/6/7/8/9')).toMatch(/9 levels/);
  });

  it('the policy publishes only under the rule\'s prefix and keeps receive and subscribe on the plain topics', () => {
    const doc = JSON.parse(policyDocument({ region: 'eu-west-1', account: '123456789012', topicTemplates: ['devices/{thing}/{topic}'], basicIngestRule: 'fleet' }));
    const byAction = (a: string) => doc.Statement.find((s: { Action: unknown }) => s.Action === a).Resource as string[];
    const t = '${iot:Connection.Thing.ThingName}';
    expect(byAction('iot:Publish')).toContain(`arn:aws:iot:eu-west-1:123456789012:topic/$aws/rules/fleet/devices/${t}/*`);
    expect(byAction('iot:Publish')).not.toContain(`arn:aws:iot:eu-west-1:123456789012:topic/devices/${t}/*`);
    expect(byAction('iot:Receive')).toContain(`arn:aws:iot:eu-west-1:123456789012:topic/devices/${t}/*`);
    expect(byAction('iot:Subscribe')).toContain(`arn:aws:iot:eu-west-1:123456789012:topicfilter/devices/${t}/*`);
  });
});
