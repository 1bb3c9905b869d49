import { DataSource, type MigrationInterface } from 'typeorm';
import { CreateIdempotencyKeys1764288000000 } from '../../src';
import type { ClaimOutcome, RecordOwner } from '../../src/store/idempotency.store';

/** An initialised DataSource on the database at `url`, its table created by `migration`. */
export async function migratedDataSource(
  url: string,
  migration: new () => MigrationInterface = CreateIdempotencyKeys1764288000000,
): Promise<DataSource> {
  return new DataSource({ type: 'postgres', url, migrations: [migration], migrationsRun: true }).initialize();
}

/** The owner a claim outcome carries; fails the test when the key was not claimed. */
export function claimedOwner(outcome: ClaimOutcome): RecordOwner {
  if (outcome.kind !== 'claimed') throw new Error(`expected a claim, got ${outcome.kind}`);
  return outcome.owner;
}
