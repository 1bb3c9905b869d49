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
  /** Request header that carries the key, matched case-insensitively. @default 'Idempotency-Key' */
  header?: string;
  /**
   * Response header set to `true` on replayed answers (Stripe's clients read `Idempotent-Replayed`);
   * `false` for none. @default 'idempotency-replayed'
   */
  replayedHeader?: string | false;
  /**
   * A duplicate that arrives while the first request with its key still runs: answered 409
   * `idempotency_key_in_use` at once (`'reject'`), or held until the first one's answer is stored
   * and then answered with its replay (`'wait'`; it runs itself when the first one released the
   * key, and gets the 409 when `inFlightWait` runs out). @default 'reject'
   */
  inFlight?: 'reject' | 'wait';
  /** How long a duplicate waits at most with `inFlight: 'wait'`, in ms. @default 10_000 */
  inFlightWait?: number;
  /** How many duplicates wait at once per instance with `inFlight: 'wait'`; beyond it, 409 at once. @default 1000 */
  inFlightWaiters?: number;
  /** Extra response headers that are neither stored nor replayed (lower case). @default ['x-request-id'] */
  excludeHeaders?: string[];
  /**
   * How the module's errors are rendered: the Patomic envelope (`application/json`), or RFC 9457
   * problem details (`application/problem+json`); also what the OpenAPI document shows. @default 'patomic'
   */
  errorFormat?: 'patomic' | 'problem+json';
  /** Renders the module's errors, in place of the `errorFormat` rendering (the media type stays the format's). */
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
  /**
   * Send the store's statements as named prepared statements, which PostgreSQL plans once per
   * connection. Set false behind a transaction pooler (PgBouncer `pool_mode = transaction`), whose
   * server connections do not keep a client's prepared statements: every statement then goes
   * unnamed. Left true there, the store turns to unnamed statements by itself, with a warning, at
   * the first statement the pooler loses (that request may answer 503). @default true
   */
  preparedStatements?: boolean;
  /**
   * Longest wait for the database on each step of a request (a pool connection, a statement, the
   * start or commit of a transaction), in ms; past it the request answers 503
   * `idempotency_store_unavailable` and the connection is closed. @default 5_000
   */
  storeTimeout?: number;
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
