// AWS-style service errors. The SDK picks the exception class from the
// `x-amzn-ErrorType` header, so `code` must be the exact modeled shape name and
// `status` the one the IoT model declares for it.

export class AwsError extends Error {
  readonly code: string;
  readonly status: number;
  /** Extra members of the error shape (e.g. resourceId on ResourceAlreadyExistsException). */
  readonly fields: Record<string, string>;

  constructor(code: string, status: number, message: string, fields: Record<string, string> = {}) {
    super(message);
    this.name = code;
    this.code = code;
    this.status = status;
    this.fields = fields;
  }
}

export const notFound = (message: string) => new AwsError('ResourceNotFoundException', 404, message);
export const alreadyExists = (message: string, resourceId: string, resourceArn: string) =>
  new AwsError('ResourceAlreadyExistsException', 409, message, { resourceId, resourceArn });
export const invalidRequest = (message: string) => new AwsError('InvalidRequestException', 400, message);
export const certificateState = (message: string) => new AwsError('CertificateStateException', 406, message);
export const deleteConflict = (message: string) => new AwsError('DeleteConflictException', 409, message);
export const malformedPolicy = (message: string) => new AwsError('MalformedPolicyException', 400, message);
export const limitExceeded = (message: string) => new AwsError('LimitExceededException', 410, message);
// IAM's refusal, answered before the operation runs (the same for every AWS REST service).
export const accessDenied = (message: string) => new AwsError('AccessDeniedException', 403, message);
export const versionsLimitExceeded = (message: string) => new AwsError('VersionsLimitExceededException', 409, message);
export const versionConflict = (message: string) => new AwsError('VersionConflictException', 409, message);
// The IoT model says 400 for ThrottlingException; we answer 429 so plain HTTP
// clients and retry layers that look only at the status also see "throttled".
// The SDK keys on the error name, so both work.
export const throttled = (message: string) => new AwsError('ThrottlingException', 429, message);
export const internalFailure = (message: string) => new AwsError('InternalFailureException', 500, message);
export const unknownOperation = (message: string) => new AwsError('UnknownOperationException', 404, message);
