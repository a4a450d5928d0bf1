// A worker module for test/worker-calls.test.ts: echoes calls, posts an event when asked, dies when asked.
import { postEvent, serveCalls } from '../../lib/worker-calls.ts';

export type EchoRequest = { op: 'echo'; value: string } | { op: 'bytes'; views: Uint8Array[] } | { op: 'event'; value: string } | { op: 'fail'; message: string } | { op: 'die' };

serveCalls<EchoRequest>(async (req) => {
  switch (req.op) {
    case 'echo':
      return req.value;
    case 'bytes':
      // What arrived: each view's text and the size of the buffer behind it.
      return req.views.map((v) => [Buffer.from(v.buffer, v.byteOffset, v.byteLength).toString(), v.buffer.byteLength]);
    case 'event':
      postEvent({ value: req.value });
      return undefined;
    case 'fail':
      throw new Error(req.message);
    case 'die':
      // Never answered: the thread is gone first.
      setImmediate(() => process.exit(3));
      return new Promise(() => undefined);
  }
});
