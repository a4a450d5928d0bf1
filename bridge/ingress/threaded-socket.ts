import { Socket, type RemoteInfo } from 'node:dgram';
import type { AddressInfo } from 'node:net';
import { isIPv6 } from 'node:net';
import { bytesToPost, postedBytes, siblingModule, WorkerCalls } from '../../lib/worker-calls.ts';
import type { DatagramEvent, DatagramRequest } from './datagram-thread.ts';

type SendCallback = (err: Error | null, bytes?: number) => void;

/**
 * A UDP socket whose reading happens on a thread of its own (datagram-thread.ts). It is a dgram.Socket
 * to its users (the `coap` package checks `instanceof Socket` before it answers from its cache): they
 * get 'message' events and call send(), address() and close() as usual, while the underlying handle of
 * this object is never bound. Sends made in one turn of the event loop go to the thread together.
 */
export class ThreadedDatagramSocket extends Socket {
  private readonly calls: WorkerCalls<DatagramRequest, DatagramEvent>;
  private bound: AddressInfo | undefined;
  private outgoing: Array<{ item: [string, number, string]; cb?: SendCallback }> = [];
  private closed = false;
  /** Bytes the receiving thread has passed on and this thread not yet taken ([0]). */
  private readonly queued = new Int32Array(new SharedArrayBuffer(4));

  private constructor(type: 'udp4' | 'udp6', onLost: (err: Error) => void) {
    // @types/node leaves the constructor's options out; node:dgram needs the type to make its (unused) handle.
    // @ts-expect-error see above
    super({ type });
    this.calls = new WorkerCalls(siblingModule(import.meta.url, 'datagram-thread'), {
      keepAlive: true,
      workerData: { queued: this.queued.buffer },
      onEvent: (e) => this.received(e),
      onLost: (err) => {
        if (this.closed) return;
        this.closed = true;
        onLost(err);
      },
    });
  }

  /** Binds host:port on a new receiving thread; rejects as bind() would (address in use, …). */
  static async bind(opts: { host: string; port: number; recvBufferSize: number; onLost(err: Error): void }): Promise<ThreadedDatagramSocket> {
    const type = isIPv6(opts.host) ? 'udp6' : 'udp4';
    const s = new ThreadedDatagramSocket(type, opts.onLost);
    try {
      s.bound = await s.calls.call<AddressInfo>({ op: 'bind', type, host: opts.host, port: opts.port, recvBufferSize: opts.recvBufferSize });
    } catch (err) {
      await s.calls.stop();
      throw err;
    }
    return s;
  }

  get isOpen(): boolean {
    return !this.closed;
  }

  override address(): AddressInfo {
    if (!this.bound) throw new Error('not bound');
    return this.bound;
  }

  // The call shapes dgram.Socket#send takes and its users here make: (msg, port, address[, cb]) and
  // (msg, offset, length, port, address[, cb]).
  override send(msg: Buffer | Uint8Array | string, ...rest: unknown[]): void {
    const cb = typeof rest.at(-1) === 'function' ? (rest.pop() as SendCallback) : undefined;
    let bytes = typeof msg === 'string' ? Buffer.from(msg) : msg;
    let port: number;
    let address: string;
    if (rest.length >= 3 && typeof rest[0] === 'number' && typeof rest[1] === 'number') {
      const [offset, length] = rest as [number, number];
      bytes = bytes.subarray(offset, offset + length);
      port = rest[2] as number;
      address = (rest[3] as string | undefined) ?? (this.bound?.family === 'IPv6' ? '::1' : '127.0.0.1');
    } else {
      port = rest[0] as number;
      address = (rest[1] as string | undefined) ?? (this.bound?.family === 'IPv6' ? '::1' : '127.0.0.1');
    }
    if (this.closed) {
      if (cb) queueMicrotask(() => cb(new Error('socket closed')));
      return;
    }
    if (this.outgoing.length === 0) setImmediate(() => this.flush());
    // A copy: the caller may reuse its buffer once send() returns, as with a kernel socket.
    this.outgoing.push({ item: [bytesToPost(bytes), port, address], cb });
  }

  override close(callback?: () => void): this {
    if (this.closed) {
      if (callback) queueMicrotask(callback);
      return this;
    }
    this.closed = true;
    this.flush();
    void this.calls
      .call({ op: 'close' })
      .catch(() => undefined)
      .then(() => this.calls.stop())
      .then(() => {
        this.emit('close');
        callback?.();
      });
    return this;
  }

  private flush(): void {
    const out = this.outgoing;
    this.outgoing = [];
    if (out.length === 0) return;
    this.calls.call<Array<string | null>>({ op: 'send', items: out.map((o) => o.item) }).then(
      (errors) => out.forEach((o, i) => o.cb?.(errors[i] ? new Error(errors[i]!) : null, o.item[0].length)),
      (err: Error) => out.forEach((o) => o.cb?.(err)),
    );
  }

  private received(e: DatagramEvent): void {
    if (e.kind === 'error') return void this.emit('error', new Error(e.error));
    Atomics.sub(this.queued, 0, e.batch.reduce((n, [payload]) => n + payload.length, 0));
    // 'overflow': datagrams the receiving thread dropped while this thread was behind by a receive buffer.
    if (e.dropped > 0) this.emit('overflow', e.dropped);
    if (this.closed) return;
    for (const [payload, address, port, family] of e.batch) {
      const rinfo: RemoteInfo = { address, port, family: family as RemoteInfo['family'], size: payload.length };
      this.emit('message', postedBytes(payload), rinfo);
    }
  }
}
