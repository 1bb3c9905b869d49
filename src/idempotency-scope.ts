import { createHash } from 'node:crypto';

const BEARER = /^bearer[ \t]+(.*)$/i;

/**
 * The default scope: the SHA-256 hex of the `Authorization: Bearer` token, so records are per API
 * key and the raw token is never stored. Another scheme, an empty token or no header: unresolved.
 */
export function bearerTokenScope(request: any): string | undefined {
  const header = (request.raw ?? request).headers?.authorization;
  if (typeof header !== 'string') return undefined;
  const token = BEARER.exec(header.trim())?.[1].trim();
  return token ? createHash('sha256').update(token).digest('hex') : undefined;
}
