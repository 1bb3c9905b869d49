import type { MigrationInterface, QueryRunner } from 'typeorm';
import { createIdempotencyKeysTable, dropIdempotencyKeysTable } from './idempotency-keys-table';

/**
 * Creates `idempotency_keys` hash-partitioned by `api_key_id`, in place of
 * `CreateIdempotencyKeys1764288000000` (same columns, keys and index; see docs/partitioning.md).
 * Eight partitions; `withPartitions(n)` gives the same migration with another count.
 */
export class CreatePartitionedIdempotencyKeys1764288000000 implements MigrationInterface {
  name = 'CreatePartitionedIdempotencyKeys1764288000000';

  /** How many hash partitions `up()` creates. */
  protected readonly partitions: number = 8;

  /** This migration with `partitions` hash partitions instead of eight. */
  static withPartitions(partitions: number): new () => CreatePartitionedIdempotencyKeys1764288000000 {
    if (!Number.isInteger(partitions) || partitions < 1) {
      throw new Error(`The partition count must be a positive integer, not ${partitions}.`);
    }
    return class extends CreatePartitionedIdempotencyKeys1764288000000 {
      protected override readonly partitions = partitions;
    };
  }

  async up(queryRunner: QueryRunner): Promise<void> {
    await createIdempotencyKeysTable(queryRunner, `HASH ("api_key_id")`);
    for (let remainder = 0; remainder < this.partitions; remainder++) {
      await queryRunner.query(
        `CREATE TABLE "idempotency_keys_p${remainder}" PARTITION OF "idempotency_keys"
         FOR VALUES WITH (MODULUS ${this.partitions}, REMAINDER ${remainder})`,
      );
    }
  }

  async down(queryRunner: QueryRunner): Promise<void> {
    await dropIdempotencyKeysTable(queryRunner);
  }
}
