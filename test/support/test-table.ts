import type { MigrationInterface } from 'typeorm';
import { CreateIdempotencyKeys1764288000000, CreatePartitionedIdempotencyKeys1764288000000 } from '../../src';

const TABLES: Record<string, new () => MigrationInterface> = {
  plain: CreateIdempotencyKeys1764288000000,
  partitioned: CreatePartitionedIdempotencyKeys1764288000000,
};

const table = process.env.IDEMPOTENCY_TEST_TABLE ?? 'plain';
if (!TABLES[table]) {
  throw new Error(`IDEMPOTENCY_TEST_TABLE must be one of ${Object.keys(TABLES).join(', ')}; got "${table}".`);
}

/**
 * The migration that creates the table of this run: the plain one, or with
 * IDEMPOTENCY_TEST_TABLE=partitioned (`npm run test:partitioned`) the one hash-partitioned into eight.
 */
export const runTableMigration: new () => MigrationInterface = TABLES[table];
