import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { pino } from 'pino';
import { EXIT } from '../../admin/cli/exit-codes.ts';
import type { Config } from '../../config/schema.ts';
import { openConfiguredStores } from '../../admin/cli/stores.ts';
import { createVending } from '../../vending/index.ts';
import { KeyCipher } from '../../vending/key-cipher.ts';
import { checkMasterKey, loadMasterKey } from '../../vending/master-key.ts';
import { groupPolicy } from '../../vending/policy.ts';

const usage = `usage: simbridge vend [--config FILE] [--json] [--attempts N]

Pre-vends every active SIM in the registry that has no certificate in use yet, at the IoT Core quota
rate, and prints a summary. Exit code 0 when every SIM was vended, 1 otherwise.

  --json        print the summary as JSON (no progress bar)
  --attempts N  give up on a SIM after N failed attempts (default 5)`;

export interface VendSummary {
  total: number;
  vended: number;
  failed: Array<{ imsi: string; reason: string }>;
  seconds: number;
}

/** Draws one line, rewritten in place, while the run lasts (terminals only). */
function progressBar(out: NodeJS.WriteStream, total: number) {
  const started = Date.now();
  let last = 0;
  return (done: number, failed: number, final = false) => {
    const now = Date.now();
    if (!final && now - last < 200) return;
    last = now;
    const width = 30;
    const filled = total === 0 ? width : Math.round(((done + failed) / total) * width);
    const rate = done / Math.max(0.001, (now - started) / 1000);
    out.write(`\r[${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${done + failed}/${total}  vended ${done}  failed ${failed}  ${rate.toFixed(1)}/s${final ? '\n' : ''}`);
  };
}

/**
 * Pre-vends every registered SIM without ready credentials. Opens the database and the master key
 * itself, like the gateway does; the vending config must reach IoT Core (in sandbox mode: a running
 * sandbox's endpoint in vending.endpoint). Resolves with the exit code.
 */
export async function vendPending(
  config: Config,
  opts: { json: boolean; out: NodeJS.WriteStream; env?: NodeJS.ProcessEnv; attempts?: number },
): Promise<number> {
  const { out } = opts;
  if (config.mode === 'sandbox' && !config.vending.endpoint) {
    out.write('simbridge vend: in sandbox mode, set vending.endpoint to the running sandbox control plane (see `simbridge sandbox`)\n');
    return EXIT.failure;
  }
  // Logs go to stderr, below warnings unless asked for: stdout carries the progress and the summary.
  const log = pino({ level: config.log.level === 'info' ? 'warn' : config.log.level, base: undefined }, pino.destination(2));
  // The database the configuration names: SQLite in the data directory, or PostgreSQL at storage.url.
  // Several SIMs are vended at once: as many connections as a gateway node keeps.
  const opened = await openConfiguredStores(config, config.storage.maxConnections);
  let vendor: ReturnType<typeof createVending>['vendor'] | undefined;
  try {
    const cipher = new KeyCipher(
      loadMasterKey({
        env: opts.env ?? process.env,
        file: config.security.masterKeyFile,
        generateAt: config.mode === 'sandbox' ? join(config.dataDir, 'master.key') : undefined,
      }),
    );
    const { stores } = opened;
    await checkMasterKey(stores, cipher);
    vendor = createVending(config.vending, {
      sims: stores.sims,
      credentials: stores.credentials,
      cipher,
      audit: stores.audit,
      log,
      policyFor: (g) => groupPolicy(config, g),
      needsDataEndpoint: false,
      background: false,
    }).vendor;

    const pending = await stores.credentials.simsWithoutCredentials();
    const summary = await vendAll(vendor, pending, opts.attempts ?? 5, Math.min(config.vending.maxQueue, config.vending.concurrency * 4), opts.json || !out.isTTY ? undefined : progressBar(out, pending.length));
    if (opts.json) out.write(JSON.stringify(summary) + '\n');
    else {
      out.write(`vended ${summary.vended} of ${summary.total} SIMs in ${summary.seconds.toFixed(1)} s; ${summary.failed.length} failed\n`);
      for (const f of summary.failed) out.write(`  ${f.imsi}: ${f.reason}\n`);
    }
    return summary.failed.length === 0 ? EXIT.ok : EXIT.failure;
  } finally {
    vendor?.stop();
    await opened.close();
  }
}

/** Keeps `window` SIMs in the vending queue at a time (bounded memory for any registry size). */
async function vendAll(
  vendor: { prevend(imsi: string, giveUpAfter: number): Promise<unknown> },
  imsis: string[],
  attempts: number,
  window: number,
  progress?: (done: number, failed: number, final?: boolean) => void,
): Promise<VendSummary> {
  const started = Date.now();
  const failed: VendSummary['failed'] = [];
  let vended = 0;
  let next = 0;
  const worker = async () => {
    while (next < imsis.length) {
      const imsi = imsis[next++]!;
      try {
        await vendor.prevend(imsi, attempts);
        vended++;
      } catch (err) {
        failed.push({ imsi, reason: (err as Error).message ?? String(err) });
      }
      progress?.(vended, failed.length);
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(window, imsis.length)) }, worker));
  progress?.(vended, failed.length, true);
  return { total: imsis.length, vended, failed, seconds: (Date.now() - started) / 1000 };
}

/** `simbridge vend` (dispatched by bin/simbridge.ts). */
export async function run(args: string[], loadConfig: (file?: string) => Config): Promise<number> {
  const { values } = parseArgs({
    args,
    options: { config: { type: 'string', short: 'c' }, json: { type: 'boolean' }, attempts: { type: 'string' }, help: { type: 'boolean', short: 'h' } },
  });
  if (values.help) {
    console.log(usage);
    return EXIT.ok;
  }
  const attempts = values.attempts === undefined ? undefined : Number(values.attempts);
  if (attempts !== undefined && !(Number.isInteger(attempts) && attempts > 0)) {
    console.error(usage);
    return EXIT.usage;
  }
  return vendPending(loadConfig(values.config), { json: values.json ?? false, out: process.stdout, attempts });
}
