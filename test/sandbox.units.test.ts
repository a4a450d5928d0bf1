// Pure parts of the sandbox: the policy language subset, fault injection and the journal.
import { mkdtempSync, readFileSync, rmSync, appendFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { FaultInjector } from '../sandbox/faults.ts';
import { Journal } from '../sandbox/journal.ts';
import { isAllowed, parsePolicy, PolicyError } from '../sandbox/policy.ts';

const ARN = 'arn:aws:iot:us-east-1:123456789012';
const attached = { 'iot:ClientId': 'dev-1', 'iot:Connection.Thing.ThingName': 'dev-1', 'iot:Connection.Thing.IsAttached': 'true' };
const detached = { 'iot:ClientId': 'dev-1', 'iot:Connection.Thing.IsAttached': 'false' };
const policy = (...Statement: object[]) => parsePolicy(JSON.stringify({ Version: '2012-10-17', Statement }));

describe('policy evaluation', () => {
  it('substitutes policy variables; an unresolved variable matches nothing', () => {
    const p = policy({ Effect: 'Allow', Action: 'iot:Connect', Resource: `${ARN}:client/\${iot:Connection.Thing.ThingName}` });
    expect(isAllowed([p], 'iot:Connect', `${ARN}:client/dev-1`, attached)).toBe(true);
    expect(isAllowed([p], 'iot:Connect', `${ARN}:client/dev-2`, attached)).toBe(false);
    expect(isAllowed([p], 'iot:Connect', `${ARN}:client/dev-1`, detached)).toBe(false);
    expect(isAllowed([p], 'iot:Connect', `${ARN}:client/\${iot:Connection.Thing.ThingName}`, detached)).toBe(false);
  });

  it('applies Bool / StringEquals conditions on IsAttached', () => {
    for (const Condition of [{ Bool: { 'iot:Connection.Thing.IsAttached': 'true' } }, { StringEquals: { 'iot:Connection.Thing.IsAttached': ['true'] } }]) {
      const p = policy({ Effect: 'Allow', Action: 'iot:Connect', Resource: `${ARN}:client/\${iot:ClientId}`, Condition });
      expect(isAllowed([p], 'iot:Connect', `${ARN}:client/dev-1`, attached)).toBe(true);
      expect(isAllowed([p], 'iot:Connect', `${ARN}:client/dev-1`, detached)).toBe(false);
    }
  });

  it('matches * and ? wildcards, actions case-insensitively, and treats MQTT + and # literally', () => {
    const p = policy(
      { Effect: 'Allow', Action: 'iot:*', Resource: `${ARN}:topic/a/?/x*` },
      { Effect: 'Allow', Action: 'IOT:subscribe', Resource: `${ARN}:topicfilter/b/#` },
    );
    expect(isAllowed([p], 'iot:Publish', `${ARN}:topic/a/1/xyz`, attached)).toBe(true);
    expect(isAllowed([p], 'iot:Publish', `${ARN}:topic/a/12/xyz`, attached)).toBe(false);
    expect(isAllowed([p], 'iot:Subscribe', `${ARN}:topicfilter/b/#`, attached)).toBe(true);
    expect(isAllowed([p], 'iot:Subscribe', `${ARN}:topicfilter/b/c`, attached)).toBe(false);
  });

  it('lets an explicit Deny win over any Allow, across policies', () => {
    const allow = policy({ Effect: 'Allow', Action: 'iot:Publish', Resource: `${ARN}:topic/*` });
    const deny = policy({ Effect: 'Deny', Action: ['iot:Publish'], Resource: [`${ARN}:topic/secret/*`] });
    expect(isAllowed([allow, deny], 'iot:Publish', `${ARN}:topic/open`, attached)).toBe(true);
    expect(isAllowed([allow, deny], 'iot:Publish', `${ARN}:topic/secret/x`, attached)).toBe(false);
    expect(isAllowed([], 'iot:Publish', `${ARN}:topic/open`, attached)).toBe(false);
  });

  it('does not let a substituted value act as a wildcard', () => {
    const p = policy({ Effect: 'Allow', Action: 'iot:Publish', Resource: `${ARN}:topic/\${iot:ClientId}` });
    expect(isAllowed([p], 'iot:Publish', `${ARN}:topic/anything`, { 'iot:ClientId': '*' })).toBe(false);
    expect(isAllowed([p], 'iot:Publish', `${ARN}:topic/*`, { 'iot:ClientId': '*' })).toBe(true);
  });

  it('refuses what it does not support instead of ignoring it', () => {
    expect(() => parsePolicy('{')).toThrow(PolicyError);
    expect(() => policy({ Effect: 'Maybe', Action: 'iot:*', Resource: '*' })).toThrow(/Effect/);
    expect(() => policy({ Effect: 'Allow', NotAction: 'iot:*', Resource: '*' })).toThrow(/NotAction/);
    expect(() => policy({ Effect: 'Allow', Action: 'iot:*', Resource: '*', Condition: { IpAddress: { 'aws:SourceIp': '1.2.3.4' } } })).toThrow(/IpAddress/);
  });
});

describe('fault injector', () => {
  it('throttles beyond the TPS quota and refills with time', () => {
    let now = 0;
    const f = new FaultInjector(() => 0.5, () => now);
    f.configure({ tps: { AttachPolicy: 2 } });
    const names = () => f.decide('AttachPolicy').error?.name;
    expect([names(), names(), names()]).toEqual([undefined, undefined, 'ThrottlingException']);
    now += 500; // one token back
    expect([names(), names()]).toEqual([undefined, 'ThrottlingException']);
    expect(f.decide('CreateThing').error).toBeUndefined();
    expect(f.stats()).toMatchObject({ throttled: { AttachPolicy: 2 }, totals: { requests: 6, throttled: 2, failed: 0 } });
  });

  it('applies rates only to the chosen operations, and scripted faults once each', () => {
    const f = new FaultInjector(() => 0.1);
    f.configure({ failureRate: 0.2, operations: ['CreateThing'], latencyMs: 10, throttleNext: { DescribeThing: 1 } });
    expect(f.decide('CreateThing')).toMatchObject({ delayMs: 10, error: { name: 'InternalFailureException', status: 500 } });
    expect(f.decide('GetPolicy')).toEqual({ delayMs: 0 });
    expect(f.decide('DescribeThing').error?.name).toBe('ThrottlingException');
    expect(f.decide('DescribeThing').error).toBeUndefined();
    expect(() => f.configure({ failureRate: 3 })).toThrow();
    f.reset();
    expect(f.decide('CreateThing')).toEqual({ delayMs: 0 });
  });
});

describe('journal', () => {
  const dir = mkdtempSync(join(tmpdir(), 'simbridge-journal-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it('replays puts and deletes, ignores a torn last line, and compacts on open', () => {
    const file = join(dir, 'r.jsonl');
    const j = new Journal(file);
    j.put('thing', 'a', { v: 1 });
    j.put('thing', 'b', { v: 2 });
    j.put('thing', 'a', { v: 3 });
    j.put('thing', 'b', undefined);
    j.close();
    appendFileSync(file, '{"k":"thing","id":"c","v":{"v"'); // crash mid-write

    const again = new Journal(file);
    expect([...again.table('thing')]).toEqual([['a', { v: 3 }]]);
    again.close();
    expect(readFileSync(file, 'utf8').trim().split('\n')).toHaveLength(1);
  });
});
