import { SetMetadata, UseInterceptors, type CustomDecorator } from '@nestjs/common';
import { IdempotencyRouteInterceptor } from './idempotency-route.interceptor';
import { IDEMPOTENT_ROUTE_METADATA } from './idempotency.constants';
import type { IdempotentRouteOptions } from './idempotency-options.interface';

/**
 * Makes POST/PUT/PATCH/DELETE requests of a handler, or of every handler of a controller, safe to
 * retry with an `Idempotency-Key` header. A handler's options override its controller's.
 *
 * When the host uses `@nestjs/swagger`, its document shows, on each such route, the key's header,
 * the 400/401/409/503 answers of the module with their error schema, and the replayed header, as
 * the module's options name them (see `openapi/openapi-metadata.ts`).
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
      bindInterceptor(target, key, descriptor);
      return setMetadata(target, key, descriptor);
    }
    bindInterceptor(target as Function);
    return setMetadata(target as Function);
  };
  decorator.KEY = IDEMPOTENT_ROUTE_METADATA;
  return decorator as CustomDecorator<string>;
};
