import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ConfigError, loadConfig } from '../config/load.ts';
import { runCli } from './helpers/cli.ts';

const dir = mkdtempSync(join(tmpdir(), 'simbridge-config-'));
function file(name: string, text: string): string {
  const p = join(dir, name);
  writeFileSync(p, text);
  return p;
}

function problems(fn: () => unknown): string[] {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return (err as ConfigError).problems;
  }
  throw new Error('expected a ConfigError');
}

describe('configuration', () => {
  it('defaults to the sandbox with the documented ports', () => {
    const c = loadConfig(undefined, {});
    expect(c.mode).toBe('sandbox');
    expect(c.listeners.mqtt.port).toBe(1883);
    expect(c.listeners.http.port).toBe(8080);
    expect(c.sandbox.observerPort).toBe(1884);
    expect(c.dataDir).toBe('./data');
    expect(c.storage.synchronous).toBe('full');
  });

  it('names the key path and the reason for a bad value', () => {
    const p = file('bad.yaml', 'upstream:\n  port: abc\n');
    expect(problems(() => loadConfig(p, {}))).toEqual(['upstream.port: expected a number, got "abc"']);
  });

  it('has device limits by default, and refuses a header timeout longer than the request timeout', () => {
    const c = loadConfig(undefined, {});
    expect(c.listeners.mqtt).toMatchObject({ maxConnectionsPerAddress: 64, maxConnectionsPerSim: 4, maxKeepAliveSeconds: 1200, keepAliveZero: 'limit' });
    expect(c.listeners.http).toMatchObject({ maxConnectionsPerAddress: 256, headersTimeoutMs: 20_000, requestTimeoutMs: 60_000, idleTimeoutMs: 15_000 });
    const p = file('timeouts.yaml', 'listeners:\n  http:\n    headersTimeoutMs: 90000\n');
    expect(problems(() => loadConfig(p, {}))).toEqual(['listeners.http.headersTimeoutMs: must not exceed listeners.http.requestTimeoutMs (got 90000)']);
  });

  it('holds upstream sessions with the node client on a connection thread by default, and refuses the aws-crt client without a thread', () => {
    const c = loadConfig(undefined, {});
    expect(c.upstream.client).toBe('node');
    expect(c.upstream.threads).toBe(1);
    const p = file('crt.yaml', 'upstream:\n  client: aws-crt\n  threads: 0\n');
    expect(problems(() => loadConfig(p, {}))).toEqual(['upstream.threads: the aws-crt client runs on threads of its own: at least 1 (got 0)']);
    expect(loadConfig(file('crt1.yaml', 'upstream:\n  client: aws-crt\n'), {}).upstream.threads).toBe(1);
  });

  it('reports unknown keys and bad enum values', () => {
    const p = file('bad2.yaml', 'mode: cloud\nlisteners:\n  mqtt:\n    prot: 1\n');
    expect(problems(() => loadConfig(p, {})).sort()).toEqual([
      'listeners.mqtt: unknown key "prot"',
      'mode: expected one of "sandbox", "aws", got "cloud"',
    ]);
  });

  it('interpolates ${VAR} and ${VAR:-default}, and names a missing variable by line', () => {
    const p = file('env.yaml', 'listeners:\n  mqtt:\n    port: ${MQTT_PORT}\n  http:\n    port: ${HTTP_PORT:-9999}\n');
    const c = loadConfig(p, { MQTT_PORT: '2883' });
    expect(c.listeners.mqtt.port).toBe(2883);
    expect(c.listeners.http.port).toBe(9999);
    expect(problems(() => loadConfig(p, {}))).toEqual(['line 3: environment variable MQTT_PORT is not set']);
  });

  it('lets SIMBRIDGE_* variables override ports and the data directory', () => {
    const c = loadConfig(undefined, { SIMBRIDGE_MQTT_PORT: '11883', SIMBRIDGE_HTTP_PORT: '18080', SIMBRIDGE_DATA_DIR: '/var/lib/x' });
    expect(c.listeners.mqtt.port).toBe(11883);
    expect(c.listeners.http.port).toBe(18080);
    expect(c.dataDir).toBe('/var/lib/x');
    expect(problems(() => loadConfig(undefined, { SIMBRIDGE_MQTT_PORT: 'abc' }))).toEqual([
      'listeners.mqtt.port: expected a number, got "abc"',
    ]);
  });

  it('reports YAML syntax errors with their line', () => {
    const p = file('syntax.yaml', 'mode: sandbox\nlisteners: [\n');
    expect(problems(() => loadConfig(p, {}))[0]).toMatch(/^line \d+: /);
  });

  it('validates every example config', () => {
    for (const name of ['sandbox.yaml', 'aws-iot.yaml', 'radius.yaml']) {
      expect(() =>
        loadConfig(join('config/examples', name), { AWS_REGION: 'eu-west-1', SIMBRIDGE_MASTER_KEY_FILE: '/etc/simbridge/master.key', SIMBRIDGE_RADIUS_SECRET: 'pgw' }),
      ).not.toThrow();
    }
  });

  it('`simbridge config check` exits non-zero naming the path and reason', async () => {
    const bad = await runCli(['config', 'check', file('cli.yaml', 'upstream:\n  port: abc\n')]);
    expect(bad.code).toBe(78);
    expect(bad.output).toContain('upstream.port: expected a number, got "abc"');
    const good = await runCli(['config', 'check', 'config/examples/sandbox.yaml']);
    expect(good.code).toBe(0);
  });

  describe('identity outside the sandbox', () => {
    const aws = (yaml: string) => file(`id-${Math.random().toString(36).slice(2)}.yaml`, `mode: aws\n${yaml}`);
    const radius = 'radius:\n  enabled: true\n  clients: [{ address: 10.0.0.1, secret: s }]\n';

    it('refuses claimed identity without per-SIM secrets, naming each listener', () => {
      const found = problems(() => loadConfig(aws(''), {}));
      expect(found).toHaveLength(2);
      expect(found[0]).toMatch(/^listeners\.mqtt\.identity: claimed identity without per-SIM secrets \(requireSecret is off in group default\).*identity\.allowInsecureClaims: true/);
      expect(found[1]).toMatch(/^listeners\.http\.identity: claimed identity without per-SIM secrets/);
      // Only the groups still open are named.
      expect(problems(() => loadConfig(aws('groups:\n  default: { requireSecret: true }\n  lab: {}\n'), {}))[0]).toContain('requireSecret is off in group lab)');
    });

    it('accepts claimed identity when every group requires the SIM\'s secret', () => {
      expect(loadConfig(aws('groups:\n  default: { requireSecret: true }\n'), {}).listeners.mqtt.identity).toBe('claimed');
    });

    it('counts a claimed CoAP listener like the others: beside radius it is refused', () => {
      const p = aws(`listeners:\n  mqtt: { identity: radius }\n  http: { identity: radius }\n  coap: { enabled: true, identity: claimed }\n${radius}groups:\n  default: { requireSecret: true }\n`);
      expect(problems(() => loadConfig(p, {}))).toEqual([
        'listeners.coap.identity: claimed beside radius identity on listeners.mqtt: devices can go around the network identity through this port; use one identity on both listeners, or set identity.allowInsecureClaims: true (got "claimed")',
      ]);
      // Off (the default outside the sandbox), it opens nothing.
      expect(loadConfig(aws(`listeners:\n  mqtt: { identity: radius }\n  http: { identity: radius }\n${radius}`), {}).listeners.coap.identity).toBe('claimed');
    });

    it('refuses a claimed listener beside a radius one, even with secrets', () => {
      const p = aws(`listeners:\n  mqtt: { identity: radius }\n${radius}groups:\n  default: { requireSecret: true }\n`);
      expect(problems(() => loadConfig(p, {}))).toEqual([
        'listeners.http.identity: claimed beside radius identity on listeners.mqtt: devices can go around the network identity through this port; use one identity on both listeners, or set identity.allowInsecureClaims: true',
      ]);
      expect(loadConfig(aws(`listeners:\n  mqtt: { identity: radius }\n  http: { identity: radius }\n${radius}`), {}).listeners.http.identity).toBe('radius');
    });

    it('runs with identity.allowInsecureClaims: true, and `config check` shouts about it', async () => {
      const p = aws(`listeners:\n  mqtt: { identity: radius }\n${radius}identity:\n  allowInsecureClaims: true\ngroups:\n  default: { bindClaimedImei: true }\n`);
      const r = await runCli(['config', 'check', p]);
      expect(r.code).toBe(0);
      expect(r.output).toContain(`${p}: ok`);
      expect(r.output).toMatch(/INSECURE listeners\.http\.identity: claimed identity without per-SIM secrets/);
      expect(r.output).toMatch(/INSECURE listeners\.http\.identity: claimed beside radius identity on listeners\.mqtt/);
      expect(r.output).toMatch(/INSECURE groups\.default\.bindClaimedImei: a claimed IMEI binds the SIM on first contact/);
      const refused = await runCli(['config', 'check', aws('')]);
      expect(refused.code).toBe(78);
      expect(refused.output).toContain('listeners.mqtt.identity: claimed identity without per-SIM secrets');
    });

    it('leaves the sandbox open to claims (the demo), and says so', async () => {
      expect(loadConfig(undefined, {}).identity.allowInsecureClaims).toBe(false);
      const r = await runCli(['config', 'check', 'config/examples/sandbox.yaml']);
      expect(r.code).toBe(0);
      expect(r.output).toMatch(/NOTE listeners\.mqtt\.identity: claimed identity without per-SIM secrets .*allowed in the sandbox/);
    });
  });

  it('`simbridge config check` refuses a group whose IoT policy would exceed 2,048 characters (whitespace excluded)', async () => {
    const long = `devices/{thing}/${'x'.repeat(700)}/{topic}`;
    const bad = await runCli(['config', 'check', file('policy.yaml', `groups:\n  default:\n    upstreamTopic: "${long}"\n`)]);
    expect(bad.code).toBe(78);
    expect(bad.output).toMatch(/groups\.default: its policy simbridge-default would be \d+ characters \(IoT Core allows 2048/);
    const fits = await runCli(['config', 'check', file('policy-ok.yaml', `groups:\n  default:\n    upstreamTopic: "devices/{thing}/${'x'.repeat(200)}/{topic}"\n`)]);
    expect(fits.code).toBe(0);
  });
});
