import { type CallHandler, type ExecutionContext, Injectable, type NestInterceptor, RequestTimeoutException, type Type } from '@nestjs/common';
import { type Observable, TimeoutError, catchError, throwError, timeout } from 'rxjs';

/** The timeout interceptor of Nest's documentation: a 408 in the handler's place after `ms`. */
export function timeoutInterceptor(ms: number): Type<NestInterceptor> {
  @Injectable()
  class TimeoutInterceptor implements NestInterceptor {
    intercept(_context: ExecutionContext, next: CallHandler): Observable<unknown> {
      return next.handle().pipe(
        timeout(ms),
        catchError((error: unknown) => throwError(() => (error instanceof TimeoutError ? new RequestTimeoutException() : error))),
      );
    }
  }
  return TimeoutInterceptor;
}
