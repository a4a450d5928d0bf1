import { AdminClient, clientHelp, clientOptions } from '../../admin/cli/client.ts';
import { CommandError, EXIT } from '../../admin/cli/exit-codes.ts';
import { parse, runCommand } from '../../admin/cli/run.ts';
import { facts, table, when } from '../../admin/cli/table.ts';
import type { ClusterView } from '../../admin/types.ts';
import type { Config } from '../../config/schema.ts';

const help = `usage: simbridge cluster [options]

The gateway nodes sharing the database: alive or not, heartbeat age, SIMs held, upstream sessions,
messages waiting.

${clientHelp}`;

export function run(args: string[], loadConfig: (file?: string) => Config): Promise<number> {
  return runCommand(async () => {
    const { values, positionals } = parse(args, clientOptions, help);
    if (values.help) {
      console.log(help);
      return EXIT.ok;
    }
    if (positionals.length) throw new CommandError(`cluster takes no arguments\n\n${help}`, EXIT.usage);
    const c = await AdminClient.from(values, loadConfig).json<ClusterView>('GET', '/v1/cluster');
    if (values.json) console.log(JSON.stringify(c, null, 2));
    else {
      const alive = c.nodes.filter((n) => n.alive).length;
      console.log(
        [
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
        ].join('\n'),
      );
    }
    return EXIT.ok;
  });
}
