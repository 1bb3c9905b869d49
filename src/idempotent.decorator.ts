import { SetMetadata } from '@nestjs/common';
import { IDEMPOTENT_ROUTE_METADATA } from './idempotency.constants';
import type { IdempotentRouteOptions } from './idempotency-options.interface';

/**
 * Makes POST/PUT/PATCH/DELETE requests of a handler, or of every handler of a controller, safe to
 * retry with an `Idempotency-Key` header. A handler's options override its controller's.
 *
 * @example
 * ```ts
 * @Post() @Idempotent({ required: true })
 * create(@Body() dto: CreateKeyDto) { ... }
 * ```
 */
export const Idempotent = (options: IdempotentRouteOptions = {}) => SetMetadata(IDEMPOTENT_ROUTE_METADATA, options);
