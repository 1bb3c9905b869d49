import { createParamDecorator, type ExecutionContext } from '@nestjs/common';
import type { EntityManager } from 'typeorm';

/** Where the interceptor leaves each request's transaction for `@IdempotencyTransaction()`. */
export const requestTransactions = new WeakMap<object, EntityManager>();

/** Marks a handler that takes the transaction, so bootstrap can check its route is transactional. */
export const USES_TRANSACTION_METADATA = 'idempotency:uses-transaction';

const injectTransaction = createParamDecorator((_data: unknown, context: ExecutionContext) => {
  return requestTransactions.get(context.switchToHttp().getRequest());
});

/**
 * Injects the request's transaction, a TypeORM `EntityManager`, into a handler marked
 * `@Idempotent({ transactional: true })`: what the handler writes through it commits together
 * with the stored response, or not at all.
 *
 * @example
 * ```ts
 * @Post() @Idempotent({ transactional: true })
 * create(@Body() dto: CreateKeyDto, @IdempotencyTransaction() manager: EntityManager) { ... }
 * ```
 */
export function IdempotencyTransaction(): ParameterDecorator {
  return (target, propertyKey, index) => {
    if (propertyKey !== undefined) {
      Reflect.defineMetadata(USES_TRANSACTION_METADATA, true, (target as Record<string | symbol, object>)[propertyKey]);
    }
    injectTransaction()(target, propertyKey, index);
  };
}
