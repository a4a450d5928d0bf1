// The CoAP and raw UDP listeners read their socket on a thread of its own (bridge/ingress/threaded-socket.ts):
// libuv reads at most 32 datagrams per wake-up of the loop that owns a socket, so on a busy main loop
// the intake was capped (about 1,500 datagrams/s under the lowpower bench) and the rest waited in the kernel.
import { createSocket, type Socket } from 'node:dgram';
import { Worker } from 'node:worker_threads';
import { afterEach, describe, expect, it } from 'vitest';
import { ThreadedDatagramSocket } from '../bridge/ingress/threaded-socket.ts';

const opened: Array<Socket> = [];
afterEach(async () => {
  await Promise.all(opened.splice(0).map((s) => new Promise<void>((r) => s.close(() => r()))));
});

/** Keeps the event loop busy `sliceMs` per turn for `turns` turns, as the gateway's is under load. */
async function busyTurns(turns: number, sliceMs: number): Promise<void> {
  for (let i = 0; i < turns; i++) {
    const t = performance.now();
    while (performance.now() - t < sliceMs);
    await new Promise((r) => setImmediate(r));
  }
}

async function burst(port: number, count: number): Promise<void> {
  const sender = createSocket('udp4');
  opened.push(sender);
  const payload = Buffer.alloc(200, 7);
  await Promise.all(Array.from({ length: count }, (_, i) => new Promise<void>((r) => sender.send(payload, 0, 200 - (i % 2), port, '127.0.0.1', () => r()))));
}

describe('ThreadedDatagramSocket', () => {
  it('takes a burst of 3,000 datagrams within a few turns of a busy event loop', async () => {
    const sock = await ThreadedDatagramSocket.bind({ host: '127.0.0.1', port: 0, recvBufferSize: 4 * 1024 * 1024, onLost: () => undefined });
    opened.push(sock);
    let received = 0;
    sock.on('message', () => received++);
    await burst(sock.address().port, 3000);
    // 15 turns of 20 ms: a socket read on this loop would take at most 15 × 32 = 480 of them by then.
    await busyTurns(15, 20);
    expect(received).toBeGreaterThanOrEqual(2900);
  });

  it('answers from the bound port, in both send() call shapes, and reports send errors to the callback', async () => {
    const sock = await ThreadedDatagramSocket.bind({ host: '127.0.0.1', port: 0, recvBufferSize: 1 << 20, onLost: () => undefined });
    opened.push(sock);
    sock.on('message', (msg, rinfo) => {
      sock.send(Buffer.concat([Buffer.from('a:'), msg]), rinfo.port, rinfo.address);
      sock.send(Buffer.from('xxb:yy'), 2, 2, rinfo.port, rinfo.address);
    });
    const peer = createSocket('udp4');
    opened.push(peer);
    await new Promise<void>((r) => peer.bind(0, '127.0.0.1', () => r()));
    const answers: Array<{ text: string; port: number }> = [];
    peer.on('message', (m, rinfo) => answers.push({ text: m.toString(), port: rinfo.port }));
    peer.send('hi', sock.address().port, '127.0.0.1');
    for (let i = 0; i < 100 && answers.length < 2; i++) await new Promise((r) => setTimeout(r, 20));
    expect(answers.map((a) => a.text).sort()).toEqual(['a:hi', 'b:']);
    expect(answers.every((a) => a.port === sock.address().port)).toBe(true);
    const failed = await new Promise<Error | null>((r) => sock.send(Buffer.alloc(70_000), 9, '127.0.0.1', (err: Error | null) => r(err)));
    expect(failed).toBeInstanceOf(Error);
  });
});

describe('ThreadedDatagramSocket under a flood', () => {
  it('holds no more than its receive buffer while this thread is blocked, and reports what it dropped', async () => {
    // A small buffer: the socket's thread has to take in only ~80 datagrams while this thread is blocked
    // to start dropping, however little of the flood a busy machine lets it read before the kernel drops.
    const sock = await ThreadedDatagramSocket.bind({ host: '127.0.0.1', port: 0, recvBufferSize: 16 * 1024, onLost: () => undefined });
    opened.push(sock);
    let received = 0;
    let dropped = 0;
    sock.on('message', () => received++);
    sock.on('overflow', (n: number) => (dropped += n));
    // 4,000 datagrams of 200 B (800 KB) from another thread, all sent while this thread is blocked: it
    // waits on a flag the sender sets once done, so the order does not depend on how busy the machine is.
    // Sent at about 4,000/s: the socket's own thread keeps up even on a busy machine, so what is lost is
    // lost in its queue (counted), not in the kernel's buffer (which only the kernel counts).
    const done = new Int32Array(new SharedArrayBuffer(4));
    const sender = new Worker(
      `const { workerData } = require('node:worker_threads'); const s = require('node:dgram').createSocket('udp4');
      const b = Buffer.alloc(200, 1); let n = 0;
      const tick = () => { for (let i = 0; i < 20 && n < 4000; i++, n++) s.send(b, workerData.port, '127.0.0.1'); if (n < 4000) setTimeout(tick, 5); else setTimeout(() => { Atomics.store(workerData.done, 0, 1); s.close(); }, 50); };
      tick();`,
      { eval: true, workerData: { port: sock.address().port, done } },
    );
    const t = performance.now();
    while (Atomics.load(done, 0) === 0 && performance.now() - t < 10_000);
    expect(Atomics.load(done, 0)).toBe(1);
    await sender.terminate();
    for (let i = 0; i < 50 && dropped === 0; i++) await new Promise((r) => setTimeout(r, 20));
    await new Promise((r) => setTimeout(r, 200));
    expect(dropped).toBeGreaterThan(0);
    // What waited for this thread fit in 16 KB (about 80 datagrams of 200 B), plus what came after it woke.
    expect(received + dropped).toBeLessThanOrEqual(4000);
    expect(received).toBeLessThanOrEqual(250);
  }, 20_000);
});
