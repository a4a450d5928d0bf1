// A worker module for test/worker-calls.test.ts: echoes calls, posts an event when asked, dies when asked.
import { postEvent, postedBytes, serveCalls } from '../../lib/worker-calls.ts';

export type EchoRequest = { op: 'echo'; value: string } | { op: 'bytes'; texts: string[] } | { op: 'event'; value: string } | { op: 'fail'; message: string } | { op: 'die' };

serveCalls<EchoRequest>(async (req) => {
  switch (req.op) {
    case 'echo':
      return req.value;
    case 'bytes':
      // The bytes that arrived, as hex.
      return req.texts.map((t) => postedBytes(t).toString('hex'));
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
