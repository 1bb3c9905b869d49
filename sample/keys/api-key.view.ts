import type { ApiKeyEntity } from './api-key.entity';

/** A key as the API shows it. */
export interface ApiKeyView {
  id: string;
  name: string;
  rate_limit_rpm: number;
  prefix: string;
  created_at: string;
  revoked_at: string | null;
}

/** The answer to a mint: the only answer (with its replays) that ever carries `plain_key`. */
export interface MintedKeyView extends ApiKeyView {
  plain_key: string;
}

/** Renders a key; fields in the documented order. */
export function toApiKeyView(key: ApiKeyEntity): ApiKeyView {
  return {
    id: key.id,
    name: key.name,
    rate_limit_rpm: key.rateLimitRpm,
    prefix: key.prefix,
    created_at: key.createdAt.toISOString(),
    revoked_at: key.revokedAt ? key.revokedAt.toISOString() : null,
  };
}
