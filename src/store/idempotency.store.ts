import type { EntityManager } from 'typeorm';

/** Identifies one record: a caller scope and the key that caller sent. */
export interface RecordId {
  scope: string;
  key: string;
}

/** Proof of ownership of an in-flight record: its fencing token at the time of the claim. */
export interface RecordOwner extends RecordId {
  fence: number;
}

/** What a claim asks for. */
export interface ClaimRequest extends RecordId {
  fingerprint: string;
  /** Lease of the in-flight claim, in ms. */
  lease: number;
  /** Lifetime of the record from this claim, in ms. */
  ttl: number;
}

/** A response kept for replay. */
export interface StoredResponse {
  status: number;
  headers: Record<string, string | string[]>;
  /** `null` when the body was over the size cap: the request completed but cannot be replayed. */
  body: Buffer | null;
}

/** The result of a claim. */
export type ClaimOutcome =
  | { kind: 'claimed'; owner: RecordOwner; expiresAt: Date }
  | { kind: 'completed'; fingerprint: string; response: StoredResponse }
  | { kind: 'in_flight'; fingerprint: string | null };

/** Isolation levels a transactional route may ask for. */
export type IsolationLevel = 'READ COMMITTED' | 'REPEATABLE READ' | 'SERIALIZABLE';

/**
 * One database transaction in which a claim, the handler's own writes and the stored response
 * commit together (transactional mode).
 */
export interface StoreTransaction {
  /** The transaction as a TypeORM EntityManager, handed to the handler. */
  readonly manager: EntityManager;
  /**
   * Claims the key inside the transaction. A duplicate whose twin is still in flight is answered
   * at once (`in_flight`) instead of waiting on the twin's row lock with a connection held.
   */
  claim(request: ClaimRequest): Promise<ClaimOutcome>;
  /** Marks the point the handler's writes start from. */
  savepoint(): Promise<void>;
  /** Undoes the handler's writes, keeping the claim. */
  rollbackToSavepoint(): Promise<void>;
  /** Stores the response of the claim inside the transaction. */
  complete(owner: RecordOwner, response: StoredResponse): Promise<void>;
  /** Commits and gives the connection back; throws when the commit failed. */
  commit(): Promise<void>;
  /** Ends the transaction at once while the handler may still use it: nothing it sends commits; never throws. */
  abandon(): Promise<void>;
  /** Rolls back and gives the connection back; never throws. */
  rollback(): Promise<void>;
}

/**
 * Where idempotency records live. An abstract class so it can serve as its own DI token: a host
 * may provide another implementation, and the same contract tests can run against each.
 */
export abstract class IdempotencyStore {
  /** Atomically takes the key (new, expired, released or abandoned) or reports who holds it. */
  abstract claim(request: ClaimRequest): Promise<ClaimOutcome>;
  /** Extends the lease of a claim still owned; `false` when the claim was lost. */
  abstract renew(owner: RecordOwner, lease: number): Promise<boolean>;
  /** Stores the final response of a claim still owned; `false` when the claim was lost. */
  abstract complete(owner: RecordOwner, response: StoredResponse): Promise<boolean>;
  /** Frees a claim still owned so the next request with the key runs again. */
  abstract release(owner: RecordOwner): Promise<boolean>;
  /** Deletes expired records that no live claim holds, in batches; returns how many. */
  abstract purgeExpired(options: { batchSize: number; skipIfBusy: boolean }): Promise<number>;
  /** Opens a transaction for a transactional route. */
  abstract begin(isolation: IsolationLevel): Promise<StoreTransaction>;
}
