// `npm run test:partitioned`: the wire, records and purge suites again, on an idempotency_keys table
// hash-partitioned by api_key_id into eight (test/support/test-table.ts), with the partition specs.
// Jest starts its workers with a copy of this process's environment.
process.env.IDEMPOTENCY_TEST_TABLE = 'partitioned';

module.exports = {
  ...require('./jest.config.js'),
  testMatch: [
    '<rootDir>/test/wire.e2e-spec.ts',
    '<rootDir>/test/records.e2e-spec.ts',
    '<rootDir>/test/purge.e2e-spec.ts',
    '<rootDir>/test/partitioned.e2e-spec.ts',
    '<rootDir>/test/partition-pruning.e2e-spec.ts',
  ],
};
