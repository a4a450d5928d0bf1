import { spawnCli } from './processes.ts';

/** Runs the simbridge CLI to completion. */
export async function runCli(args: string[], env: NodeJS.ProcessEnv = {}): Promise<{ code: number | null; output: string }> {
  const proc = spawnCli(args, env);
  const code = await proc.exited;
  return { code, output: proc.output };
}
