import type { EntityManager } from 'typeorm';

/**
 * Makes a transactional route's transaction the current one for a transaction library of the
 * host's, around the handler (see IdempotencyClsModule for `@nestjs-cls/transactional`).
 */
export interface TransactionScope {
  /** Calls `work` (which starts the handler) with `manager` as the current transaction. */
  run<T>(manager: EntityManager, work: () => T): T;
}

/** Injection token of the TransactionScope, when the host provides one. */
export const TRANSACTION_SCOPE = Symbol('idempotency:transaction-scope');
