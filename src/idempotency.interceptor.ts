import { Inject, Injectable, Logger, type CallHandler, type ExecutionContext, type NestInterceptor } from '@nestjs/common';
import { RESPONSE_PASSTHROUGH_METADATA, ROUTE_ARGS_METADATA } from '@nestjs/common/constants';
import { RouteParamtypes } from '@nestjs/common/internal';
import { Reflector } from '@nestjs/core';
import { EMPTY, type Observable, of } from 'rxjs';
import { toHttpExchange, type HttpExchange } from './capture/http-exchange';
import { replayResponse } from './capture/response-capture';
import { RecordSealer, UnreadableRecordError, isSealed, type RecordCipher } from './encryption/record-sealer';
import { fingerprintRequest } from './fingerprint';
import { IDEMPOTENT_METHODS, IDEMPOTENT_ROUTE_METADATA, UNSTORED_HEADERS } from './idempotency.constants';
import { IdempotencyErrorCode } from './idempotency.exceptions';
import { IdempotencyErrors } from './idempotency-errors';
import { publishEvent, RequestTrace } from './idempotency-events';
import type { IdempotentRouteOptions, ResolvedIdempotencyOptions } from './idempotency-options.interface';
import { RESOLVED_IDEMPOTENCY_OPTIONS } from './idempotency-options';
import { LeasedRun } from './leased-run';
import { errorMessage } from './log-format';
import { readRequestKey } from './request-key';
import type { RunContext } from './run-context';
import { InFlightWait } from './in-flight-wait';
import { IdempotencyStore, type ClaimOutcome, type ClaimRequest, type IsolationLevel } from './store/idempotency.store';
import type { StoreTransaction, StoredResponse } from './store/idempotency.store';
import { isTransactionConflict } from './store/postgres-errors';
import { TransactionalRun } from './transaction/transactional-run';

/** A claim made in a transaction: when the key is ours, the transaction it was taken in, still open. */
type TransactionalOutcome =
  | Exclude<ClaimOutcome, { kind: 'claimed' }>
  | (Extract<ClaimOutcome, { kind: 'claimed' }> & { transaction: StoreTransaction });

/** What the interceptor needs to know of a route, looked up once per handler. */
interface Route {
  options: IdempotentRouteOptions;
  /** The handler writes its answer itself (`@Res()` or `@Next()` without passthrough): Nest sends nothing after it. */
  answersItself: boolean;
}

/** What a keyed request claims, and the cipher of its record (with the `encryption` option). */
interface Claim {
  record: ClaimRequest;
  cipher?: RecordCipher;
}

/**
 * The one decision point of the module: on a route marked `@Idempotent()` it checks the key, then
 * the scope, then claims the key, and either runs the handler (capturing its response for the
 * record) or answers from the record. Reached only through the interceptor `@Idempotent()` binds
 * to its routes (idempotency-route.interceptor.ts); safe methods pass straight through.
 */
@Injectable()
export class IdempotencyInterceptor implements NestInterceptor {
  private readonly logger = new Logger('Idempotency');
  private readonly routes = new WeakMap<Function, Route>();
  /** Headers never stored, and kept as the host set them on a replay. */
  private readonly unstored: ReadonlySet<string>;
  /** The key's header name in lower case, as `readRequestKey` compares it. */
  private readonly keyHeader: string;
  /** What marks a replay (option `replayedHeader`). */
  private readonly replayMarker: Record<string, string>;
  private readonly sealer: RecordSealer | undefined;

  constructor(
    private readonly reflector: Reflector,
    private readonly store: IdempotencyStore,
    private readonly errors: IdempotencyErrors,
    private readonly leasedRun: LeasedRun,
    private readonly transactionalRun: TransactionalRun,
    private readonly inFlightWait: InFlightWait,
    @Inject(RESOLVED_IDEMPOTENCY_OPTIONS) private readonly options: ResolvedIdempotencyOptions,
  ) {
    this.unstored = new Set([...UNSTORED_HEADERS, ...options.excludeHeaders]);
    this.keyHeader = options.header.toLowerCase();
    this.replayMarker = options.replayedHeader ? { [options.replayedHeader]: 'true' } : {};
    this.sealer = options.encryption && new RecordSealer(options.encryption);
  }

  intercept(context: ExecutionContext, next: CallHandler): Observable<unknown> | Promise<Observable<unknown>> {
    // Safe methods pass through synchronously, without a promise. The request and response are
    // read by index: switchToHttp() builds three closures on every call.
    const request = context.getArgByIndex(0);
    if (!IDEMPOTENT_METHODS.has(request.method)) return next.handle();
    return this.interceptMarked(context, this.route(context), request, toHttpExchange(request, context.getArgByIndex(1)), next);
  }

