// The receiving thread of a datagram listener (threaded-socket.ts): owns the UDP socket, reads it on an
// event loop that does nothing else, and passes what arrives to the main thread in batches.
import { createSocket, type Socket } from 'node:dgram';
import { workerData } from 'node:worker_threads';
import { bytesToPost, postEvent, postedBytes, serveCalls } from '../../lib/worker-calls.ts';

export type DatagramRequest =
  | { op: 'bind'; type: 'udp4' | 'udp6'; host: string; port: number; recvBufferSize: number }
  | { op: 'send'; items: Array<[payload: string, port: number, address: string]> }
  | { op: 'close' };

export type DatagramEvent =
  | { kind: 'datagrams'; batch: Array<[payload: string, address: string, port: number, family: string]>; dropped: number }
  | { kind: 'error'; error: string };

/** Bytes posted to the main thread and not yet taken by it ([0]), shared with threaded-socket.ts. */
const queued = new Int32Array(workerData.queued as SharedArrayBuffer);
let sock: Socket | undefined;
let batch: Array<[string, string, number, string]> = [];
let batchBytes = 0;
/** Datagrams dropped since the last batch because the main thread was that far behind. */
let dropped = 0;
let flushScheduled = false;

// libuv reads at most 32 datagrams per wake-up of a socket's loop: on the gateway's busy main loop that
// capped intake near 1,500 datagrams/s and left the rest waiting in the kernel for seconds. Here the
// loop is idle, every datagram is read at once, and the main thread takes them a batch per wake-up.
function flush(): void {
  flushScheduled = false;
  const out = batch;
  Atomics.add(queued, 0, batchBytes);
  batch = [];
  batchBytes = 0;
  postEvent({ kind: 'datagrams', batch: out, dropped } satisfies DatagramEvent);
  dropped = 0;
}

function bind(req: Extract<DatagramRequest, { op: 'bind' }>): Promise<{ port: number; address: string; family: string }> {
  const s = createSocket({ type: req.type, recvBufferSize: req.recvBufferSize });
  return new Promise((resolve, reject) => {
    s.once('error', reject);
    s.bind(req.port, req.host, () => {
      s.off('error', reject);
      s.on('error', (err) => postEvent({ kind: 'error', error: err.message } satisfies DatagramEvent));
      s.on('message', (msg, rinfo) => {
        // No more waiting here than the kernel's buffer would have held: a flood costs datagrams, not memory.
        // A drop is reported even when nothing follows it: a flood that ends leaves no later batch to carry it.
        if (!flushScheduled) {
          flushScheduled = true;
          setImmediate(flush);
        }
        if (Atomics.load(queued, 0) + batchBytes + msg.length > req.recvBufferSize) return void dropped++;
        batch.push([bytesToPost(msg), rinfo.address, rinfo.port, rinfo.family]);
        batchBytes += msg.length;
      });
      sock = s;
      resolve(s.address());
    });
  });
}

/** Sends each datagram; answers with the error of each that failed (null when sent). */
function send(items: Array<[string, number, string]>): Promise<Array<string | null>> {
  return Promise.all(
    items.map(
      ([payload, port, address]) =>
        new Promise<string | null>((resolve) => {
          if (!sock) return resolve('socket closed');
          sock.send(postedBytes(payload), port, address, (err) => resolve(err ? err.message : null));
        }),
    ),
  );
}

serveCalls<DatagramRequest>((req) => {
  switch (req.op) {
    case 'bind':
      return bind(req);
    case 'send':
      return send(req.items);
    case 'close':
      return new Promise<void>((resolve) => (sock ? sock.close(() => resolve()) : resolve()));
  }
});
