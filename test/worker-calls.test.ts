import { afterEach, describe, expect, it } from 'vitest';
import { packBytes, WorkerCalls } from '../lib/worker-calls.ts';
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

  it('moves packed bytes to the thread: only the bytes themselves travel, and the caller keeps its own', async () => {
    const c = calls<EchoRequest>(echo);
    // Payloads as sockets hand them over: small views into one large read.
    const read = Buffer.alloc(65536, 'x');
    read.write('first', 100);
    read.write('second', 4000);
    const payloads = [read.subarray(100, 105), read.subarray(4000, 4006)];
    const { views, transfer } = packBytes(payloads);
    const answer = c.call<Array<[string, number]>>({ op: 'bytes', views }, transfer);
    // Only the 11 packed bytes travelled (a clone would have taken the 64 KB read along)...
    expect(await answer).toEqual([
      ['first', 11],
      ['second', 11],
    ]);
    // ...moved, not cloned: the packed buffer is gone from this thread; the originals are untouched.
    expect(transfer[0].byteLength).toBe(0);
    expect(payloads.map(String)).toEqual(['first', 'second']);
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
