import { afterEach, describe, expect, it } from 'vitest';
import { bytesToPost, postedBytes, WorkerCalls } from '../lib/worker-calls.ts';
import type { EchoRequest } from './helpers/worker-echo.ts';

const echo = new URL('./helpers/worker-echo.ts', import.meta.url);
const broken = new URL('./helpers/worker-broken.ts', import.meta.url);

describe('worker threads running a TypeScript module (WorkerCalls)', () => {
  const started: Array<WorkerCalls<unknown, unknown>> = [];
  const calls = <Req, Event = never>(module: URL, opts: ConstructorParameters<typeof WorkerCalls<Req, Event>>[1] = {}) => {
    const c = new WorkerCalls<Req, Event>(module, opts);
    started.push(c as WorkerCalls<unknown, unknown>);
    return c;
  };
  afterEach(async () => {
    await Promise.all(started.splice(0).map((c) => c.stop()));
  });

  it('is ready once the module has loaded, then answers calls, passes errors and events back', async () => {
    const events: unknown[] = [];
    const c = calls<EchoRequest, { value: string }>(echo, { onEvent: (e) => events.push(e) });
    expect(c.started).toBe(false);
    await c.ready();
    expect(c.started).toBe(true);
    expect(await c.call<string>({ op: 'echo', value: 'héllo' })).toBe('héllo');
    await expect(c.call({ op: 'fail', message: 'refused' })).rejects.toThrow('refused');
    await c.call({ op: 'event', value: 'news' });
    expect(events).toEqual([{ value: 'news' }]);
  });

  it('carries bytes to the thread and back as they are, not the socket read they were sliced from', async () => {
    const c = calls<EchoRequest>(echo);
    // Payloads as sockets hand them over: small views into one large read; every byte value once.
    const read = Buffer.alloc(65536, 'x');
    for (let b = 0; b < 256; b++) read[1000 + b] = b;
    const payloads = [read.subarray(1000, 1256), read.subarray(4000, 4006)];
    const [all, six] = await c.call<[string, string]>({ op: 'bytes', texts: payloads.map(bytesToPost) });
    // The thread rebuilt exactly those bytes (it answers them as hex)...
    expect(all).toBe(payloads[0].toString('hex'));
    expect(six).toBe('787878787878');
    // ...and only those travelled: one character per byte, not the 64 KB behind them.
    expect(payloads.map(bytesToPost).map((t) => t.length)).toEqual([256, 6]);
    expect(postedBytes(bytesToPost(payloads[0])).equals(payloads[0])).toBe(true);
  });

  it('refuses to be ready when the module fails to load', async () => {
    const c = calls(broken);
    await expect(c.ready()).rejects.toThrow(/cannot load|worker-broken\.ts exited/);
  });

  it('fails the open calls of a thread that died, tells onLost, and starts a new thread for the next call', async () => {
    const lost: string[] = [];
    const c = calls<EchoRequest>(echo, { onLost: (err) => lost.push(err.message) });
    await c.ready();
    await expect(c.call({ op: 'die' })).rejects.toThrow(/worker-echo\.ts exited \(3\)/);
    expect(lost).toEqual([expect.stringMatching(/exited \(3\)/)]);
    expect(c.started).toBe(false);
    expect(await c.call<string>({ op: 'echo', value: 'again' })).toBe('again');
  });
});
