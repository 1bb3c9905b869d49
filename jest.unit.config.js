// The pure units' specs without the suite's globalSetup, so no PostgreSQL is started: what
// `npm run test:unit` and Stryker run, fast enough to be run once per mutant.
const { globalSetup, globalTeardown, ...suite } = require('./jest.config.js');

module.exports = {
  ...suite,
  testMatch: [
    '<rootDir>/src/fingerprint.spec.ts',
    '<rootDir>/src/request-key.spec.ts',
    '<rootDir>/src/idempotency-options.spec.ts',
    '<rootDir>/src/option-defaults.spec.ts',
    '<rootDir>/src/encryption/encryption-options.spec.ts',
    '<rootDir>/src/idempotency.exceptions.spec.ts',
    '<rootDir>/src/idempotency-errors.spec.ts',
    '<rootDir>/src/store/statement-batcher.spec.ts',
    '<rootDir>/src/store/recorded-key-rate.spec.ts',
  ],
  // A mutant that leaves a promise pending fails its test in 2 s, well within Stryker's timeout,
  // rather than timing out the whole run of its tests (and their worker, which is then restarted).
  testTimeout: 2000,
};
