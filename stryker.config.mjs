// @ts-check
/** @type {import('@stryker-mutator/api/core').PartialStrykerOptions} */
export default {
  mutate: [
    'src/fingerprint.ts',
    'src/request-key.ts',
    'src/idempotency-options.ts',
    'src/encryption/encryption-options.ts',
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
  // Every test here takes milliseconds; what exceeds this loops forever. Each timeout costs its worker a restart.
  timeoutMS: 2500,
  reporters: ['clear-text', 'progress', 'html', 'json'],
  // break: just under the score reached, so that a drop (a new survivor) fails the run.
  thresholds: { high: 97, low: 95, break: 97.2 },
};
