// @ts-check
/** @type {import('@stryker-mutator/api/core').PartialStrykerOptions} */
export default {
  mutate: [
    'src/fingerprint.ts',
    'src/request-key.ts',
    'src/idempotency-options.ts',
    'src/idempotency.exceptions.ts',
    'src/idempotency-errors.ts',
    'src/store/statement-batcher.ts',
    'src/store/recorded-key-rate.ts',
  ],
  testRunner: 'jest',
  jest: { configFile: 'jest.unit.config.js' },
  // The suite runs in Jest's native ESM mode (see jest.config.js), in Stryker's workers too.
  testRunnerNodeArgs: ['--experimental-vm-modules', '--disable-warning=ExperimentalWarning'],
  coverageAnalysis: 'perTest',
  concurrency: 2,
  reporters: ['clear-text', 'progress', 'html'],
  thresholds: { high: 90, low: 80, break: 0 },
};
