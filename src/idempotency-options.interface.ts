import type { RecordEncryptionOptions, ResolvedEncryption } from './encryption/encryption-options';
import type { IdempotencyErrorDetails } from './idempotency.exceptions';
import type { IsolationLevel } from './store/idempotency.store';

/** Resolves the caller ("API key") that records are scoped to; `undefined` means unresolved. */
export type IdempotencyScopeResolver = (request: any) => string | undefined | Promise<string | undefined>;

/** Options of `IdempotencyModule.forRoot()`; every one is optional. */
export interface IdempotencyModuleOptions {
  /** How long a key is remembered, in milliseconds, from its first claim. @default 86_400_000 (24 h) */
  ttl?: number;
  /**
   * How long an in-flight claim is held without renewal before a retry may take it over, in ms;
   * shorter than `ttl`. @default 30_000, or half the `ttl` when that is shorter
   */
  lease?: number;
  /** Resolves the caller scope. @default SHA-256 hex of the `Authorization: Bearer` token */
  scope?: IdempotencyScopeResolver;
  /** What to do when the scope resolves to nothing: reject with 401, or run the handler without idempotency. @default 'reject' */
  onUnresolvedScope?: 'reject' | 'bypass';
  /** Status for a key reused with a different request (409 as Stripe and Patomic; 422 as the IETF draft). @default 409 */
  conflictStatus?: 409 | 422;
  /** Largest response body stored for replay, in bytes; larger answers are sent but not stored. @default 1_048_576 */
  maxResponseBytes?: number;
  /**
   * Response header telling the client when its key expires (an HTTP date), on first responses and
   * replays; `false` to leave it out. @default 'idempotency-expires-at'
   */
  expiresHeader?: string | false;
  /** Extra response headers that are neither stored nor replayed (lower case). @default ['x-request-id'] */
  excludeHeaders?: string[];
  /** Renders the module's errors; the default renders the Patomic envelope. */
  formatError?: (error: IdempotencyErrorDetails) => unknown;
  /** Builds the `docs_url` of an error code. @default code => `https://docs.patomic.dev/errors/<code-with-dashes>` */
  docsUrl?: (code: string) => string;
  /** Isolation level of transactional routes. @default 'READ COMMITTED' */
  isolation?: IsolationLevel;
  /** Interval of the scheduled purge of expired records, in ms, at most 2^31 − 1; 0 turns it off. @default 600_000 */
  purgeInterval?: number;
  /** Rows deleted per purge statement, so a purge never holds many row locks at once. @default 1_000 */
  purgeBatchSize?: number;
  /** Name of the host's TypeORM DataSource to use. @default the default DataSource */
  dataSource?: string;
  /**
   * Send the INSERTs, LOOKs and COMPLETEs that requests ask for in one turn of the event loop as one
   * statement over all their keys. Set false on Citus and other distributed tables: every statement
   * then targets one key (one shard). @default true
   */
  batchStatements?: boolean;
  /** Seal stored headers and bodies with AES-256-GCM under a key ring (README, "Security"). @default off */
  encryption?: RecordEncryptionOptions;
}

type ResolvedSeparately = 'dataSource' | 'formatError' | 'encryption';

/** `IdempotencyModuleOptions` with every default applied. */
export type ResolvedIdempotencyOptions = Required<Omit<IdempotencyModuleOptions, ResolvedSeparately>> & {
  dataSource?: string;
  formatError: (error: IdempotencyErrorDetails) => unknown;
  encryption?: ResolvedEncryption;
};

/** Per-route options of `@Idempotent()`. */
export interface IdempotentRouteOptions {
  /** Reject requests that carry no `Idempotency-Key` with 400 `missing_idempotency_key`. @default false */
  required?: boolean;
  /**
   * Commit the claim, the handler's writes through `@IdempotencyTransaction()` and the stored
   * response in one PostgreSQL transaction (exactly-once database side effects). @default false
   */
  transactional?: boolean;
  /** Isolation level of this route's transaction. @default the module's `isolation` */
  isolation?: IsolationLevel;
}

export type { IsolationLevel };
