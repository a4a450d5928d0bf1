import { clientHelp, runViewCommand } from '../../admin/cli/client.ts';
import { facts, table, when } from '../../admin/cli/table.ts';
import type { Config } from '../../config/schema.ts';

const help = `usage: simbridge stats [options]

The fleet at a glance: SIMs by status and group, online and bound, certificates, outbox, dead letters.

${clientHelp}`;

interface Stats {
  sims: { total: number; active: number; suspended: number; terminated: number; bound: number; online: number };
  groups: Array<{ group: string; total: number; active: number; bound: number; online: number }>;
  certificates: { ready: number; vending: number };
  outbox: { depth: number; sims: number; oldestReceivedAt: string | null };
  deadLetters: { total: number; last24h: number };
  networkSessions: number;
}

export function run(args: string[], loadConfig: (file?: string) => Config): Promise<number> {
  return runViewCommand<Stats>(args, loadConfig, {
    name: 'stats',
    help,
    route: '/v1/stats',
    render: (s) =>
      [
        facts([
          ['SIMs', `${s.sims.total} (${s.sims.active} active, ${s.sims.suspended} suspended, ${s.sims.terminated} terminated)`],
          ['bound', s.sims.bound],
          ['online', s.sims.online],
          ['network sessions', s.networkSessions],
          ['certificates', `${s.certificates.ready} ready, ${s.certificates.vending} being vended`],
          ['outbox', `${s.outbox.depth} message(s) from ${s.outbox.sims} SIM(s)${s.outbox.oldestReceivedAt ? `, oldest ${when(s.outbox.oldestReceivedAt)}` : ''}`],
          ['dead letters', `${s.deadLetters.total} (${s.deadLetters.last24h} in the last 24 h)`],
        ]),
        '',
        table(['GROUP', 'SIMS', 'ACTIVE', 'BOUND', 'ONLINE'], s.groups.map((g) => [g.group, g.total, g.active, g.bound, g.online])),
      ].join('\n'),
  });
}
