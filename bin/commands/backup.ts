import { join } from 'node:path';
import { CommandError, EXIT } from '../../admin/cli/exit-codes.ts';
import { parse, runCommand } from '../../admin/cli/run.ts';
import type { Config } from '../../config/schema.ts';
import { backupDatabase } from '../../storage/backup.ts';

const help = `usage: simbridge backup --out FILE [--config FILE]

Writes a consistent copy of the database (SIMs, encrypted device keys, outbox, audit) to FILE, mode 600,
while the gateway runs. The master key is not in it: keep that separately. To restore, stop the
gateway, put FILE in the data directory as simbridge.db (removing simbridge.db-wal and -shm), start it.`;

export function run(args: string[], loadConfig: (file?: string) => Config): Promise<number> {
  return runCommand(async () => {
    const { values, positionals } = parse(args, { config: { type: 'string', short: 'c' }, out: { type: 'string', short: 'o' }, help: { type: 'boolean', short: 'h' } }, help);
    if (values.help) {
      console.log(help);
      return EXIT.ok;
    }
    if (!values.out || positionals.length) throw new CommandError(`backup takes --out FILE and no arguments\n\n${help}`, EXIT.usage);
    const config = loadConfig(values.config);
    try {
      const { pages } = await backupDatabase(join(config.dataDir, 'simbridge.db'), values.out);
      console.log(`backup written to ${values.out} (${pages} pages, integrity checked)`);
      return EXIT.ok;
    } catch (err) {
      throw new CommandError(`backup failed: ${(err as Error).message}`, EXIT.failure);
    }
  });
}
