import { SetMetadata, UseInterceptors, type CustomDecorator } from '@nestjs/common';
import { IdempotencyRouteInterceptor } from './idempotency-route.interceptor';
import { IDEMPOTENT_ROUTE_METADATA } from './idempotency.constants';
import type { IdempotentRouteOptions } from './idempotency-options.interface';
import { scheduleOpenApiDocumentation } from './openapi/openapi-metadata';

/**
 * Makes POST/PUT/PATCH/DELETE requests of a handler, or of every handler of a controller, safe to
 * retry with an `Idempotency-Key` header. A handler's options override its controller's.
 *
 * When the host uses `@nestjs/swagger`, its document shows, on each such route, the
 * `Idempotency-Key` header, the 400/401/409/503 answers of the module with their error envelope,
 * and the `idempotency-replayed` response header (see `openapi/openapi-metadata.ts`).
 *
 * @example
 * ```ts
 * @Post() @Idempotent({ required: true })
 * create(@Body() dto: CreateKeyDto) { ... }
 * ```
 */
export const Idempotent = (options: IdempotentRouteOptions = {}): CustomDecorator<string> => {
  const setMetadata = SetMetadata(IDEMPOTENT_ROUTE_METADATA, options);
  const bindInterceptor = UseInterceptors(IdempotencyRouteInterceptor);
  const decorator = (target: object, key?: string | symbol, descriptor?: PropertyDescriptor) => {
    // On a handler, `target` is the prototype; on a controller, the class.
    if (key !== undefined && descriptor) {
      scheduleOpenApiDocumentation(target.constructor);
      bindInterceptor(target, key, descriptor);
      return setMetadata(target, key, descriptor);
    }
    scheduleOpenApiDocumentation(target as Function);
    bindInterceptor(target as Function);
    return setMetadata(target as Function);
  };
  decorator.KEY = IDEMPOTENT_ROUTE_METADATA;
  return decorator as CustomDecorator<string>;
};
