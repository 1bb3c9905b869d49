import { Column, Entity, Index, PrimaryColumn } from 'typeorm';

/**
 * One idempotency record. The primary key `(api_key_id, idem_key)` is the unique constraint every
 * claim relies on. Declared exactly as the migration creates it, so `synchronize` and
 * `migration:run` give the same table.
 */
@Entity({ name: 'idempotency_keys' })
@Index('idx_idempotency_keys_expires_at', ['expiresAt'])
export class IdempotencyKeyEntity {
  /** The caller scope, e.g. the SHA-256 hex of an API key; never the raw token. */
  @PrimaryColumn({ name: 'api_key_id', type: 'text', primaryKeyConstraintName: 'pk_idempotency_keys' })
  apiKeyId: string;

  @PrimaryColumn({ name: 'idem_key', type: 'varchar', length: 255, primaryKeyConstraintName: 'pk_idempotency_keys' })
  idemKey: string;

  /** SHA-256 hex of method, URL and canonical body of the request that claimed the key. */
  @Column({ name: 'fingerprint', type: 'varchar', length: 64 })
  fingerprint: string;

  /** Fencing token: bumped on every takeover and release, checked by renew/complete/release. */
  @Column({ name: 'fence', type: 'integer' })
  fence: number;

  /** Until when an in-flight claim is held; null once completed. */
  @Column({ name: 'lease_expires_at', type: 'timestamptz', nullable: true })
  leaseExpiresAt: Date | null;

  @Column({ name: 'expires_at', type: 'timestamptz' })
  expiresAt: Date;

  @Column({ name: 'created_at', type: 'timestamptz' })
  createdAt: Date;

  @Column({ name: 'completed_at', type: 'timestamptz', nullable: true })
  completedAt: Date | null;

  /** Status of the stored response; null while in flight. */
  @Column({ name: 'response_status', type: 'smallint', nullable: true })
  responseStatus: number | null;

  @Column({ name: 'response_headers', type: 'jsonb', nullable: true })
  responseHeaders: Record<string, string | string[]> | null;

  /** Body bytes as sent; null while in flight or when the response was over the size cap. */
  @Column({ name: 'response_body', type: 'bytea', nullable: true })
  responseBody: Buffer | null;
}
