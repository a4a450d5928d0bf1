// IoT MQTT-based file delivery on the control plane, in the REST shapes of @aws-sdk/client-iot:
// CreateStream `POST /streams/{streamId}`, DescribeStream `GET /streams/{streamId}`, DeleteStream
// `DELETE /streams/{streamId}`. Plus the sandbox-only routes a test needs: `PUT /_sandbox/blobs/{bucket}/{key}`
// (the raw body becomes the S3 object a stream file names) and `GET /_sandbox/streams` (what the data plane
// served per stream: requests, blocks, bytes, rejected). Timestamps are epoch seconds (restJson1).
import { createHash } from 'node:crypto';
import type { StreamStore } from '../streams.ts';
import type { Route } from './http.ts';

export function streamRoutes(streams: StreamStore): Route[] {
  return [
    {
      operation: 'CreateStream',
      method: 'POST',
      path: '/streams/{streamId}',
      handle(req) {
        const s = streams.create(req.params.streamId!, req.json());
        return { streamId: s.streamId, streamArn: s.streamArn, description: s.description, streamVersion: s.streamVersion };
      },
    },
    {
      operation: 'DescribeStream',
      method: 'GET',
      path: '/streams/{streamId}',
      handle(req) {
        const s = streams.describe(req.params.streamId!);
        return {
          streamInfo: {
            streamId: s.streamId,
            streamArn: s.streamArn,
            streamVersion: s.streamVersion,
            description: s.description,
            files: s.files.map((f) => ({ fileId: f.fileId, s3Location: f.s3Location })),
            createdAt: s.createdAt / 1000,
            lastUpdatedAt: s.lastUpdatedAt / 1000,
            roleArn: s.roleArn,
          },
        };
      },
    },
    {
      operation: 'DeleteStream',
      method: 'DELETE',
      path: '/streams/{streamId}',
      handle(req) {
        streams.delete(req.params.streamId!);
        return {};
      },
    },
    {
      operation: 'Sandbox.PutBlob',
      method: 'PUT',
      path: '/_sandbox/blobs/{bucket}/{key}',
      admin: true,
      handle(req) {
        streams.putBlob(req.params.bucket!, req.params.key!, req.body);
        return { bucket: req.params.bucket, key: req.params.key, size: req.body.length, sha256: createHash('sha256').update(req.body).digest('hex') };
      },
    },
    {
      operation: 'Sandbox.GetStreamsServed',
      method: 'GET',
      path: '/_sandbox/streams',
      admin: true,
      handle: () => ({ served: streams.servedStats() }),
    },
  ];
}
