import type { IdempotencyModuleOptions } from '../../src';

/**
 * Store options of this run: behind a transaction pooler (`npm run test:pgbouncer`, whose
 * globalSetup sets PGBOUNCER_POOL_MODE) the store sends unnamed statements.
 */
export const runStoreOptions: Pick<IdempotencyModuleOptions, 'preparedStatements'> = {
  preparedStatements: process.env.PGBOUNCER_POOL_MODE !== 'transaction',
};
