// The patch of aws-crt's native binding: it refuses, loudly and at once, a binding that lacks what it replaces.
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { checkBinding } from '../bridge/upstream/crt-patch.ts';

const fn = () => undefined;
const complete = { mqtt_client_connection_new: fn, mqtt_client_connection_on_message: fn, mqtt_client_connection_on_closed: fn, disable_threadsafe_function: fn };

describe('the aws-crt binding patch', () => {
  it('accepts a binding with every function it replaces or calls', () => {
    expect(() => checkBinding(complete, '1.33.1')).not.toThrow();
  });

  it('names the version and each function a binding lacks (renamed, moved, or not a function)', () => {
    const { mqtt_client_connection_on_closed: _gone, ...moved } = complete;
    expect(() => checkBinding({ ...moved, disable_threadsafe_function: 1 }, '9.0.0')).toThrow(
      /aws-crt 9\.0\.0: .*no mqtt_client_connection_on_closed, disable_threadsafe_function/,
    );
    expect(() => checkBinding(undefined, '9.0.0')).toThrow(/no mqtt_client_connection_new/);
  });

  it('applies to the installed aws-crt, which package.json pins to an exact version', () => {
    const pinned = (JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { dependencies: Record<string, string> }).dependencies['aws-crt'];
    expect(pinned).toMatch(/^\d+\.\d+\.\d+$/);
    // In a process of its own: loading aws-crt's native module into the test runner is not wanted.
    const out = execFileSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', "import { patchCrtCallbacks } from './bridge/upstream/crt-patch.ts'; patchCrtCallbacks(); console.log('patched')"], {
      cwd: new URL('..', import.meta.url),
      encoding: 'utf8',
    });
    expect(out.trim()).toBe('patched');
    const installed = (JSON.parse(readFileSync(new URL('../node_modules/aws-crt/package.json', import.meta.url), 'utf8')) as { version: string }).version;
    expect(installed).toBe(pinned);
  });
});
