import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import mqtt from 'mqtt';
import { chromium, type Browser, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { luhnDigit } from '../lib/ids.ts';
import { runCli } from './helpers/cli.ts';
import { findPeer } from './helpers/interop.ts';
import { deviceOptions } from './helpers/mqtt.ts';
import { gatewayConfig, startGatewayProcess, startSandboxProcess, tempDir, type GatewayProcess, type SandboxProcess } from './helpers/processes.ts';
import { startTcpProxy } from './helpers/tcp-proxy.ts';

const chromiumPath = findPeer('chromium', 'chromium');
// The committed screenshot is refreshed only on request (SIMBRIDGE_UPDATE_SCREENSHOT=1), so a test run
// does not rewrite a tracked file; otherwise it goes to a temp directory.
const screenshot = (name: string) =>
  process.env.SIMBRIDGE_UPDATE_SCREENSHOT === '1' ? fileURLToPath(new URL(`../docs/${name}`, import.meta.url)) : join(mkdtempSync(join(tmpdir(), 'simbridge-installer-')), name);
const SCREENSHOT = screenshot('installer.png');
const SCREENSHOT_WAITING = screenshot('installer-waiting.png');

const withLuhn = (body: string) => body + luhnDigit(body);
const SIM = { imsi: '001010000002001', iccid: withLuhn('898821100000200100') };
const BOUND_ELSEWHERE = { imsi: '001010000002002', iccid: withLuhn('898821100000200200') };
const TERMINATED = { imsi: '001010000002003', iccid: withLuhn('898821100000200300') };
const IMEI = withLuhn('35345678000071');
const OTHER_IMEI = withLuhn('35345678000072');
const WRONG_LUHN = IMEI.slice(0, -1) + ((Number(IMEI.at(-1)) + 5) % 10);

describe.skipIf(!chromiumPath)('the installer page in a phone browser', () => {
  const dir = tempDir('admin-installer');
  let sandbox: SandboxProcess;
  // IoT Core (the sandbox) behind relays that start closed: the site's backhaul is down, so the device's
  // first message waits, durable, on the gateway until they open.
  let control: Awaited<ReturnType<typeof startTcpProxy>>;
  let data: Awaited<ReturnType<typeof startTcpProxy>>;
  let gateway: GatewayProcess;
  let browser: Browser;
  let page: Page;
  let installer: string;
  let base: string;

  const token = async (configFile: string, role: string, name: string) => {
    const r = await runCli(['tokens', 'create', '--role', role, '--name', name, '--config', configFile]);
    expect(r.code).toBe(0);
    return r.output.match(/sbt_\S+/)![0];
  };
  const text = (selector: string) => page.locator(selector).innerText();

  // A sandbox, three CLI runs, the gateway and Chromium start here: more than the default hook time on a busy machine.
  beforeAll(async () => {
    sandbox = await startSandboxProcess(dir);
    control = await startTcpProxy(Number(new URL(sandbox.controlEndpoint).port));
    data = await startTcpProxy(sandbox.dataPort);
    control.setOpen(false);
    data.setOpen(false);
    const endpoint = new URL(sandbox.controlEndpoint);
    const cloud = { ...sandbox, controlEndpoint: `${endpoint.protocol}//${endpoint.hostname}:${control.port}`, dataPort: data.port };
    const { file } = await gatewayConfig(dir, cloud, {
      groups: { default: { lock: 'first-contact' }, fleet: { lock: 'locked' } },
      vending: { retryDelayMs: 200, retryMaxDelayMs: 1000 },
    });
    const operator = await token(file, 'operator', 'ops');
    installer = await token(file, 'installer', 'Ana');
    gateway = await startGatewayProcess(file);
    base = `http://127.0.0.1:${gateway.adminPort}`;
    const post = (body: unknown) =>
      fetch(`${base}/v1/sims`, { method: 'POST', headers: { authorization: `Bearer ${operator}`, 'content-type': 'application/json' }, body: JSON.stringify(body) });
    expect((await post({ ...SIM, group: 'fleet' })).status).toBe(201);
    expect((await post({ ...BOUND_ELSEWHERE, group: 'fleet', imei: OTHER_IMEI })).status).toBe(201);
    expect((await post({ ...TERMINATED, group: 'fleet' })).status).toBe(201);
    const patch = await fetch(`${base}/v1/sims/${TERMINATED.imsi}`, {
      method: 'PATCH',
      headers: { authorization: `Bearer ${operator}`, 'content-type': 'application/json' },
      body: JSON.stringify({ status: 'terminated' }),
    });
    expect(patch.status).toBe(200);

    browser = await chromium.launch({
      executablePath: chromiumPath,
      headless: true,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    });
    const context = await browser.newContext({ viewport: { width: 390, height: 844 }, deviceScaleFactor: 2, isMobile: true, hasTouch: true, locale: 'en-GB' });
    page = await context.newPage();
  }, 180_000);

  afterAll(async () => {
    await browser?.close();
    await gateway?.kill('SIGKILL');
    await control?.close();
    await data?.close();
    await sandbox?.process.kill();
  });

  it('refuses a wrong token, then signs in with an installer token', async () => {
    await page.goto(`${base}/installer`);
    await page.fill('#token', 'sbt_not-a-real-token');
    await page.click('#signin-form button');
    await expect.poll(() => text('#signin-msg')).toContain('This token is not valid');
    await page.fill('#token', installer);
    await page.click('#signin-form button');
    await page.locator('#find-step').waitFor({ state: 'visible' });
    expect(await text('#who')).toBe('Ana (installer)');
  });

  it('catches a mistyped ICCID by its check digit before asking the server', async () => {
    const wrong = SIM.iccid.slice(0, -1) + ((Number(SIM.iccid.at(-1)) + 1) % 10);
    await page.fill('#q', wrong);
    await page.click('#find-form button');
    await expect.poll(() => text('#find-msg')).toContain('ICCID check digit does not match');
    expect(await page.getAttribute('#q', 'aria-invalid')).toBe('true');
  });

  it('says a terminated SIM cannot be used', async () => {
    await page.fill('#q', TERMINATED.imsi);
    await page.click('#find-form button');
    await expect.poll(() => text('#sim-msg')).toContain('This SIM is terminated and cannot be used');
    expect(await page.isHidden('#bind-form')).toBe(true);
  });

  it('refuses to bind a SIM already bound to another device, and offers the device swap', async () => {
    await page.fill('#q', BOUND_ELSEWHERE.iccid);
    await page.click('#find-form button');
    await page.locator('#bind-form').waitFor({ state: 'visible' });
    await page.fill('#imei', IMEI);
    await page.click('#bind');
    await expect.poll(() => text('#bind-msg')).toContain(`already bound to another device (IMEI ${OTHER_IMEI})`);
    expect(await page.isVisible('#force')).toBe(true);
  });

  it('finds a SIM by the last digits of its ICCID, rejects a wrong IMEI check digit, binds, and says "Done" only once IoT Core has the first message', async () => {
    await page.fill('#q', SIM.iccid.slice(-6));
    await page.click('#find-form button');
    await expect.poll(() => text('#sim-facts')).toContain(SIM.imsi);
    expect(await text('#sim-facts')).toContain('not bound');

    await page.fill('#imei', WRONG_LUHN);
    await page.click('#bind');
    await expect.poll(() => text('#bind-msg')).toContain('Wrong digits: the last digit (check digit) does not match');
    expect(await page.getAttribute('#imei', 'aria-invalid')).toBe('true');

    await page.fill('#imei', IMEI);
    await page.click('#bind');
    await expect.poll(() => text('#bind-msg')).toContain(`Bound to IMEI ${IMEI}`);
    await page.locator('#status-step').waitFor({ state: 'visible' });
    await expect.poll(() => text('#chk-online')).toContain('Device not online yet');

    // The device is switched on: it connects with the bound IMEI and sends its first message.
    const device = await mqtt.connectAsync(`mqtt://127.0.0.1:${gateway.mqttPort}`, deviceOptions(SIM.imsi, IMEI));
    await device.publishAsync('telemetry', '{"boot":1}', { qos: 1 });
    await device.endAsync();
    await expect.poll(() => text('#chk-message'), { timeout: 15_000, interval: 500 }).toContain('First message received');
    await expect.poll(() => text('#chk-online')).toContain('Device online');
    // Received and stored, but IoT Core is out of reach: the certificate cannot be issued yet.
    await expect.poll(() => text('#status-msg'), { timeout: 15_000, interval: 500 }).toContain("Waiting for the device's certificate");
    expect(await text('#chk-delivered')).toContain('Not delivered to IoT Core yet');
    expect(await text('#chk-cert')).toContain('Certificate not issued yet');
    expect(await text('#status-msg')).not.toContain('Done');
    mkdirSync(dirname(SCREENSHOT_WAITING), { recursive: true });
    await page.screenshot({ path: SCREENSHOT_WAITING, fullPage: true });

    // The backhaul comes back: the certificate is issued and the message delivered.
    control.setOpen(true);
    data.setOpen(true);
    await expect.poll(() => text('#status-msg'), { timeout: 45_000, interval: 500 }).toContain('Done: the device is working. Its first message reached IoT Core.');
    expect(await text('#chk-cert')).toContain('Certificate issued');
    expect(await text('#chk-delivered')).toContain('Delivered to IoT Core');

    mkdirSync(dirname(SCREENSHOT), { recursive: true });
    await page.screenshot({ path: SCREENSHOT, fullPage: true });

    const audit = await fetch(`${base}/v1/sims/${SIM.imsi}`, { headers: { authorization: `Bearer ${installer}` } });
    const view = (await audit.json()) as { recentEvents: Array<{ kind: string; detail: Record<string, unknown> }> };
    expect(view.recentEvents.find((e) => e.kind === 'imei_bound')!.detail).toMatchObject({ imei: IMEI, by: 'Ana', role: 'installer' });
  });
});
