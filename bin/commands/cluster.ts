import { clientHelp, runViewCommand } from '../../admin/cli/client.ts';
import { facts, table, when } from '../../admin/cli/table.ts';
import type { ClusterView } from '../../admin/types.ts';
import type { Config } from '../../config/schema.ts';

const help = `usage: simbridge cluster [options]

The gateway nodes sharing the database: alive or not, heartbeat age, SIMs held, upstream sessions,
messages waiting.

${clientHelp}`;

export function run(args: string[], loadConfig: (file?: string) => Config): Promise<number> {
  return runViewCommand<ClusterView>(args, loadConfig, {
    name: 'cluster',
    help,
    route: '/v1/cluster',
    render: (c) => {
      const alive = c.nodes.filter((n) => n.alive).length;
      return [
        facts([
          ['storage', c.storage],
          ['answered by', c.node],
          ['nodes', `${c.nodes.length} (${alive} alive)`],
        ]),
        '',
        table(
          ['NODE', 'STATE', 'HEARTBEAT', 'STARTED', 'SIMS', 'SESSIONS', 'OUTBOX'],
          c.nodes.map((n) => [n.nodeId, n.alive ? 'alive' : 'dead', `${(n.heartbeatAgeMs / 1000).toFixed(1)} s ago`, when(n.startedAt), n.simsOwned, n.upstreamSessions ?? '-', n.outboxRows]),
        ),
      ].join('\n');
    },
  });
}
