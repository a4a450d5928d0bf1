// Vending benchmark: 1,000 new SIMs make first contact at once (one HTTP publish each) with a simbridge
// gateway whose IoT Core is the sandbox enforcing the default AWS quotas (CreateCertificateFromCsr and
// AttachPolicy 15/s, ...). Measures the wall time until every SIM has a certificate in use, against the
// quota-bound minimum (SIMs / 15 per second), and counts errors that reached devices: non-2xx answers,
// and throttling that got past the API retries into the vending state.
// Side by side, as many registered SIMs are then pre-vended in bulk by `simbridge vend` (no devices, no
// upstream sessions): vending alone, against the same quotas.
// The sandbox and simbridge are separate processes on loopback. Knob: BENCH_SIMS (1,000).

import { mkdirSync, rmSync } from 'node:fs';
import { loadavg } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { spawnCli, startGatewayProcess, startSandboxProcess, tempDir, TEST_MASTER_KEY, writeYaml, type CliProcess } from '../../test/helpers/processes.ts';
import { SqliteCredentialStore } from '../../storage/credentials.ts';
import { openDatabase } from '../../storage/db.ts';
import { SimStore } from '../../storage/sims.ts';
import { knob, type Ctx, type Scenario } from '../lib/context.ts';
import type { ScenarioResult } from '../lib/report.ts';
import { gatewayNodeArgs, simbridgeSpawn } from '../lib/stack.ts';
import { roundTo } from '../lib/stats.ts';

const IMEI = '490154203237518';
const QUOTAS = { CreateCertificateFromCsr: 15, AttachPolicy: 15, CreateThing: 100, AttachThingPrincipal: 100, UpdateCertificate: 10, CreatePolicy: 10, DescribeEndpoint: 10 };


