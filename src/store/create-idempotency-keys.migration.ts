import type { MigrationInterface, QueryRunner } from 'typeorm';

/** Creates the `idempotency_keys` table; the same shape as `IdempotencyKeyEntity`. */
export class CreateIdempotencyKeys1764288000000 implements MigrationInterface {
  name = 'CreateIdempotencyKeys1764288000000';

  async up(queryRunner: QueryRunner): Promise<void> {
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
      )`);
    await queryRunner.query(`CREATE INDEX "idx_idempotency_keys_expires_at" ON "idempotency_keys" ("expires_at")`);
  }

  async down(queryRunner: QueryRunner): Promise<void> {
    await queryRunner.query(`DROP TABLE "idempotency_keys"`);
  }
}
