import { CommandError, EXIT } from '../../admin/cli/exit-codes.ts';
import { parse, runCommand } from '../../admin/cli/run.ts';
import { table, when } from '../../admin/cli/table.ts';
import type { Config } from '../../config/schema.ts';
import { openConfiguredStores } from '../../admin/cli/stores.ts';
import { ROLES, type Role } from '../../storage/tokens.ts';

const help = `usage: simbridge tokens <command> [options]

Admin API tokens, written straight to the database (the gateway need not run).

commands:
  create --role installer|operator [--name NAME]   create a token and print it once (stdout; details on stderr)
  list                                             tokens, without their secrets
  revoke ID                                        stop a token from working

options:
  --config FILE    configuration whose dataDir holds the database (default: SIMBRIDGE_CONFIG)
  --json           machine-readable output

exit codes: 0 ok, 1 failure, 2 not found, 64 usage`;

const options = {
  role: { type: 'string' },
  name: { type: 'string' },
  config: { type: 'string', short: 'c' },
  json: { type: 'boolean' },
  help: { type: 'boolean', short: 'h' },
} as const;

export function run(args: string[], loadConfig: (file?: string) => Config): Promise<number> {
  return runCommand(async () => {
    const { values, positionals } = parse(args, options, help);
    const [command, ...rest] = positionals;
    if (values.help || !command) {
      console.log(help);
      return values.help ? EXIT.ok : EXIT.usage;
    }
    if (!['create', 'list', 'revoke'].includes(command)) throw new CommandError(`unknown command "tokens ${command}"\n\n${help}`, EXIT.usage);
    if (command === 'create' && !ROLES.includes(values.role as Role)) throw new CommandError(`--role must be one of ${ROLES.join(', ')}\n\n${help}`, EXIT.usage);
    if (rest.length !== (command === 'revoke' ? 1 : 0)) throw new CommandError(`wrong arguments for "tokens ${command}"\n\n${help}`, EXIT.usage);

    const config = loadConfig(values.config);
    const opened = await openConfiguredStores(config);
    try {
      const { tokens } = opened.stores;
      switch (command) {
        case 'create': {
          const name = values.name ?? `${values.role} token`;
          const { token, record } = await tokens.create(values.role as Role, name);
          if (values.json) console.log(JSON.stringify({ ...record, token }, null, 2));
          else {
            console.error(`created ${record.role} token ${record.id} ("${record.name}"); it is shown only now, store it safely:`);
            console.log(token);
          }
          return EXIT.ok;
        }
        case 'list': {
          const list = await tokens.list();
          if (values.json) console.log(JSON.stringify(list, null, 2));
          else {
            const iso = (ms: number | null) => (ms === null ? null : new Date(ms).toISOString());
            console.log(table(['ID', 'ROLE', 'NAME', 'CREATED', 'LAST USED', 'REVOKED'], list.map((t) => [t.id, t.role, t.name, when(iso(t.createdAt)), when(iso(t.lastUsedAt)), when(iso(t.revokedAt))])));
          }
          return EXIT.ok;
        }
        default: {
          if (!(await tokens.revoke(rest[0]!))) throw new CommandError(`no live token ${rest[0]}`, EXIT.notFound);
          console.log(values.json ? JSON.stringify({ revoked: rest[0] }) : `token ${rest[0]} revoked`);
          return EXIT.ok;
        }
      }
    } finally {
      await opened.close();
    }
  });
}
