// Accounting authenticators (RFC 2866 §3). Both are MD5 over the packet with the shared secret appended;
// they differ only in what stands in the authenticator field while hashing.

import { createHash, timingSafeEqual } from 'node:crypto';
import { HEADER_LENGTH } from './codec.ts';

const ZERO16 = Buffer.alloc(16);

function md5Over(packet: Buffer, authField: Buffer, secret: Buffer): Buffer {
  return createHash('md5')
    .update(packet.subarray(0, 4)) // Code, Identifier, Length
    .update(authField)
    .update(packet.subarray(HEADER_LENGTH)) // Attributes
    .update(secret)
    .digest();
}

/**
 * Request Authenticator of an Accounting-Request: MD5(Code+Identifier+Length+16 zero octets+Attributes+Secret).
 * `packet` must be exactly Length octets (padding removed).
 */
export function requestAuthenticator(packet: Buffer, secret: Buffer): Buffer {
  return md5Over(packet, ZERO16, secret);
}

/**
 * Checks an Accounting-Request in constant time. (A string comparison, as in the npm `radius` package,
 * both leaks timing and, done on decoded strings, can accept altered authenticators.)
 */
export function verifyAccountingRequest(packet: Buffer, secret: Buffer): boolean {
  if (packet.length < HEADER_LENGTH) return false;
  return timingSafeEqual(requestAuthenticator(packet, secret), packet.subarray(4, HEADER_LENGTH));
}

/** Writes the Request Authenticator into an encoded Accounting-Request (for clients: tests, bench). */
export function signAccountingRequest(packet: Buffer, secret: Buffer): Buffer {
  requestAuthenticator(packet, secret).copy(packet, 4);
  return packet;
}

/**
 * Writes the Response Authenticator into an encoded Accounting-Response:
 * MD5(Code+Identifier+Length+RequestAuth+Attributes+Secret).
 */
export function signAccountingResponse(response: Buffer, requestAuth: Buffer, secret: Buffer): Buffer {
  md5Over(response, requestAuth, secret).copy(response, 4);
  return response;
}

/** Checks a reply against the request it answers (clients: tests, bench). */
export function verifyAccountingResponse(response: Buffer, requestAuth: Buffer, secret: Buffer): boolean {
  if (response.length < HEADER_LENGTH) return false;
  return timingSafeEqual(md5Over(response, requestAuth, secret), response.subarray(4, HEADER_LENGTH));
}
