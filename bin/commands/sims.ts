import { createReadStream, statSync } from 'node:fs';
import { Transform } from 'node:stream';
import { SingleBar } from 'cli-progress';
import { AdminClient, ApiError, clientHelp, clientOptions } from '../../admin/cli/client.ts';
import { CommandError, EXIT } from '../../admin/cli/exit-codes.ts';
import { parse, runCommand } from '../../admin/cli/run.ts';
import { facts, table, when } from '../../admin/cli/table.ts';
import type { Config } from '../../config/schema.ts';

const help = `usage: simbridge sims <command> [options]

commands:
  import FILE [--force] [--dry-run]   load SIMs from CSV (imsi,iccid,msisdn,group,imei,tags,secret); re-import is safe
  list [filters] [--all]              list SIMs: --group G --status S --online|--offline --bound|--unbound
                                      --tag k=v --q DIGITS --limit N --cursor IMSI
  show IMSI                           the device view: lock, network, certificate, upstream, queue, events
  bind IMSI IMEI [--force]            bind the SIM to a device (--force replaces another binding)
  unbind IMSI                         remove the IMEI binding
  terminate IMSI                      terminate the SIM for good and revoke its certificate
  secret IMSI [--clear]               generate the SIM's secret (claimed identity) and print it, once; --clear removes it

${clientHelp}`;

const options = {
  ...clientOptions,
  force: { type: 'boolean' },
  'dry-run': { type: 'boolean' },
  group: { type: 'string' },
  status: { type: 'string' },
  online: { type: 'boolean' },
  offline: { type: 'boolean' },
  bound: { type: 'boolean' },
  unbound: { type: 'boolean' },
  tag: { type: 'string' },
  q: { type: 'string' },
  limit: { type: 'string' },
  cursor: { type: 'string' },
  all: { type: 'boolean' },
  clear: { type: 'boolean' },
} as const;

interface SimJson {
  imsi: string;
  iccid: string | null;
  group: string;
  status: string;
  boundImei: string | null;
  lastSeenAt: string | null;
  online?: boolean;
}

