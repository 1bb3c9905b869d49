// The nestjs-cls entry point, separate from the module's (src/index.ts): only it imports the
// optional peers nestjs-cls and @nestjs-cls/transactional.
export { IdempotencyClsModule } from './idempotency-cls.module';
export type { IdempotencyClsOptions } from './cls-transaction-scope';