async function vending(ctx: Ctx): Promise<ScenarioResult> {
  const sims = knob('SIMS', 1000, 150, ctx);
  const quotaMinS = sims / QUOTAS.CreateCertificateFromCsr;
  const dir = tempDir('bench-vending');
  const yaml = (name: string, v: unknown) => writeYaml(dir, name, v);
  const procs: CliProcess[] = [];
  try {
    mkdirSync(join(dir, 'sb'));
    const sandbox = await startSandboxProcess(join(dir, 'sb'), undefined, {}, simbridgeSpawn());
    procs.push(sandbox.process);
    const { controlEndpoint: control, dataPort, caFile } = sandbox;
    const enforceQuotas = async () => {
      await fetch(`${control}/_sandbox/faults`, { method: 'DELETE' });
      const res = await fetch(`${control}/_sandbox/faults`, { method: 'POST', body: JSON.stringify({ tps: QUOTAS }) });
      if (!res.ok) throw new Error(`sandbox faults: ${await res.text()}`);
    };
    const sandboxStats = async () =>
      ((await (await fetch(`${control}/_sandbox/faults`)).json()) as { stats: { requests: Record<string, number>; totals: { throttled: number } } }).stats;
    await enforceQuotas();

    const dataDir = join(dir, 'gw');
    const config = yaml('gateway.yaml', {
      mode: 'aws',
      dataDir,
      listeners: { mqtt: { host: '127.0.0.1', port: 0 }, http: { host: '127.0.0.1', port: 0 } },
      identity: { allowInsecureClaims: true }, // bench devices claim their identity (a lab)
      vending: { endpoint: control, credentials: { accessKeyId: 'sandbox', secretAccessKey: 'sandbox' } },
      upstream: { endpoint: 'localhost', port: dataPort, caFile },
      admin: { port: 0 },
      log: { level: 'warn' },
    });

    // ---- first contact through the gateway ----
    const gateway = await startGatewayProcess(config, simbridgeSpawn({ nodeArgs: gatewayNodeArgs() }));
    procs.push(gateway);
    const httpPort = gateway.httpPort;
    ctx.log(`  ${sims} SIMs make first contact; the sandbox enforces ${JSON.stringify(QUOTAS)}`);
    const imsis = Array.from({ length: sims }, (_, i) => `00101${String(100_000 + i).padStart(10, '0')}`);
    const t0 = performance.now();
    const statuses = new Map<number, number>();
    let next = 0;
    await Promise.all(
      Array.from({ length: 64 }, async () => {
        while (next < imsis.length) {
          const imsi = imsis[next++]!;
          const res = await fetch(`http://127.0.0.1:${httpPort}/topics/bench?qos=1`, { method: 'POST', headers: { 'x-imsi': imsi, 'x-imei': IMEI }, body: 'first contact' });
          await res.arrayBuffer();
          statuses.set(res.status, (statuses.get(res.status) ?? 0) + 1);
        }
      }),
    );
    const acceptedS = (performance.now() - t0) / 1000;
    ctx.log(`  all ${sims} publishes answered in ${acceptedS.toFixed(2)} s: ${JSON.stringify(Object.fromEntries(statuses))}`);

    const db = new Database(join(dataDir, 'simbridge.db'), { readonly: true });
    const credentials = new SqliteCredentialStore(db);
    let lastLog = performance.now();
    for (let ready = 0; (ready = credentials.countByState().ready) < sims; ) {
      if (performance.now() - t0 > 600_000) throw new Error(`only ${ready} of ${sims} vended after 600 s`);
      if (performance.now() - lastLog > 10_000) {
        lastLog = performance.now();
        ctx.log(`    ${((lastLog - t0) / 1000).toFixed(0)} s: ${ready} vended`);
      }
      await new Promise((r) => setTimeout(r, 50));
    }
    const wallS = (performance.now() - t0) / 1000;
    const { attempts: failedAttempts, throttled: throttledIntoState } = credentials.failureTally();
    db.close();
    const contactStats = await sandboxStats();
    await gateway.kill('SIGTERM');
    ctx.log(`  first contact: ${sims} vended in ${wallS.toFixed(1)} s`);

    // ---- bulk pre-vending of registered SIMs, same quotas ----
    await enforceQuotas();
    const registry = openDatabase({ file: join(dataDir, 'simbridge.db'), synchronous: 'normal' });
    const simStore = new SimStore(registry);
    registry.transaction(() => {
      for (let i = 0; i < sims; i++) {
        const imsi = `00101${String(200_000 + i).padStart(10, '0')}`;
        simStore.register({ imsi, group: 'default', thingName: `sim-${imsi}` });
      }
    })();
    registry.close();
    const bulk = spawnCli(['vend', '--config', config, '--json'], { SIMBRIDGE_MASTER_KEY: TEST_MASTER_KEY }, simbridgeSpawn());
    procs.push(bulk);
    const bulkCode = await bulk.exited;
    const summaryLine = bulk.stdout.split('\n').find((l) => l.startsWith('{'));
    if (!summaryLine) throw new Error(`simbridge vend printed no summary (exit ${bulkCode}):\n${bulk.output}`);
    const summary = JSON.parse(summaryLine) as { total: number; vended: number; failed: unknown[]; seconds: number };
    const bulkStats = await sandboxStats();
    ctx.log(`  bulk: ${summary.vended} of ${summary.total} vended in ${summary.seconds.toFixed(1)} s (exit ${bulkCode})`);

    const non2xx = [...statuses].filter(([s]) => s < 200 || s >= 300).reduce((a, [, n]) => a + n, 0);
    const figures = {
      sims,
      wall_s: roundTo(wallS, 1),
      quota_min_s: roundTo(quotaMinS, 1),
      throttle_errors_to_devices: non2xx + throttledIntoState,
      ratio_to_quota_min: roundTo(wallS / quotaMinS, 3),
      vends_per_s: roundTo(sims / wallS, 1),
      publishes_accepted_s: roundTo(acceptedS, 2),
      non_2xx_to_devices_count: non2xx,
      failed_vend_attempts_count: failedAttempts,
      sandbox_throttled_count: contactStats.totals.throttled,
      create_certificate_calls_count: contactStats.requests.CreateCertificateFromCsr ?? 0,
      bulk_wall_s: roundTo(summary.seconds, 1),
      bulk_ratio_to_quota_min: roundTo(summary.seconds / quotaMinS, 3),
      bulk_vended_count: summary.vended,
      bulk_failed_count: summary.failed.length,
      bulk_sandbox_throttled_count: bulkStats.totals.throttled,
    };
    return {
      params: {
        sims,
        quotas_enforced_by_sandbox: QUOTAS,
        vending: 'simbridge defaults (client token buckets at the same quotas, burst 0.5 s, concurrency 64)',
        devices: 'one HTTP POST /topics/bench?qos=1 each, 64 at a time, claimed identity',
        bulk: '`simbridge vend --json` over as many registered SIMs, after the gateway stopped',
        transport: 'loopback; sandbox and simbridge in separate processes',
      },
      figures,
      intro: [
        `The sandbox IoT Core enforces the default quotas with token buckets (CreateCertificateFromCsr and`,
        'AttachPolicy 15/s, CreateThing and AttachThingPrincipal 100/s) and answers ThrottlingException (429)',
        `beyond them. **First contact**: ${sims} new SIMs publish once each over HTTP (answered 202 in`,
        `${figures.publishes_accepted_s} s, their messages waiting in the outbox); wall time runs from the first`,
        'publish until every SIM has a certificate in use. **Bulk**: as many registered SIMs pre-vended by',
        '`simbridge vend`, side by side on the same sandbox.',
      ],
      extraMd: [
        '## First contact and bulk',
        '',
        '| | first contact (gateway) | bulk (`simbridge vend`) |',
        '|---|---:|---:|',
        `| SIMs vended | ${sims} | ${summary.vended} |`,
        `| wall time | ${figures.wall_s} s | ${figures.bulk_wall_s} s |`,
        `| quota-bound minimum (${sims} / 15 per s) | ${figures.quota_min_s} s | ${figures.quota_min_s} s |`,
        `| ratio to the minimum | ${figures.ratio_to_quota_min} | ${figures.bulk_ratio_to_quota_min} |`,
        `| 429s the sandbox answered (absorbed by retries) | ${figures.sandbox_throttled_count} | ${figures.bulk_sandbox_throttled_count} |`,
        `| throttling errors that reached a device | ${figures.throttle_errors_to_devices} | – |`,
        `| failed vend attempts after API retries | ${figures.failed_vend_attempts_count} | ${figures.bulk_failed_count} |`,
        '',
        `Load average at the end: ${loadavg()[0]!.toFixed(1)} (shared machine). Bulk vending shows the pacing itself; the`,
        'first-contact gap above it is the gateway\'s main thread, busy with what else first contact brings (upstream',
        'mTLS sessions, outbox commits): publishes are answered late, so SIMs reach vending late.',
        '',
      ].join('\n'),
    };
  } finally {
    for (const p of procs.reverse()) await p.kill('SIGTERM');
    rmSync(dir, { recursive: true, force: true });
  }
}

export const scenario: Scenario = { title: 'certificate vending at the AWS quota: first contact and bulk', run: vending };
