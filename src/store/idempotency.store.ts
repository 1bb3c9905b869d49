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
  | { kind: 'completed'; fingerprint: string; response: StoredResponse; expiresAt: Date }
  | { kind: 'in_flight'; fingerprint: string; expiresAt: Date };

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
}