  private async interceptMarked(
    context: ExecutionContext,
    { options: route, answersItself }: Route,
    request: object,
    exchange: HttpExchange,
    next: CallHandler,
  ): Promise<Observable<unknown>> {
    const trace = new RequestTrace(context.getClass(), context.getHandler(), exchange.method);

    const claim = await this.claimRequest(exchange, route, request);
    if (claim) trace.identify(claim.record.scope, claim.record.key);
    const run: RunContext = { exchange, trace, unstored: this.unstored, cipher: claim?.cipher };
    if (!route.transactional) {
      if (!claim) return next.handle();
      const { record } = claim;
      const failed = (error: unknown) => this.storeFailed(error, trace, exchange);
      const attempt = () => this.store.claim(record).catch(failed);
      let outcome = await attempt();
      if (outcome.kind === 'in_flight') outcome = await this.inFlightWait.wait(record, outcome, exchange, attempt);
      if (outcome.kind !== 'claimed') return this.answerFromRecord(outcome, claim, trace, exchange, answersItself);
      if (answeredMeanwhile(exchange)) {
        await this.store.release(outcome.owner).catch(() => undefined);
        publishEvent('released', trace);
        return EMPTY;
      }
      this.claimed(outcome.expiresAt, trace, exchange);
      return this.leasedRun.run(run, outcome.owner, next);
    }

    const isolation = route.isolation ?? this.options.isolation;
    if (!claim) {
      const transaction = await this.begin(isolation, trace, exchange);
      if (!answeredMeanwhile(exchange)) return this.transactionalRun.run(run, request, transaction, undefined, next);
      await transaction.rollback();
      return EMPTY;
    }
    const attempt = () => this.claimInTransaction(claim.record, isolation, trace, exchange);
    let outcome = await attempt();
    // A duplicate waits with its transaction rolled back: it holds no connection meanwhile.
    if (outcome.kind === 'in_flight') outcome = await this.inFlightWait.wait(claim.record, outcome, exchange, attempt);
    if (outcome.kind !== 'claimed') return this.answerFromRecord(outcome, claim, trace, exchange, answersItself);
    if (answeredMeanwhile(exchange)) {
      await outcome.transaction.rollback();
      publishEvent('released', trace);
      return EMPTY;
    }
    this.claimed(outcome.expiresAt, trace, exchange);
    return this.transactionalRun.run(run, request, outcome.transaction, outcome.owner, next);
  }

  private begin(isolation: IsolationLevel, trace: RequestTrace, exchange: HttpExchange): Promise<StoreTransaction> {
    return this.store.begin(isolation).catch((error: unknown) => this.storeFailed(error, trace, exchange));
  }

  /** Claims the key in a new transaction, left open when the key is ours and rolled back otherwise. */
  private async claimInTransaction(
    claim: ClaimRequest,
    isolation: IsolationLevel,
    trace: RequestTrace,
    exchange: HttpExchange,
  ): Promise<TransactionalOutcome> {
    const transaction = await this.begin(isolation, trace, exchange);
    let outcome: ClaimOutcome;
    try {
      outcome = await transaction.claim(claim);
      if (outcome.kind === 'claimed') {
        await transaction.savepoint();
        return { ...outcome, transaction };
      }
    } catch (error) {
      await transaction.rollback();
      if (isTransactionConflict(error)) throw this.errors.exception(IdempotencyErrorCode.TransactionConflict, exchange, { retryAfter: true });
      return this.storeFailed(error, trace, exchange);
    }
    await transaction.rollback();
    return outcome;
  }

  /** The key is ours: say so, and tell the client until when the answer will be kept. */
  private claimed(expiresAt: Date, trace: RequestTrace, exchange: HttpExchange): void {
    publishEvent('claimed', trace);
    if (this.options.expiresHeader) exchange.response.setHeader(this.options.expiresHeader, expiresAt.toUTCString());
  }

  /**
   * Validates the key (W2/W3), then resolves the scope (W4), in that order. Returns what to claim,
   * or undefined when the request runs without idempotency.
   */
  private async claimRequest(exchange: HttpExchange, route: IdempotentRouteOptions, request: unknown): Promise<Claim | undefined> {
    const requestKey = readRequestKey(exchange.request.rawHeaders, this.keyHeader);
    if (requestKey.kind === 'invalid') throw this.errors.exception(IdempotencyErrorCode.InvalidKey, exchange);
    if (requestKey.kind === 'absent') {
      if (route.required) throw this.errors.exception(IdempotencyErrorCode.MissingKey, exchange);
      return undefined;
    }
    const scope = await this.options.scope(request);
    if (scope === undefined || scope === '') return this.unresolved(exchange);
    const { lease, ttl } = this.options;
    const record = { scope, key: requestKey.key, fingerprint: fingerprintRequest(exchange), lease, ttl };
    if (!this.sealer) return { record };
    // A caller-bound record needs its caller's secret: without it, the caller is not identified.
    const cipher = await this.sealer.cipherFor(request, scope, requestKey.key);
    return cipher ? { record, cipher } : this.unresolved(exchange);
  }

