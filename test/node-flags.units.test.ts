// The Node options the gateway runs with (app/node-flags.ts) are those of every way it is deployed.
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { GATEWAY_NODE_FLAGS } from '../app/node-flags.ts';

const file = (path: string) => readFileSync(new URL(`../${path}`, import.meta.url), 'utf8');

describe('the gateway node options', () => {
  it('are passed by the Dockerfile, the systemd unit and the npm start scripts', () => {
    const scripts = (JSON.parse(file('package.json')) as { scripts: Record<string, string> }).scripts;
    const entrypoint = /^ENTRYPOINT (\[.*\])$/m.exec(file('Dockerfile'))!;
    const execStart = /^ExecStart=(.*)$/m.exec(file('deploy/simbridge.service'))!;
    const launches: Array<[string, string[]]> = [
      ['Dockerfile ENTRYPOINT', JSON.parse(entrypoint[1]!) as string[]],
      ['systemd ExecStart', execStart[1]!.split(' ')],
      ['npm start', scripts.start!.split(' ')],
      ['npm run start:prod', scripts['start:prod']!.split(' ')],
    ];
    expect(GATEWAY_NODE_FLAGS.length).toBeGreaterThan(0);
    for (const [where, argv] of launches) {
      // Node's own options go before the script: after it they would be the gateway's arguments.
      const script = argv.findIndex((a) => a.endsWith('simbridge.js') || a.endsWith('simbridge.ts'));
      expect(script, where).toBeGreaterThan(0);
      expect(argv.slice(0, script), where).toEqual(expect.arrayContaining([...GATEWAY_NODE_FLAGS]));
    }
  });
});