export function run(args: string[], loadConfig: (file?: string) => Config): Promise<number> {
  return runCommand(async () => {
    const { values, positionals } = parse(args, options, help);
    const [command, ...rest] = positionals;
    if (values.help || !command) {
      console.log(help);
      return values.help ? EXIT.ok : EXIT.usage;
    }
    const need = (n: number, what: string) => {
      if (rest.length !== n) throw new CommandError(`sims ${command} takes ${what}\n\n${help}`, EXIT.usage);
    };
    const client = () => AdminClient.from(values, loadConfig);
    const out = (data: unknown, human: () => string) => console.log(values.json ? JSON.stringify(data, null, 2) : human());

    switch (command) {
      case 'import': {
        need(1, 'one FILE');
        return importFile(client(), rest[0]!, { force: values.force ?? false, dryRun: values['dry-run'] ?? false, json: values.json ?? false });
      }
      case 'list': {
        need(0, 'no arguments');
        const query = new URLSearchParams();
        if (values.group) query.set('group', values.group);
        if (values.status) query.set('status', values.status);
        if (values.online || values.offline) query.set('online', String(Boolean(values.online)));
        if (values.bound || values.unbound) query.set('bound', String(Boolean(values.bound)));
        if (values.tag) query.set('tag', values.tag);
        if (values.q) query.set('q', values.q);
        query.set('limit', values.limit ?? (values.all ? '1000' : '100'));
        if (values.cursor) query.set('cursor', values.cursor);
        const c = client();
        const items: SimJson[] = [];
        let page: { items: SimJson[]; total: number; nextCursor: string | null };
        do {
          page = await c.json('GET', `/v1/sims?${query}`);
          items.push(...page.items);
          if (page.nextCursor) query.set('cursor', page.nextCursor);
        } while (values.all && page.nextCursor);
        out({ items, total: page.total, nextCursor: page.nextCursor }, () => {
          const t = table(
            ['IMSI', 'ICCID', 'GROUP', 'STATUS', 'IMEI', 'ONLINE', 'LAST SEEN'],
            items.map((s) => [s.imsi, s.iccid, s.group, s.status, s.boundImei, s.online ? 'yes' : 'no', when(s.lastSeenAt)]),
          );
          const more = page.nextCursor ? `; more with --cursor ${page.nextCursor} (or --all)` : '';
          return `${t}\n${items.length} of ${page.total} shown${more}`;
        });
        return EXIT.ok;
      }
      case 'show': {
        need(1, 'one IMSI');
        const view = await client().json<DeviceView>('GET', `/v1/sims/${encodeURIComponent(rest[0]!)}`);
        out(view, () => showView(view));
        return EXIT.ok;
      }
      case 'bind': {
        need(2, 'IMSI and IMEI');
        try {
          const r = await client().json<{ sim: SimJson; outcome: string; previous: string | null }>('PUT', `/v1/sims/${encodeURIComponent(rest[0]!)}/imei`, {
            imei: rest[1],
            force: values.force ?? false,
          });
          out(r, () => (r.outcome === 'unchanged' ? `${r.sim.imsi} already bound to ${r.sim.boundImei}` : `${r.sim.imsi} bound to ${r.sim.boundImei}${r.previous ? ` (was ${r.previous})` : ''}`));
          return EXIT.ok;
        } catch (err) {
          if (err instanceof ApiError && err.error === 'imei_conflict') {
            throw new CommandError(`${err.message} (bound to ${(err.body as { boundImei?: string }).boundImei})`, EXIT.failure);
          }
          throw err;
        }
      }
      case 'unbind': {
        need(1, 'one IMSI');
        const r = await client().json<{ sim: SimJson; previous: string | null }>('DELETE', `/v1/sims/${encodeURIComponent(rest[0]!)}/imei`);
        out(r, () => (r.previous ? `${r.sim.imsi} unbound (was ${r.previous})` : `${r.sim.imsi} was not bound`));
        return EXIT.ok;
      }
      case 'secret': {
        need(1, 'one IMSI');
        const path = `/v1/sims/${encodeURIComponent(rest[0]!)}/secret`;
        if (values.clear) {
          const r = await client().json<{ sim: SimJson }>('DELETE', path);
          out(r, () => `${r.sim.imsi}: secret removed`);
          return EXIT.ok;
        }
        const r = await client().json<{ sim: SimJson; secret: string }>('PUT', path, {});
        out(r, () => `${r.sim.imsi} secret: ${r.secret}\n(shown this once, stored only as a hash: put it in the device as MQTT password / HTTP bearer token)`);
        return EXIT.ok;
      }
      case 'terminate': {
        need(1, 'one IMSI');
        const r = await client().json<{ sim: SimJson; revocation?: { state: string; message?: string } }>('PATCH', `/v1/sims/${encodeURIComponent(rest[0]!)}`, {
          status: 'terminated',
        });
        const revoked = !r.revocation || r.revocation.state === 'revoked';
        out(r, () =>
          r.revocation
            ? `${r.sim.imsi} terminated; certificate ${revoked ? 'revoked' : `NOT revoked (${r.revocation.state}: ${r.revocation.message ?? ''})`}`
            : `${r.sim.imsi} was already terminated`,
        );
        return revoked ? EXIT.ok : EXIT.failure;
      }
    }
    throw new CommandError(`unknown command "sims ${command}"\n\n${help}`, EXIT.usage);
  });
}

interface ImportReport {
  rows: number;
  created: number;
  updated: number;
  unchanged: number;
  failed: number;
  errors: Array<{ line: number; imsi?: string; field?: string; message: string }>;
  errorsTruncated: boolean;
  dryRun: boolean;
  seconds: number;
}

