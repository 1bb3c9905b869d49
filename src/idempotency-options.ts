import { IdempotencyConfigurationError, defaultDocsUrl, formatErrorEnvelope } from './idempotency.exceptions';
import type { IdempotencyModuleOptions, ResolvedIdempotencyOptions } from './idempotency-options.interface';
import { bearerTokenScope } from './idempotency-scope';
import type { IsolationLevel } from './store/idempotency.store';
import { DEFAULT_STORE_TIMEOUT } from './store/store-timeout';

/** Injection token of the options with their defaults applied. */
export const RESOLVED_IDEMPOTENCY_OPTIONS = Symbol('idempotency:resolved-options');

const DEFAULTS: Omit<ResolvedIdempotencyOptions, 'dataSource'> = {
  ttl: 24 * 60 * 60 * 1000,
  lease: 30_000,
  scope: bearerTokenScope,
  onUnresolvedScope: 'reject',
  conflictStatus: 409,
  maxResponseBytes: 1024 * 1024,
  expiresHeader: 'idempotency-expires-at',
  excludeHeaders: ['x-request-id'],
  formatError: formatErrorEnvelope,
  docsUrl: defaultDocsUrl,
  isolation: 'READ COMMITTED',
  purgeInterval: 10 * 60 * 1000,
  purgeBatchSize: 1000,
  preparedStatements: true,
  storeTimeout: DEFAULT_STORE_TIMEOUT,
};

const ISOLATION_LEVELS: IsolationLevel[] = ['READ COMMITTED', 'REPEATABLE READ', 'SERIALIZABLE'];

/** Applies the defaults once and rejects options that cannot work, saying how to fix them. */
export function resolveOptions(options: IdempotencyModuleOptions = {}): ResolvedIdempotencyOptions {
  const defined = Object.fromEntries(Object.entries(options).filter(([, value]) => value !== undefined));
  const resolved = { ...DEFAULTS, ...defined } as ResolvedIdempotencyOptions;
  const positive = (name: 'ttl' | 'lease' | 'maxResponseBytes' | 'purgeBatchSize' | 'storeTimeout') => {
    if (!Number.isInteger(resolved[name]) || resolved[name] <= 0) {
      throw new IdempotencyConfigurationError(`IdempotencyModule option "${name}" must be a positive integer; got ${String(resolved[name])}. Remove it to use the default.`);
    }
  };
  positive('ttl');
  positive('lease');
  positive('maxResponseBytes');
  positive('purgeBatchSize');
  positive('storeTimeout');
  if (resolved.lease >= resolved.ttl) {
    throw new IdempotencyConfigurationError(`IdempotencyModule option "lease" (${resolved.lease} ms) must be shorter than "ttl" (${resolved.ttl} ms); lower the lease or raise the ttl.`);
  }
  if (!Number.isInteger(resolved.purgeInterval) || resolved.purgeInterval < 0) {
    throw new IdempotencyConfigurationError(`IdempotencyModule option "purgeInterval" must be 0 (off) or a positive number of ms; got ${String(resolved.purgeInterval)}.`);
  }
  if (!ISOLATION_LEVELS.includes(resolved.isolation)) {
    throw new IdempotencyConfigurationError(`IdempotencyModule option "isolation" must be one of ${ISOLATION_LEVELS.join(', ')}; got ${String(resolved.isolation)}.`);
  }
  resolved.excludeHeaders = resolved.excludeHeaders.map((name) => name.toLowerCase());
  return resolved;
}
