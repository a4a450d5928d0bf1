// An upstream connection thread for the node client (bridge/upstream/connections.ts#connectionThreads with
// upstream.threads ≥ 1): the TLS link of tls-link.ts, on this thread's event loop, carrying out what the
// main thread asks of it. One hop each way per batch of calls, against aws-crt's two.
import { bytesToPost, postEvent, postedBytes, serveCalls } from '../../lib/worker-calls.ts';
import { ThreadConnections, type LinkEvent, type LinkRequest, type UpstreamConnection } from './connections.ts';
import { tlsLink } from './tls-link.ts';
import { threadDefaultTrust } from './trust.ts';

// This thread's TLS clients are the upstream sessions alone: their bundle can be its default trust.
const link = tlsLink(threadDefaultTrust());
const connections = new ThreadConnections<UpstreamConnection>();
const send: (event: LinkEvent) => void = postEvent;

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
      return void (await connections.open(req.conn).publish(req.topic, postedBytes(req.payload), req.qos));
    case 'subscribe': {
      const { conn, sub } = req;
      return connections.open(conn).subscribe(req.filter, req.qos, (topic, payload, qos, retain) =>
        send({ kind: 'message', conn, sub, topic, payload: bytesToPost(payload), qos, retain: retain ?? false }),
      );
    }
    case 'unsubscribe':
      return void (await connections.get(req.conn)?.unsubscribe(req.filter));
    case 'disconnect':
      return void (await connections.disconnect(req.conn));
    case 'disconnectAll':
      connections.clear();
      return void (await link.close());
    case 'release':
      // Nothing native to let go of (see connection-thread.ts).
      return undefined;
  }
}

serveCalls<LinkRequest>(carryOut);
