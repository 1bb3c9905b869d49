import { Inject, Injectable, Logger, type CallHandler, type ExecutionContext, type NestInterceptor } from '@nestjs/common';
import { Reflector } from '@nestjs/core';
import { createHash } from 'node:crypto';
import { type Observable, finalize, of } from 'rxjs';
import { captureResponse, replayResponse, type CapturedResponse } from './capture/response-capture';
import { toHttpExchange, type HttpExchange } from './capture/http-exchange';
import { fingerprintRequest } from './fingerprint';
import { IDEMPOTENT_METHODS, IDEMPOTENT_ROUTE_METADATA, REPLAYED_HEADER, UNSTORED_HEADERS } from './idempotency.constants';
import { IdempotencyErrorCode, IdempotencyException, describeError } from './idempotency.exceptions';
import type { IdempotentRouteOptions, ResolvedIdempotencyOptions } from './idempotency-options.interface';
import { RESOLVED_IDEMPOTENCY_OPTIONS } from './idempotency-options';
import { readRequestKey } from './request-key';
import { IdempotencyStore, type RecordOwner, type StoredResponse } from './store/idempotency.store';

/** Seconds a client is told to wait before retrying a key that is busy or a store that is down. */
const RETRY_AFTER_SECONDS = 1;

/**
 * The one decision point of the module: on a route marked `@Idempotent()` it checks the key, then
 * the scope, then claims the key, and either runs the handler (capturing its response for the
 * record) or answers from the record. Routes not marked pass straight through.
 */
@Injectable()
export class IdempotencyInterceptor implements NestInterceptor {
  private readonly logger = new Logger('Idempotency');
  private readonly routes = new WeakMap<Function, IdempotentRouteOptions | null>();
  private readonly keptHeaders: ReadonlySet<string>;

  constructor(
    private readonly reflector: Reflector,
    private readonly store: IdempotencyStore,
    @Inject(RESOLVED_IDEMPOTENCY_OPTIONS) private readonly options: ResolvedIdempotencyOptions,
  ) {
    this.keptHeaders = new Set([...UNSTORED_HEADERS, ...options.excludeHeaders]);
  }

  async intercept(context: ExecutionContext, next: CallHandler): Promise<Observable<unknown>> {
    const route = context.getType() === 'http' ? this.routeOptions(context) : null;
    if (!route) return next.handle();
    const http = context.switchToHttp();
    const exchange = toHttpExchange(http.getRequest(), http.getResponse());
    if (!IDEMPOTENT_METHODS.has(exchange.method)) return next.handle();

    const requestKey = readRequestKey(exchange.request.rawHeaders);
    if (requestKey.kind === 'invalid') this.fail(IdempotencyErrorCode.InvalidKey, exchange);
    if (requestKey.kind === 'absent') {
      if (route.required) this.fail(IdempotencyErrorCode.MissingKey, exchange);
      return next.handle();
    }
    const scope = await this.options.scope(http.getRequest());
    if (scope === undefined || scope === '') {
      if (this.options.onUnresolvedScope === 'bypass') return next.handle();
      this.fail(IdempotencyErrorCode.ScopeUnresolved, exchange);
    }

    const fingerprint = fingerprintRequest(exchange);
    const outcome = await this.store
      .claim({ scope, key: requestKey.key, fingerprint, lease: this.options.lease, ttl: this.options.ttl })
      .catch((error: unknown) => {
        this.logger.error(`Claim failed for key ${keyHash(scope, requestKey.key)}: ${describe(error)}`);
        return this.fail(IdempotencyErrorCode.StoreUnavailable, exchange, true);
      });

    if (outcome.kind !== 'claimed' && outcome.fingerprint !== fingerprint) {
      this.fail(IdempotencyErrorCode.KeyConflict, exchange, false, this.options.conflictStatus);
    }
    switch (outcome.kind) {
      case 'in_flight':
        return this.fail(IdempotencyErrorCode.KeyInUse, exchange, true);
      case 'completed':
        if (outcome.response.body === null) this.fail(IdempotencyErrorCode.ResponseNotStored, exchange);
        replayResponse(exchange.response, outcome.response as Required<StoredResponse> & { body: Buffer }, this.keptHeaders, {
          [REPLAYED_HEADER]: 'true',
        });
        return of(undefined);
      case 'claimed':
        return this.runClaimed(exchange, outcome.owner, next);
    }
  }

