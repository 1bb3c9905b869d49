import { Inject, Injectable, Logger, type CallHandler } from '@nestjs/common';
import { type Observable, catchError, finalize, throwError } from 'rxjs';
import { captureResponse, type CapturedResponse, type Replacement } from '../capture/response-capture';
import { IdempotencyErrorCode } from '../idempotency.exceptions';
import { IdempotencyErrors } from '../idempotency-errors';
import type { ResolvedIdempotencyOptions } from '../idempotency-options.interface';
import { RESOLVED_IDEMPOTENCY_OPTIONS } from '../idempotency-options';
import { publishEvent } from '../idempotency-events';
import { errorMessage } from '../log-format';
import type { RunContext } from '../run-context';
import type { RecordOwner, StoreTransaction } from '../store/idempotency.store';
import { toStoredResponse } from '../stored-response';
import { isConnectionFailure, isTransactionConflict } from '../store/postgres-errors';
import { requestTransactions } from './idempotency-transaction.decorator';

/**
 * Runs a transactional route's handler inside the request's transaction and decides, once the
 * response is rendered, what commits: everything (success), the claim and a 4xx without the
 * handler's writes (the handler threw), or nothing (5xx, conflict). The response leaves only after
 * that, and a failed commit replaces it with an error.
 */
@Injectable()
export class TransactionalRun {
  private readonly logger = new Logger('Idempotency');

  constructor(
    private readonly errors: IdempotencyErrors,
    @Inject(RESOLVED_IDEMPOTENCY_OPTIONS) private readonly options: ResolvedIdempotencyOptions,
  ) {}

  /** `owner` is the claim made in `transaction`, or undefined for a request without a key. */
  run(
    { exchange, trace, unstored }: RunContext,
    request: object,
    transaction: StoreTransaction,
    owner: RecordOwner | undefined,
    next: CallHandler,
  ): Observable<unknown> {
    let handlerThrew = false;
    let conflict = false;
    let ended = false;
    let handlerSettled = false;
    let connectionClosed = false;
    requestTransactions.set(request, transaction.manager);

    const rollBack = async (status?: number) => {
      if (this.options.expiresHeader && !exchange.response.headersSent) {
        exchange.response.removeHeader(this.options.expiresHeader);
      }
      await transaction.rollback();
      if (owner) publishEvent('released', trace, { status });
    };
    const finish = async (captured: CapturedResponse): Promise<Replacement | void> => {
      if (ended) return;
      ended = true;
      const { status } = captured;
      if (status >= 500 || conflict || (handlerThrew && !owner)) return rollBack(status);
      try {
        if (owner) {
          if (handlerThrew) await transaction.rollbackToSavepoint();
          await transaction.complete(owner, toStoredResponse(captured, unstored, this.options.maxResponseBytes));
        }
        await transaction.commit();
        if (owner) publishEvent('stored', trace, { status });
      } catch (error) {
        await rollBack(status);
        if (isTransactionConflict(error)) {
          return this.errors.replacement(IdempotencyErrorCode.TransactionConflict, exchange, { retryAfter: true });
        }
        publishEvent('store_error', trace, { status, error: errorMessage(error) });
        this.logger.error(`Commit of a transactional request failed: ${errorMessage(error)}`);
        // Lost connection: nothing committed, and the client should retry once the database is back.
        if (isConnectionFailure(error)) {
          return this.errors.replacement(IdempotencyErrorCode.StoreUnavailable, exchange, { retryAfter: true });
        }
        return this.errors.replacement(IdempotencyErrorCode.InternalError, exchange);
      }
    };
    captureResponse(exchange.response, undefined, finish);

    // A response destroyed instead of ended (a stream that failed midway) never reaches finish: its
    // transaction ends with it, once the handler is done with the transaction.
    const abandonIfUnfinished = () => {
      if (ended || !handlerSettled || !connectionClosed) return;
      ended = true;
      void rollBack();
    };
    exchange.response.once('close', () => {
      connectionClosed = true;
      setImmediate(abandonIfUnfinished);
    });
    return next.handle().pipe(
      catchError((error: unknown) => {
        handlerThrew = true;
        if (!isTransactionConflict(error)) return throwError(() => error);
        conflict = true;
        return throwError(() => this.errors.exception(IdempotencyErrorCode.TransactionConflict, exchange, { retryAfter: true }));
      }),
      finalize(() => {
        handlerSettled = true;
        setImmediate(abandonIfUnfinished);
      }),
    );
  }
}
