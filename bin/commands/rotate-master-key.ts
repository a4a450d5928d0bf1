import { CommandError, EXIT } from '../../admin/cli/exit-codes.ts';
import { parse, runCommand } from '../../admin/cli/run.ts';
import type { Config } from '../../config/schema.ts';
import { openConfiguredStores } from '../../admin/cli/stores.ts';
import { KeyCipher } from '../../vending/key-cipher.ts';
import { checkMasterKey, loadMasterKey, loadPreviousMasterKeys, rotateSealedKeys } from '../../vending/master-key.ts';

const help = `usage: simbridge rotate-master-key [--config FILE]

Re-seals every stored private key under the current master key (security.masterKeyFile) that is still
sealed under one of security.previousMasterKeyFiles, while the gateway runs. The rotation, step by step:
  1. openssl rand -hex 32 > new.key && chmod 600 new.key
  2. in the config: masterKeyFile: new.key, previousMasterKeyFiles: [old.key]; reload (SIGHUP)
  3. simbridge rotate-master-key --config FILE
  4. remove previousMasterKeyFiles from the config; reload (SIGHUP); keep old.key until backups made
     before the rotation have expired (they are sealed under it)
See docs/deploy.md.`;

export function run(args: string[], loadConfig: (file?: string) => Config): Promise<number> {
  return runCommand(async () => {
    const { values, positionals } = parse(args, { config: { type: 'string', short: 'c' }, help: { type: 'boolean', short: 'h' } }, help);
    if (values.help) {
      console.log(help);
      return EXIT.ok;
    }
    if (positionals.length) throw new CommandError(`rotate-master-key takes no arguments\n\n${help}`, EXIT.usage);
    const config = loadConfig(values.config);
    const previous = loadPreviousMasterKeys({ env: process.env, files: config.security.previousMasterKeyFiles });
    if (previous.length === 0) throw new CommandError('no previous master key configured (security.previousMasterKeyFiles): nothing to rotate from', EXIT.usage);
    const cipher = new KeyCipher(loadMasterKey({ env: process.env, file: config.security.masterKeyFile }), previous);
    const opened = await openConfiguredStores(config);
    try {
      const { stores } = opened;
      await checkMasterKey(stores, cipher);
      const r = await rotateSealedKeys(stores, cipher);
      console.log(`re-sealed ${r.resealed} private key(s); ${r.current} already under the current key`);
      if (r.unreadable > 0) {
        throw new CommandError(`${r.unreadable} key(s) open with no configured key: list the key they were sealed under in previousMasterKeyFiles and run again`, EXIT.failure);
      }
      console.log('every key is under the current master key: previousMasterKeyFiles can be removed from the config');
      return EXIT.ok;
    } finally {
      await opened.close();
    }
  });
}
