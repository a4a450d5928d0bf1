import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { IoTClient, CreateCertificateFromCsrCommand, CreateThingCommand, CreatePolicyCommand, AttachPolicyCommand, AttachThingPrincipalCommand, DescribeEndpointCommand, DescribeCertificateCommand, ListCertificatesCommand, DescribeThingCommand, GetPolicyCommand, UpdateCertificateCommand, DeleteCertificateCommand, ListThingGroupsCommand } from '@aws-sdk/client-iot';
import { startSandbox } from './index.ts';
import { makeDeviceCsr, thingPolicy } from './testkit.ts';

const dir = mkdtempSync(join(tmpdir(), 'sbx-'));
const t0 = Date.now();
const sb = await startSandbox({ dataDir: dir, controlPort: 0, dataPort: 0, observerPort: 0 });
console.log('started', Date.now() - t0, sb);
const iot = new IoTClient({ endpoint: sb.controlEndpoint, region: 'us-east-1', credentials: { accessKeyId: 'sandbox', secretAccessKey: 'sandbox' }, maxAttempts: 1 });
const k = await makeDeviceCsr('thing-1');
const c = await iot.send(new CreateCertificateFromCsrCommand({ certificateSigningRequest: k.csrPem, setAsActive: true }));
console.log(c.certificateId, c.certificateArn, c.$metadata);
console.log(await iot.send(new CreateThingCommand({ thingName: 'thing-1', attributePayload: { attributes: { imsi: '001010123456789' } } })));
console.log(await iot.send(new CreateThingCommand({ thingName: 'thing-1', attributePayload: { attributes: { imsi: '001010123456789' } } })));
console.log(await iot.send(new CreatePolicyCommand({ policyName: 'p', policyDocument: thingPolicy('us-east-1', '123456789012') })));
console.log(await iot.send(new AttachPolicyCommand({ policyName: 'p', target: c.certificateArn })));
console.log(await iot.send(new AttachThingPrincipalCommand({ thingName: 'thing-1', principal: c.certificateArn })));
console.log(await iot.send(new DescribeEndpointCommand({ endpointType: 'iot:Data-ATS' })));
console.log(await iot.send(new DescribeCertificateCommand({ certificateId: c.certificateId })));
console.log(await iot.send(new ListCertificatesCommand({})));
console.log(await iot.send(new DescribeThingCommand({ thingName: 'thing-1' })));
console.log(await iot.send(new GetPolicyCommand({ policyName: 'p' })));
for (const cmd of [new DescribeThingCommand({ thingName: 'nope' }), new CreateThingCommand({ thingName: 'thing-1' }), new DeleteCertificateCommand({ certificateId: c.certificateId }), new ListThingGroupsCommand({})] as any[]) {
  try { await iot.send(cmd); console.log('no error?!'); } catch (e: any) { console.log('ERR', e.name, e.message, e.$metadata?.httpStatusCode, e.resourceId); }
}
console.log(await iot.send(new UpdateCertificateCommand({ certificateId: c.certificateId, newStatus: 'INACTIVE' })));
console.log(JSON.stringify(await (await fetch(sb.controlEndpoint + '/_sandbox/state')).json()).slice(0, 500));
await sb.close();
console.log('closed');
