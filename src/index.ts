export { IdempotencyModule } from './idempotency.module';
export type { IdempotencyModuleExtras } from './idempotency.module-definition';
export { Idempotent } from './idempotent.decorator';
export { IdempotencyTransaction } from './transaction/idempotency-transaction.decorator';
export { IdempotencyService } from './idempotency.service';
export type { IdempotencyModuleOptions, IdempotentRouteOptions, IdempotencyScopeResolver, IsolationLevel } from './idempotency-options.interface';
export {
  IdempotencyErrorCode,
  IdempotencyException,
  IdempotencyConfigurationError,
  formatErrorEnvelope,
  type IdempotencyErrorBody,
  type IdempotencyErrorDetails,
} from './idempotency.exceptions';
export { formatProblemDetails, type IdempotencyProblemDetails } from './problem-details';
export { bearerTokenScope } from './idempotency-scope';
export type {
  CallerSecret,
  CallerSecretResolver,
  RecordEncryptionKey,
  RecordEncryptionOptions,
} from './encryption/encryption-options';
export { IDEMPOTENCY_CHANNELS, type IdempotencyEvent, type IdempotencyEventName } from './idempotency-events';
export { IdempotencyKeyEntity } from './store/idempotency-key.entity';
export { CreateIdempotencyKeys1764288000000 } from './store/create-idempotency-keys.migration';
export { CreatePartitionedIdempotencyKeys1764288000000 } from './store/create-partitioned-idempotency-keys.migration';
export { IdempotencyStore } from './store/idempotency.store';
export type { ClaimOutcome, ClaimRequest, RecordId, RecordOwner, StoreTransaction, StoredResponse } from './store/idempotency.store';
