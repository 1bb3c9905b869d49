// NestJS 12 ships as ESM only, and Jest's own module loader cannot require() ESM on Node 20,
// so the suite runs in Jest's native ESM mode (node --experimental-vm-modules, see package.json).
module.exports = {
  testEnvironment: 'node',
  extensionsToTreatAsEsm: ['.ts'],
  transform: { '^.+\\.ts$': ['ts-jest', { useESM: true, tsconfig: 'tsconfig.jest.json' }] },
  moduleFileExtensions: ['ts', 'js', 'json'],
  testMatch: ['<rootDir>/src/**/*.spec.ts', '<rootDir>/test/**/*.e2e-spec.ts'],
  // Needs Debian's pgbouncer: `npm run test:pgbouncer` runs it (jest.pgbouncer.config.js).
  testPathIgnorePatterns: ['/node_modules/', '<rootDir>/test/pgbouncer-faults.e2e-spec.ts'],
  globalSetup: '<rootDir>/test/global-setup.ts',
  globalTeardown: '<rootDir>/test/global-teardown.ts',
  testTimeout: 30000,
};
