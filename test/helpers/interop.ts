import { execFileSync } from 'node:child_process';

/**
 * Finds a real peer program (mosquitto, radclient, chromium). On a developer machine without it the
 * test skips with the reason printed; in CI (SIMBRIDGE_REQUIRE_INTEROP=1) a missing peer is a failure.
 */
export function findPeer(program: string, debianPackage: string): string | undefined {
  let path: string | undefined;
  try {
    path = execFileSync('sh', ['-c', `command -v ${program} || ls /usr/sbin/${program} 2>/dev/null`], { encoding: 'utf8' }).trim() || undefined;
  } catch {
    path = undefined;
  }
  if (!path) {
    const reason = `${program} not found (Debian package ${debianPackage})`;
    if (process.env.SIMBRIDGE_REQUIRE_INTEROP === '1') throw new Error(`${reason}, and SIMBRIDGE_REQUIRE_INTEROP=1`);
    console.log(`skipping interop test: ${reason}`);
  }
  return path;
}
