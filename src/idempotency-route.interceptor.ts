import { Injectable, type CallHandler, type ExecutionContext, type NestInterceptor, type OnModuleInit } from '@nestjs/common';
import { ModuleRef } from '@nestjs/core';
import type { Observable } from 'rxjs';
import { IdempotencyConfigurationError } from './idempotency.exceptions';
import { IdempotencyInterceptor } from './idempotency.interceptor';

// The requests the module has already taken in hand. A WeakSet, not a property on the request:
// adding a property to Express's request (whose prototype Express replaced) costs microseconds.
const intercepted = new WeakSet<object>();

/**
 * What `@Idempotent()` binds to its routes. Binding per route, instead of one global interceptor,
 * keeps routes without the decorator out of any interceptor chain: they cost nothing. Nest builds
 * this class in the module of each controller, where the module's own providers may not be
 * visible, so it only asks for ModuleRef and forwards to the module's interceptor.
 */
@Injectable()
export class IdempotencyRouteInterceptor implements NestInterceptor, OnModuleInit {
  private target!: IdempotencyInterceptor;

  constructor(private readonly moduleRef: ModuleRef) {}

  onModuleInit(): void {
    try {
      this.target = this.moduleRef.get(IdempotencyInterceptor, { strict: false });
    } catch {
      throw new IdempotencyConfigurationError(
        'A route is marked @Idempotent() but IdempotencyModule is not part of the application. Add IdempotencyModule.forRoot() to the imports of the root module.',
      );
    }
  }

  intercept(context: ExecutionContext, next: CallHandler): Observable<unknown> | Promise<Observable<unknown>> {
    if (context.getType() !== 'http') return next.handle();
    // @Idempotent() on a controller and on one of its handlers binds this twice to that route.
    const request = context.getArgByIndex(0);
    if (intercepted.has(request)) return next.handle();
    intercepted.add(request);
    return this.target.intercept(context, next);
  }
}