/** Streams the file to the API; the bar follows the bytes sent (the server parses as they arrive). */
async function importFile(client: AdminClient, file: string, opts: { force: boolean; dryRun: boolean; json: boolean }): Promise<number> {
  let size: number;
  try {
    size = statSync(file).size;
  } catch (err) {
    throw new CommandError(`cannot read ${file}: ${(err as Error).message}`, EXIT.failure);
  }
  // On stderr, and only on a terminal: stdout stays clean for --json and pipes.
  const bar = new SingleBar({
    stream: process.stderr,
    format: 'importing |{bar}| {percentage}% | {sent} of {size} | ETA {eta_formatted}',
    hideCursor: true,
    clearOnComplete: true,
  });
  const kb = (n: number) => (n >= 1 << 20 ? `${(n / (1 << 20)).toFixed(1)} MB` : `${Math.ceil(n / 1024)} KB`);
  bar.start(size, 0, { sent: kb(0), size: kb(size) });
  let sent = 0;
  const counter = new Transform({
    transform(chunk: Buffer, _enc, done) {
      sent += chunk.length;
      bar.update(sent, { sent: kb(sent), size: kb(size) });
      done(null, chunk);
    },
  });
  const query = new URLSearchParams({ force: String(opts.force), dryRun: String(opts.dryRun) });
  let report: ImportReport;
  try {
    report = await client.stream<ImportReport>('POST', `/v1/sims/import?${query}`, createReadStream(file).pipe(counter), 'text/csv', size);
  } finally {
    bar.stop();
  }
  if (opts.json) console.log(JSON.stringify(report, null, 2));
  else {
    const head = `${report.dryRun ? '(dry run) ' : ''}${report.rows} rows in ${report.seconds} s: ${report.created} created, ${report.updated} updated, ${report.unchanged} unchanged, ${report.failed} failed`;
    const lines = report.errors.map((e) => `  line ${e.line}${e.imsi ? ` (${e.imsi})` : ''}: ${e.field ? `${e.field}: ` : ''}${e.message}`);
    if (report.errorsTruncated) lines.push(`  … and ${report.failed - report.errors.length} more`);
    console.log([head, ...lines].join('\n'));
  }
  return report.failed ? EXIT.failure : EXIT.ok;
}

interface DeviceView {
  sim: SimJson & { msisdn: string | null; thingName: string; tags: Record<string, string>; lockMode: string | null };
  lock: { mode: string; from: string; boundImei: string | null };
  network: Array<{ ip: string; rat: string | null; imei: string | null; since: string }>;
  certificate: { state: string; step: string | null; certificateId: string | null; notAfter: string | null; lastError: string | null };
  upstream: { state: string; since: string | null; detail: string | null };
  outbox: { depth: number; oldestReceivedAt: string | null };
  online: boolean;
  connected: boolean | null;
  lastMessageAt: string | null;
  recentEvents: Array<{ at: string; kind: string; detail: Record<string, unknown> }>;
}

function showView(v: DeviceView): string {
  const s = v.sim;
  const session = v.network[0];
  const tags = Object.entries(s.tags).map(([k, val]) => `${k}=${val}`).join(';');
  const head = facts([
    ['IMSI', s.imsi],
    ['ICCID', s.iccid],
    ['MSISDN', s.msisdn],
    ['group', s.group],
    ['status', s.status],
    ['thing', s.thingName],
    ['tags', tags],
    ['lock', `${v.lock.mode} (from ${v.lock.from}), bound IMEI ${v.lock.boundImei ?? 'none'}`],
    ['online', v.online ? 'yes' : 'no'],
    ['network', session ? `${session.ip} ${session.rat ?? ''} since ${when(session.since)}${session.imei ? `, IMEI ${session.imei}` : ''}` : 'no session'],
    ['last message', when(v.lastMessageAt)],
    ['certificate', `${v.certificate.state}${v.certificate.certificateId ? ` ${v.certificate.certificateId}` : ''}${v.certificate.lastError ? ` (last error: ${v.certificate.lastError})` : ''}`],
    ['upstream', `${v.upstream.state}${v.upstream.since ? ` since ${when(v.upstream.since)}` : ''}${v.upstream.detail ? ` (${v.upstream.detail})` : ''}`],
    ['outbox', `${v.outbox.depth} message(s)${v.outbox.oldestReceivedAt ? `, oldest ${when(v.outbox.oldestReceivedAt)}` : ''}`],
  ]);
  const events = v.recentEvents.length
    ? table(['TIME', 'EVENT', 'DETAIL'], v.recentEvents.map((e) => [when(e.at), e.kind, JSON.stringify(e.detail)]))
    : '(no events)';
  return `${head}\n\nrecent events:\n${events}`;
}
