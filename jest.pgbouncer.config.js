// `npm run test:pgbouncer`: the suites whose subject is the database connection, run through a
// real PgBouncer (test/pgbouncer-global-setup.ts) instead of straight to PostgreSQL.
const base = require('./jest.config');

module.exports = {
  ...base,
  testMatch: [
    'wire',
    'concurrency',
    'transactional',
    'outage',
    'purge',
    'pgbouncer-faults',
    'in-flight-wait',
    'pipeline',
  ].map((suite) => `<rootDir>/test/${suite}.e2e-spec.ts`),
  testPathIgnorePatterns: ['/node_modules/'],
  globalSetup: '<rootDir>/test/pgbouncer-global-setup.ts',
  globalTeardown: '<rootDir>/test/pgbouncer-global-teardown.ts',
};
