// ARNs in the exact shapes IoT Core uses, so policies and clients written for
// AWS work unchanged against the sandbox.

export interface Account {
  /** aws, aws-cn (China regions), aws-us-gov (GovCloud): the second field of every ARN. */
  partition: string;
  region: string;
  accountId: string;
}

const base = (a: Account) => `arn:${a.partition}:iot:${a.region}:${a.accountId}`;

export const certArn = (a: Account, certificateId: string) => `${base(a)}:cert/${certificateId}`;
export const thingArn = (a: Account, thingName: string) => `${base(a)}:thing/${thingName}`;
export const thingGroupArn = (a: Account, groupName: string) => `${base(a)}:thinggroup/${groupName}`;
export const policyArn = (a: Account, policyName: string) => `${base(a)}:policy/${policyName}`;
export const clientArn = (a: Account, clientId: string) => `${base(a)}:client/${clientId}`;
export const topicArn = (a: Account, topic: string) => `${base(a)}:topic/${topic}`;
export const topicFilterArn = (a: Account, filter: string) => `${base(a)}:topicfilter/${filter}`;

/** The certificate id inside a cert ARN of this account, or undefined for anything else. */
export function certIdFromArn(a: Account, arn: string): string | undefined {
  const prefix = `${base(a)}:cert/`;
  return arn.startsWith(prefix) ? arn.slice(prefix.length) : undefined;
}
