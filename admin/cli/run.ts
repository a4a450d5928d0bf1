import { parseArgs, type ParseArgsConfig } from 'node:util';
import { CommandError, EXIT } from './exit-codes.ts';

/** Parses arguments strictly; a mistake is a usage error (64) with the command's help. */
export function parse<T extends ParseArgsConfig['options']>(args: string[], options: T, help: string) {
  try {
    return parseArgs({ args, options, allowPositionals: true, strict: true });
  } catch (err) {
    throw new CommandError(`${(err as Error).message}\n\n${help}`, EXIT.usage);
  }
}

/** Runs a command body and turns what it throws into a message on stderr and an exit code. */
export async function runCommand(body: () => Promise<number>): Promise<number> {
  try {
    return await body();
  } catch (err) {
    if (err instanceof CommandError) {
      console.error(`simbridge: ${err.message}`);
      return err.code;
    }
    throw err;
  }
}
