import { Injectable, type OnModuleInit } from '@nestjs/common';
import { DiscoveryService, MetadataScanner, Reflector } from '@nestjs/core';
import { IDEMPOTENT_ROUTE_METADATA } from '../idempotency.constants';
import { IdempotencyConfigurationError } from '../idempotency.exceptions';
import type { IdempotentRouteOptions } from '../idempotency-options.interface';
import { USES_TRANSACTION_METADATA } from './idempotency-transaction.decorator';

/** Fails the bootstrap when `@IdempotencyTransaction()` is used on a route that is not transactional. */
@Injectable()
export class TransactionalRoutesValidator implements OnModuleInit {
  constructor(
    private readonly discovery: DiscoveryService,
    private readonly scanner: MetadataScanner,
    private readonly reflector: Reflector,
  ) {}

  onModuleInit(): void {
    for (const wrapper of this.discovery.getControllers()) {
      const controller = wrapper.metatype as (new (...args: unknown[]) => unknown) | undefined;
      if (!controller) continue;
      for (const name of this.scanner.getAllMethodNames(controller.prototype)) {
        const handler = controller.prototype[name];
        if (!Reflect.getMetadata(USES_TRANSACTION_METADATA, handler)) continue;
        const route = this.reflector.getAllAndOverride<IdempotentRouteOptions | undefined>(IDEMPOTENT_ROUTE_METADATA, [handler, controller]);
        if (!route?.transactional) {
          throw new IdempotencyConfigurationError(
            `${controller.name}.${name}() takes @IdempotencyTransaction() but its route is not transactional, so there is no transaction to give it. Mark it @Idempotent({ transactional: true }) or remove the parameter.`,
          );
        }
      }
    }
  }
}
