import { Inject, Injectable, Logger } from '@nestjs/common';
import { DiscoveryService } from '@nestjs/core';
import type { ResolvedIdempotencyOptions } from '../idempotency-options.interface';
import { RESOLVED_IDEMPOTENCY_OPTIONS } from '../idempotency-options';
import { errorMessage } from '../log-format';
import { documentController } from './openapi-metadata';

/**
 * Documents the application's idempotent routes for @nestjs/swagger with the module's options. It
 * does so while it is constructed: a document is generated from a created application, usually
 * before its lifecycle hooks run (see openapi-metadata.ts).
 */
@Injectable()
export class OpenApiDocumentation {
  constructor(discovery: DiscoveryService, @Inject(RESOLVED_IDEMPOTENCY_OPTIONS) options: ResolvedIdempotencyOptions) {
    for (const { metatype } of discovery.getControllers()) {
      if (!metatype) continue;
      try {
        documentController(metatype, options);
      } catch (error) {
        // Documentation must never break the application that declares the routes.
        new Logger('Idempotency').warn(`OpenAPI documentation of ${metatype.name} failed: ${errorMessage(error)}`);
      }
    }
  }
}
