import type { MigrationInterface, QueryRunner } from 'typeorm';
import { createIdempotencyKeysTable, dropIdempotencyKeysTable } from './idempotency-keys-table';

/** Creates the `idempotency_keys` table; the same shape as `IdempotencyKeyEntity`. */
export class CreateIdempotencyKeys1764288000000 implements MigrationInterface {
  name = 'CreateIdempotencyKeys1764288000000';

  async up(queryRunner: QueryRunner): Promise<void> {
    await createIdempotencyKeysTable(queryRunner);
  }

  async down(queryRunner: QueryRunner): Promise<void> {
    await dropIdempotencyKeysTable(queryRunner);
  }
}
