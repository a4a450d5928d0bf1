// An upstream connection thread for the node client (bridge/upstream/connections.ts#connectionThreads with
// upstream.threads ≥ 1): the TLS link of tls-link.ts, on this thread's event loop, carrying out what the
// main thread asks of it. One hop each way per batch of calls, against aws-crt's two.
import { bytesToPost, postEvent, postedBytes, serveCalls } from '../../lib/worker-calls.ts';
import type { LinkEvent, LinkRequest, UpstreamConnection } from './connections.ts';
import { tlsLink } from './tls-link.ts';

const link = tlsLink();
const connections = new Map<number, UpstreamConnection>();
const send: (event: LinkEvent) => void = postEvent;

function connection(conn: number): UpstreamConnection {
  const c = connections.get(conn);
  if (!c) throw new Error('session closed');
  return c;
}

async function carryOut(req: LinkRequest): Promise<number | undefined> {
  switch (req.op) {
    case 'connect': {
      const { conn } = req;
      const c = await link.connect(req.settings, {
        interrupted: (error) => {
          connections.delete(conn);
          send({ kind: 'interrupted', conn, error });
        },
        error: (error) => send({ kind: 'error', conn, error }),
      });
      connections.set(conn, c);
      return undefined;
    }
    case 'publish':
      return void (await connection(req.conn).publish(req.topic, postedBytes(req.payload), req.qos));
    case 'subscribe': {
      const { conn, sub } = req;
      return connection(conn).subscribe(req.filter, req.qos, (topic, payload, qos, retain) =>
        send({ kind: 'message', conn, sub, topic, payload: bytesToPost(payload), qos, retain: retain ?? false }),
      );
    }
    case 'unsubscribe':
      return void (await connections.get(req.conn)?.unsubscribe(req.filter));
    case 'disconnect': {
      const c = connections.get(req.conn);
      connections.delete(req.conn);
      return void (await c?.disconnect());
    }
    case 'disconnectAll':
      connections.clear();
      return void (await link.close());
    case 'release':
      // Nothing native to let go of (see connection-thread.ts).
      return undefined;
  }
}

serveCalls<LinkRequest>(carryOut);
