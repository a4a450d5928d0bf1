// Who a data-plane connection is and what its certificate's policies let it
// do, decided the way IoT Core does: the client certificate must be registered
// and ACTIVE, and every CONNECT, PUBLISH, SUBSCRIBE and delivery is evaluated
// against the policies attached to that certificate as the data plane sees
// them: changes arrive after the registry's propagation delay (0 = at once).
import { type Account, certArn, clientArn, topicArn, topicFilterArn } from '../arn.ts';
import { certificateIdOf } from '../ca.ts';
import { isAllowed, type PolicyContext } from '../policy.ts';
import type { Registry } from '../registry.ts';

export interface Session {
  certificateId: string;
  certificateArn: string;
  clientId: string;
  commonName: string | undefined;
}

export type Identification = { ok: true; session: Session } | { ok: false; reason: string };

export class Authorizer {
  private readonly registry: Registry;
  private readonly account: Account;

  constructor(registry: Registry) {
    this.registry = registry;
    this.account = registry.account;
  }

  /** Maps the TLS client certificate to a registered, ACTIVE certificate. */
  identify(certDer: Buffer, clientId: string, commonName: string | undefined): Identification {
    const certificateId = certificateIdOf(certDer);
    const status = this.registry.dataPlaneStatus(certificateId);
    if (!status) return { ok: false, reason: `certificate ${certificateId} is not registered (or not yet propagated)` };
    if (status !== 'ACTIVE') return { ok: false, reason: `certificate ${certificateId} is ${status}` };
    return { ok: true, session: { certificateId, certificateArn: certArn(this.account, certificateId), clientId, commonName } };
  }

  isActive(s: Session): boolean {
    return this.registry.dataPlaneStatus(s.certificateId) === 'ACTIVE';
  }

  canConnect(s: Session): boolean {
    return this.allows(s, 'iot:Connect', clientArn(this.account, s.clientId));
  }

  canPublish(s: Session, topic: string, retain: boolean): boolean {
    const arn = topicArn(this.account, topic);
    return this.allows(s, 'iot:Publish', arn) && (!retain || this.allows(s, 'iot:RetainPublish', arn));
  }

  canSubscribe(s: Session, filter: string): boolean {
    return this.allows(s, 'iot:Subscribe', topicFilterArn(this.account, filter));
  }

  canReceive(s: Session, topic: string): boolean {
    return this.allows(s, 'iot:Receive', topicArn(this.account, topic));
  }

  private allows(s: Session, action: string, resource: string): boolean {
    return isAllowed(this.registry.parsedPoliciesFor(s.certificateArn), action, resource, this.context(s));
  }

  /**
   * Policy variables and condition keys. The connection's thing is the thing
   * named like the client id, and only if it is attached to the certificate.
   */
  private context(s: Session): PolicyContext {
    const thing = this.registry.isThingAttached(s.clientId, s.certificateArn) ? this.registry.findThing(s.clientId) : undefined;
    const ctx: Record<string, string | undefined> = {
      'iot:ClientId': s.clientId,
      'iot:Certificate.Subject.CommonName': s.commonName,
      'iot:Connection.Thing.IsAttached': thing ? 'true' : 'false',
      'iot:Connection.Thing.ThingName': thing?.thingName,
    };
    for (const [k, v] of Object.entries(thing?.attributes ?? {})) ctx[`iot:Connection.Thing.Attributes[${k}]`] = v;
    return ctx;
  }
}
