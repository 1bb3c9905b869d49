import { resolveEncryption } from './encryption/encryption-options';
import { IDEMPOTENCY_KEY_HEADER, REPLAYED_HEADER } from './idempotency.constants';
import { IdempotencyConfigurationError, defaultDocsUrl, formatErrorEnvelope } from './idempotency.exceptions';
import type { IdempotencyModuleOptions, ResolvedIdempotencyOptions } from './idempotency-options.interface';
import { bearerTokenScope } from './idempotency-scope';
import type { IsolationLevel } from './store/idempotency.store';
import { resolveWireOptions } from './wire-options';
import { DEFAULT_STORE_TIMEOUT } from './store/store-timeout';

/** Injection token of the options with their defaults applied. */
export const RESOLVED_IDEMPOTENCY_OPTIONS = Symbol('idempotency:resolved-options');

const DEFAULTS: Omit<ResolvedIdempotencyOptions, 'dataSource' | 'lease' | 'encryption'> = {
  ttl: 24 * 60 * 60 * 1000,
  scope: bearerTokenScope,
  onUnresolvedScope: 'reject',
  conflictStatus: 409,
  maxResponseBytes: 1024 * 1024,
  expiresHeader: 'idempotency-expires-at',
  excludeHeaders: ['x-request-id'],
  errorFormat: 'patomic',
  header: IDEMPOTENCY_KEY_HEADER,
  replayedHeader: REPLAYED_HEADER,
  inFlight: 'reject',
  inFlightWait: 10_000,
  inFlightWaiters: 1000,
  formatError: formatErrorEnvelope,
  docsUrl: defaultDocsUrl,
  isolation: 'READ COMMITTED',
  purgeInterval: 10 * 60 * 1000,
  purgeBatchSize: 1000,
  preparedStatements: true,
  storeTimeout: DEFAULT_STORE_TIMEOUT,
  batchStatements: true,
};

/** The lease when none is set, unless half the TTL is shorter. */
const DEFAULT_LEASE = 30_000;

/** Node runs a timer with a longer delay after 1 ms instead. */
const LONGEST_TIMER = 2 ** 31 - 1;

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
  if (resolved.lease === undefined) {
    if (resolved.ttl < 2) {
      const problem = `IdempotencyModule option "ttl" (${resolved.ttl} ms) leaves no room for a lease`;
      throw new IdempotencyConfigurationError(`${problem}, which must be shorter; raise the ttl.`);
    }
    resolved.lease = Math.min(DEFAULT_LEASE, Math.floor(resolved.ttl / 2));
  }
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
  if (resolved.purgeInterval > LONGEST_TIMER) {
    throw new IdempotencyConfigurationError(
      `IdempotencyModule option "purgeInterval" must be at most ${LONGEST_TIMER} ms (about 24.8 days), ` +
        `the longest delay a Node timer keeps; got ${resolved.purgeInterval}. ` +
        'Lower it, or set 0 and call IdempotencyService.purgeExpired() on a schedule of your own.',
    );
  }
  if (!ISOLATION_LEVELS.includes(resolved.isolation)) {
    throw new IdempotencyConfigurationError(`IdempotencyModule option "isolation" must be one of ${ISOLATION_LEVELS.join(', ')}; got ${String(resolved.isolation)}.`);
  }
  resolved.excludeHeaders = resolved.excludeHeaders.map((name) => name.toLowerCase());
  resolveWireOptions(resolved, options);
  resolved.encryption = resolveEncryption(options.encryption);
  return resolved;
}