  /**
   * Runs the handler under a claim: the lease is renewed while it runs, and the captured response
   * is stored (or, for a 5xx, the claim released) before the response leaves.
   */
  private runClaimed(exchange: HttpExchange, owner: RecordOwner, next: CallHandler): Observable<unknown> {
    const hash = keyHash(owner.scope, owner.key);
    let finished = false;
    let handlerSettled = false;
    let connectionClosed = false;

    const renewal = setInterval(() => {
      this.store.renew(owner, this.options.lease).then(
        (owned) => {
          if (!owned) {
            clearInterval(renewal);
            this.logger.warn(`Lease lost for key ${hash}: another request took it over; this response will not be stored.`);
          }
        },
        (error: unknown) => this.logger.warn(`Lease renewal failed for key ${hash}: ${describe(error)}`),
      );
    }, Math.max(1, Math.floor(this.options.lease / 3)));
    renewal.unref();

    const finish = async (captured: CapturedResponse | null) => {
      finished = true;
      clearInterval(renewal);
      try {
        if (captured === null || captured.status >= 500) await this.store.release(owner);
        else if (!(await this.store.complete(owner, this.toStored(captured)))) {
          this.logger.warn(`Response for key ${hash} not stored: the claim was taken over after its lease ran out.`);
        }
      } catch (error) {
        // The response still goes out; the claim stays in flight until its lease runs out, so no
        // retry runs the handler again before then (SPEC W12).
        this.logger.error(`Storing the response for key ${hash} failed: ${describe(error)}`);
      }
    };
    captureResponse(exchange.response, this.options.maxResponseBytes, finish);

    // A response that is destroyed instead of ended (a stream that failed after its headers went
    // out, a client gone while a stream was piping) never reaches the capture: free the key.
    const abandonIfUnfinished = () => {
      if (!finished && handlerSettled && connectionClosed) void finish(null);
    };
    exchange.response.once('close', () => {
      connectionClosed = true;
      setImmediate(abandonIfUnfinished);
    });
    return next.handle().pipe(
      finalize(() => {
        handlerSettled = true;
        setImmediate(abandonIfUnfinished);
      }),
    );
  }

  private toStored(captured: CapturedResponse): StoredResponse {
    const headers: Record<string, string | string[]> = {};
    for (const [name, value] of Object.entries(captured.headers)) {
      if (value !== undefined && !this.keptHeaders.has(name)) headers[name] = typeof value === 'number' ? String(value) : value;
    }
    return { status: captured.status, headers, body: captured.body };
  }

  private routeOptions(context: ExecutionContext): IdempotentRouteOptions | null {
    const handler = context.getHandler();
    let options = this.routes.get(handler);
    if (options === undefined) {
      options =
        this.reflector.getAllAndOverride<IdempotentRouteOptions | undefined>(IDEMPOTENT_ROUTE_METADATA, [handler, context.getClass()]) ??
        null;
      this.routes.set(handler, options);
    }
    return options;
  }

  /** Answers the request with one of the module's errors. */
  private fail(code: IdempotencyErrorCode, exchange: HttpExchange, retryAfter = false, status?: number): never {
    const requestId = exchange.response.getHeader('x-request-id') ?? exchange.request.headers['x-request-id'];
    const details = describeError(code, {
      status,
      docsUrl: this.options.docsUrl,
      requestId: typeof requestId === 'string' ? requestId : null,
    });
    if (retryAfter) exchange.response.setHeader('Retry-After', String(RETRY_AFTER_SECONDS));
    throw new IdempotencyException(details, this.options.formatError(details));
  }
}

/** A short, non-reversible name of a key for logs: never log the raw key or scope. */
function keyHash(scope: string, key: string): string {
  return createHash('sha256').update(scope).update('\0').update(key).digest('hex').slice(0, 16);
}

function describe(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
