import { killAll } from '../../test/helpers/processes.ts';

// Every process the bench starts is tracked by the shared harness (test/helpers/processes.ts#track) and
// killed when the bench exits; on Ctrl-C or SIGTERM too.
export { track } from '../../test/helpers/processes.ts';

let installed = false;
export function installCleanup(): void {
  if (installed) return;
  installed = true;
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    process.on(sig, () => {
      killAll();
      process.exit(130);
    });
  }
}
