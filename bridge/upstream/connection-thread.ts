// An upstream connection thread (bridge/upstream/connections.ts#connectionThreads): owns the aws-crt MQTT
// connections, one per device session, and carries out what the main thread asks of them.
import { io, iot, mqtt } from 'aws-iot-device-sdk-v2';
import { bytesToPost, postEvent, postedBytes, serveCalls } from '../../lib/worker-calls.ts';
import { ThreadConnections, type LinkEvent, type LinkRequest } from './connections.ts';
import { patchCrtCallbacks } from './crt-patch.ts';

// Before the first connection: one callback per connection instead of six (see crt-patch.ts).
const crt = patchCrtCallbacks();

// One client bootstrap for every connection: a bootstrap per device would cost threads per device.
const client = new mqtt.MqttClient(new io.ClientBootstrap());
const connections = new ThreadConnections<mqtt.MqttClientConnection>();

const send: (event: LinkEvent) => void = postEvent;
const text = (err: unknown) => String((err as Error)?.message ?? err);
const crtQos = (qos: 0 | 1) => (qos === 1 ? mqtt.QoS.AtLeastOnce : mqtt.QoS.AtMostOnce);

async function connect(conn: number, s: Extract<LinkRequest, { op: 'connect' }>['settings']): Promise<void> {
  const config = iot.AwsIotMqttConnectionConfigBuilder.new_mtls_builder(s.certificatePem, s.privateKeyPem)
    .with_endpoint(s.endpoint)
    .with_port(s.port)
    .with_client_id(s.clientId)
    .with_clean_session(true)
    .with_keep_alive_seconds(s.keepAliveSeconds)
    .with_timeout_ms(s.connectTimeoutMs)
    .with_protocol_operation_timeout_ms(s.operationTimeoutMs)
    .with_certificate_authority(s.caPem)
    .build();
  const c = client.new_connection(config);
  c.on('error', (err) => send({ kind: 'error', conn, error: text(err) }));
  try {
    await c.connect();
  } catch (err) {
    await c.disconnect().catch(() => undefined);
    throw err;
  }
  c.on('interrupt', (err) => {
    if (connections.get(conn) !== c) return;
    connections.delete(conn);
    send({ kind: 'interrupted', conn, error: text(err) });
    void c.disconnect().catch(() => undefined);
  });
  connections.set(conn, c);
}

async function carryOut(req: LinkRequest): Promise<number | undefined> {
  switch (req.op) {
    case 'connect':
      return void (await connect(req.conn, req.settings));
    case 'publish':
      return void (await connections.open(req.conn).publish(req.topic, postedBytes(req.payload), crtQos(req.qos)));
    case 'subscribe': {
      const { conn, sub } = req;
      const res = await connections.open(conn).subscribe(req.filter, crtQos(req.qos), (topic, payload, _dup, qos, retain) => {
        // An exception escaping this callback aborts the process inside aws-crt, so none may escape.
        // With overlapping subscriptions the SDK hands one ArrayBuffer to several callbacks, and the
        // later ones find it detached (copying throws): that message is already with the first handler.
        try {
          send({ kind: 'message', conn, sub, topic, payload: bytesToPost(new Uint8Array(payload)), qos: qos === mqtt.QoS.AtMostOnce ? 0 : 1, retain });
        } catch {
          // already delivered through an overlapping subscription
        }
      });
      return (res.qos as number) === 128 ? 128 : res.qos === mqtt.QoS.AtMostOnce ? 0 : 1;
    }
    case 'unsubscribe':
      return void (await connections.get(req.conn)?.unsubscribe(req.filter));
    case 'disconnect':
      return void (await connections.disconnect(req.conn));
    case 'disconnectAll': {
      const all = [...connections.values()];
      connections.clear();
      await Promise.allSettled(all.map((c) => c.disconnect()));
      return undefined;
    }
    case 'release':
      // When a thread stops, Node closes its thread-safe functions before aws-crt's finalizers release
      // them again, which aborts the process; aws-crt's own switch (meant for Electron's exit) skips
      // that. It is process-wide: sent once every connection thread has disconnected.
      crt.disableThreadsafeFunctions();
      return undefined;
  }
}

serveCalls<LinkRequest>(carryOut);
