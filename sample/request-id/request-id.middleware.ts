import { randomBytes } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';

/** Response header that names every request; errors repeat it as `request_id`. */
export const REQUEST_ID_HEADER = 'x-request-id';

/** A new request id: `req_` + 16 random bytes in base64url. */
export function newRequestId(): string {
  return `req_${randomBytes(16).toString('base64url')}`;
}

/**
 * Gives every response its own `x-request-id`. It is mounted with `app.use()` before Nest's body
 * parser, so even a request whose body cannot be parsed gets an id. An id sent by the client is
 * ignored: ids are ours, so logs can trust them.
 */
export function requestIdMiddleware(_request: IncomingMessage, response: ServerResponse, next: () => void): void {
  response.setHeader(REQUEST_ID_HEADER, newRequestId());
  next();
}
