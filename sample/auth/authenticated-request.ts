import type { Request } from 'express';

/** The key a request authenticated with, as the guard leaves it on the request. */
export interface AuthenticatedKey {
  id: string;
  prefix: string;
}

/** An Express request that went through the API key guard. */
export interface AuthenticatedRequest extends Request {
  apiKey?: AuthenticatedKey;
}

/**
 * The idempotency scope of the sample: the id of the authenticated API key. The guard runs before
 * the module's interceptor, so it is always set on a guarded route; records are then per key id
 * (which `idempotency_keys.api_key_id` stores as is), and nothing derived from the token is stored.
 */
export function apiKeyScope(request: AuthenticatedRequest): string | undefined {
  return request.apiKey?.id;
}
