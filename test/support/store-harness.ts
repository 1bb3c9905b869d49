import { DataSource, type MigrationInterface } from 'typeorm';
import type { ClaimOutcome, RecordOwner } from '../../src/store/idempotency.store';
import { runTableMigration } from './test-table';

/** An initialised DataSource on the database at `url`, its table created by `migration` (the run's by default). */
export async function migratedDataSource(
  url: string,
  migration: new () => MigrationInterface = runTableMigration,
): Promise<DataSource> {
  return new DataSource({ type: 'postgres', url, migrations: [migration], migrationsRun: true }).initialize();
}

/** The owner a claim outcome carries; fails the test when the key was not claimed. */
export function claimedOwner(outcome: ClaimOutcome): RecordOwner {
  if (outcome.kind !== 'claimed') throw new Error(`expected a claim, got ${outcome.kind}`);
  return outcome.owner;
}
