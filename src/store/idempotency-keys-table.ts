import type { QueryRunner } from 'typeorm';

/**
 * Creates `idempotency_keys` exactly as `IdempotencyKeyEntity` declares it; `partitionBy` (e.g.
 * `HASH ("api_key_id")`) makes it a partitioned table, whose partitions the caller then creates.
 */
export async function createIdempotencyKeysTable(queryRunner: QueryRunner, partitionBy?: string): Promise<void> {
  await queryRunner.query(`
      CREATE TABLE "idempotency_keys" (
        "api_key_id" text NOT NULL,
        "idem_key" character varying(255) NOT NULL,
        "fingerprint" character varying(64) NOT NULL,
        "fence" integer NOT NULL,
        "lease_expires_at" TIMESTAMP WITH TIME ZONE,
        "expires_at" TIMESTAMP WITH TIME ZONE NOT NULL,
        "created_at" TIMESTAMP WITH TIME ZONE NOT NULL,
        "completed_at" TIMESTAMP WITH TIME ZONE,
        "response_status" smallint,
        "response_headers" jsonb,
        "response_body" bytea,
        CONSTRAINT "pk_idempotency_keys" PRIMARY KEY ("api_key_id", "idem_key")
      )${partitionBy ? ` PARTITION BY ${partitionBy}` : ''}`);
  // On a partitioned table this index is created on every partition, present and future.
  await queryRunner.query(`CREATE INDEX "idx_idempotency_keys_expires_at" ON "idempotency_keys" ("expires_at")`);
}

/** Drops `idempotency_keys` with all its partitions. */
export async function dropIdempotencyKeysTable(queryRunner: QueryRunner): Promise<void> {
  await queryRunner.query(`DROP TABLE "idempotency_keys"`);
}