  /** A caller that cannot be identified: run without idempotency, or answer 401 (option `onUnresolvedScope`). */
  private unresolved(exchange: HttpExchange): undefined {
    if (this.options.onUnresolvedScope === 'bypass') return undefined;
    throw this.errors.exception(IdempotencyErrorCode.ScopeUnresolved, exchange);
  }

  /** Answers a request whose key is already taken: a replay, or why not. */
  private answerFromRecord(
    outcome: Exclude<ClaimOutcome, { kind: 'claimed' }>,
    claim: Claim,
    trace: RequestTrace,
    exchange: HttpExchange,
    answersItself: boolean,
  ): Observable<unknown> {
    if (outcome.fingerprint !== null && outcome.fingerprint !== claim.record.fingerprint) {
      publishEvent('conflict', trace, { status: this.options.conflictStatus });
      throw this.errors.exception(IdempotencyErrorCode.KeyConflict, exchange, { status: this.options.conflictStatus });
    }
    if (outcome.kind === 'in_flight') {
      publishEvent('in_use', trace, { status: 409 });
      throw this.errors.exception(IdempotencyErrorCode.KeyInUse, exchange, { retryAfter: true });
    }
    if (outcome.response.body === null) throw this.errors.exception(IdempotencyErrorCode.ResponseNotStored, exchange);
    const response = this.opened(outcome.response, claim.cipher, trace, exchange);
    publishEvent('replayed', trace, { status: response.status });
    const keepHeader = (name: string) => this.unstored.has(name);
    replayResponse(exchange.response, { ...response, body: response.body! }, keepHeader, this.replayMarker);
    // Nest sends nothing for a handler that answers itself, and that handler does not run.
    if (answersItself) exchange.response.end();
    return of(undefined);
  }

  /**
   * The stored answer as it was sent. A record that cannot be opened — or a sealed one met without
   * the `encryption` option — is never replayed: its request gets its own error instead, and never
   * runs the handler.
   */
  private opened(
    stored: StoredResponse,
    cipher: RecordCipher | undefined,
    trace: RequestTrace,
    exchange: HttpExchange,
  ): StoredResponse {
    let reason: string;
    if (cipher) {
      try {
        return cipher.open(stored);
      } catch (error) {
        if (!(error instanceof UnreadableRecordError)) throw error;
        reason = error.message;
      }
    } else {
      if (!isSealed(stored.headers)) return stored;
      reason = 'it is sealed, and this module has no encryption option';
    }
    publishEvent('unreadable', trace, { status: 409, error: reason });
    this.logger.warn(`The stored answer of key ${trace.keyHash} is not replayed: ${reason}.`);
    throw this.errors.exception(IdempotencyErrorCode.RecordUnreadable, exchange);
  }

  /** The store could not be used: fail closed, with a 503 the client may retry; the handler does not run. */
  private storeFailed(error: unknown, trace: RequestTrace, exchange: HttpExchange): never {
    const subject = trace.keyHash ? `key ${trace.keyHash}` : 'a keyless transactional request';
    this.logger.error(`Idempotency store unavailable for ${subject}: ${errorMessage(error)}`);
    publishEvent('store_error', trace, { status: 503, error: errorMessage(error) });
    throw this.errors.exception(IdempotencyErrorCode.StoreUnavailable, exchange, { retryAfter: true });
  }

  /** The route's options (a handler's over its controller's) and how it answers, looked up once per handler. */
  private route(context: ExecutionContext): Route {
    const handler = context.getHandler();
    let route = this.routes.get(handler);
    if (route === undefined) {
      const controller = context.getClass();
      route = {
        options: this.reflector.getAllAndOverride<IdempotentRouteOptions | undefined>(IDEMPOTENT_ROUTE_METADATA, [handler, controller]) ?? {},
        answersItself: answersItself(controller, handler),
      };
      this.routes.set(handler, route);
    }
    return route;
  }
}

/**
 * The response went out while the key was being claimed: an outer interceptor (a timeout) answered
 * in the handler's place and no longer listens. The handler must not run, and the claim is undone.
 */
function answeredMeanwhile(exchange: HttpExchange): boolean {
  return exchange.response.headersSent || exchange.response.writableEnded;
}

/** Whether Nest leaves the answer to the handler: it takes the response (`@Res()`) or `next` (`@Next()`), without passthrough. */
function answersItself(controller: Function, handler: Function): boolean {
  // Nest keeps parameter decorators per method name, keyed "<paramtype>:<index>".
  const params: Record<string, unknown> = Reflect.getMetadata(ROUTE_ARGS_METADATA, controller, handler.name) ?? {};
  const takesResponse = Object.keys(params).some((key) => {
    const type = Number(key.split(':')[0]);
    return type === RouteParamtypes.RESPONSE || type === RouteParamtypes.NEXT;
  });
  return takesResponse && Reflect.getMetadata(RESPONSE_PASSTHROUGH_METADATA, controller, handler.name) !== true;
}
