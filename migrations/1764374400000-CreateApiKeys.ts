import type { MigrationInterface, QueryRunner } from 'typeorm';

/** Creates the sample's `api_keys` table; the same shape as `ApiKeyEntity` (sample/keys/api-key.entity.ts). */
export class CreateApiKeys1764374400000 implements MigrationInterface {
  name = 'CreateApiKeys1764374400000';

  async up(queryRunner: QueryRunner): Promise<void> {
    await queryRunner.query(`
      CREATE TABLE "api_keys" (
        "id" uuid NOT NULL,
        "name" character varying(100) NOT NULL,
        "rate_limit_rpm" integer NOT NULL,
        "prefix" character varying(16) NOT NULL,
        "key_hash" character varying(64) NOT NULL,
        "created_at" TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT now(),
        "revoked_at" TIMESTAMP WITH TIME ZONE,
        CONSTRAINT "pk_api_keys" PRIMARY KEY ("id"),
        CONSTRAINT "uq_api_keys_key_hash" UNIQUE ("key_hash"),
        CONSTRAINT "chk_api_keys_name_length" CHECK (char_length("name") BETWEEN 1 AND 100),
        CONSTRAINT "chk_api_keys_rate_limit_rpm" CHECK ("rate_limit_rpm" BETWEEN 1 AND 100000)
      )`);
    // Lists page newest first by (created_at, id); this index serves both the order and the cursor.
    await queryRunner.query(`CREATE INDEX "idx_api_keys_created_at_id" ON "api_keys" ("created_at", "id")`);
  }

  async down(queryRunner: QueryRunner): Promise<void> {
    await queryRunner.query(`DROP TABLE "api_keys"`);
  }
}
