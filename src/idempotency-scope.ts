import { hash } from 'node:crypto';

// Spaces and tabs only: String#trim() would also strip U+00A0 and fold two tokens into one scope.
const BEARER = /^[ \t]*bearer[ \t]+(.*?)[ \t]*$/i;

/** The raw `Authorization: Bearer` token; undefined for another scheme, an empty token or no header. */
export function bearerToken(request: any): string | undefined {
  // Fastify's request exposes the raw request's headers too.
  const header = request.headers?.authorization;
  if (typeof header !== 'string') return undefined;
  return BEARER.exec(header)?.[1] || undefined;
}

/**
 * The default scope: the SHA-256 hex of the `Authorization: Bearer` token, so records are per API
 * key and the raw token is never stored. Another scheme, an empty token or no header: unresolved.
 */
export function bearerTokenScope(request: any): string | undefined {
  const token = bearerToken(request);
  return token ? hash('sha256', token, 'hex') : undefined;
}
