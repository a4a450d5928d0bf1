import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { findPeer } from './helpers/interop.ts';

describe('deployment files', () => {
  it('the systemd unit passes systemd-analyze verify', (ctx) => {
    const analyze = findPeer('systemd-analyze', 'systemd');
    if (!analyze) return ctx.skip();
    // verify prints problems on stderr and exits non-zero for errors; warnings must not pass unseen.
    const out = execFileSync(analyze, ['verify', 'deploy/simbridge.service'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
    expect(out).toBe('');
  });

  it('the unit runs the built gateway as its own user with a private state directory and reloads on SIGHUP', () => {
    const unit = readFileSync('deploy/simbridge.service', 'utf8');
    expect(unit).toMatch(/^User=simbridge$/m);
    expect(unit).toMatch(/^ExecStart=\/usr\/bin\/node \S+\/dist\/bin\/simbridge\.js start /m);
    expect(unit).toMatch(/^StateDirectoryMode=0700$/m);
    expect(unit).toMatch(/^ExecReload=\/bin\/kill -HUP \$MAINPID$/m);
    expect(unit).toMatch(/^NoNewPrivileges=yes$/m);
  });

  it('the Dockerfile builds with the steps the artifact test runs and runs non-root with a health check', () => {
    const docker = readFileSync('Dockerfile', 'utf8');
    const runs = [...docker.matchAll(/^RUN (npm .+)$/gm)].map((m) => m[1]);
    expect(runs).toEqual(['npm ci --no-audit --no-fund', 'npm run build', 'npm prune --omit=dev --no-audit --no-fund']);
    expect(docker).toMatch(/^USER simbridge$/m);
    expect(docker).toMatch(/^VOLUME \["\/var\/lib\/simbridge"\]$/m);
    expect(docker).toMatch(/HEALTHCHECK[\s\S]+\/readyz/);
    expect(docker).toMatch(/^ENTRYPOINT \["node", "dist\/bin\/simbridge\.js"\]$/m);
  });
});
