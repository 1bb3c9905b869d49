import { Inject, Injectable, Logger, Optional, type CallHandler } from '@nestjs/common';
import { type Observable, catchError, throwError } from 'rxjs';
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
import { RequestLifecycle } from '../request-lifecycle';
import { requestTransactions } from './idempotency-transaction.decorator';
import { TRANSACTION_SCOPE, type TransactionScope } from './transaction-scope';

/**
 * Runs a transactional route's handler inside the request's transaction and decides, once the
 * response is rendered, what commits: everything (success), the claim and a 4xx without the
 * handler's writes (the handler threw), or nothing (5xx, conflict). The response leaves only after
 * that, and a failed commit replaces it with an error.
 *
 * The transaction always ends with its request. An answer written while the handler still runs (an
 * outer `timeout()` interceptor) goes out as it is and commits nothing: the handler's writes and
 * the claim roll back, so the retry runs. A client that leaves rolls everything back as soon as no
 * answer can come any more (the handler was torn down, or its answer broke off midway), and at the
 * latest one lease after the handler ended.
 */
@Injectable()
export class TransactionalRun {
  private readonly logger = new Logger('Idempotency');

  constructor(
    private readonly errors: IdempotencyErrors,
    @Inject(RESOLVED_IDEMPOTENCY_OPTIONS) private readonly options: ResolvedIdempotencyOptions,
    @Optional() @Inject(TRANSACTION_SCOPE) private readonly scope?: TransactionScope,
  ) {}

  /** `owner` is the claim made in `transaction`, or undefined for a request without a key. */
  run(
    context: RunContext,
    request: object,
    transaction: StoreTransaction,
    owner: RecordOwner | undefined,
    next: CallHandler,
  ): Observable<unknown> {
    const { exchange, trace } = context;
    let ended = false;
    let conflict = false;
    let lastChance: NodeJS.Timeout | undefined;
    requestTransactions.set(request, transaction.manager);

    const end = () => {
      ended = true;
      clearTimeout(lastChance);
      lifecycle.dispose();
    };
    // `abandon` when the handler may still be sending statements on the transaction.
    const rollBack = async (status?: number, abandon = false) => {
      if (this.options.expiresHeader && !exchange.response.headersSent) exchange.response.removeHeader(this.options.expiresHeader);
      await (abandon ? transaction.abandon() : transaction.rollback());
      if (owner) publishEvent('released', trace, { status });
    };
    const abandonIfNoAnswer = () => {
      if (ended || lifecycle.handlerRunning || !lifecycle.connectionClosed) return;
      const noAnswerCanCome = lifecycle.handlerEnd === 'torn_down' || progress.bodyStarted;
      if (noAnswerCanCome) {
        end();
        void rollBack(undefined, true);
      } else {
        // The pipeline may still write the answer (it is then committed), but the transaction is not
        // left open for one that never comes.
        lastChance ??= setTimeout(() => {
          if (ended) return;
          end();
          void rollBack(undefined, true);
        }, this.options.lease).unref();
      }
    };
    const lifecycle = new RequestLifecycle(exchange, { handlerEnded: abandonIfNoAnswer, connectionClosed: abandonIfNoAnswer });

    const finish = async (captured: CapturedResponse): Promise<Replacement | void> => {
      if (ended) return;
      // The handler writes its answer itself (`@Res()`): it commits once the handler has ended.
      if (lifecycle.handlerRunning && !lifecycle.pipelineLetGo) await lifecycle.handlerDone;
      if (ended) return;
      end();
      const { status } = captured;
      const handlerThrew = lifecycle.handlerEnd === 'failed';
      // The handler did not produce this answer (the pipeline answered while it ran, or it never started): commit none of it.
      const answeredForHandler = lifecycle.pipelineLetGo || !lifecycle.handlerStarted;
      if (answeredForHandler) return rollBack(status, true);
      if (status >= 500 || conflict || (handlerThrew && !owner)) return rollBack(status);
      try {
        if (owner) {
          if (handlerThrew) await transaction.rollbackToSavepoint();
          await transaction.complete(owner, toStoredResponse(captured, context, this.options.maxResponseBytes));
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
    const progress = captureResponse(exchange.response, undefined, finish);

    const { scope } = this;
    const handler: CallHandler = scope ? { handle: () => scope.run(transaction.manager, () => next.handle()) } : next;
    return lifecycle.observe(handler).pipe(
      catchError((error: unknown) => {
        if (!isTransactionConflict(error)) return throwError(() => error);
        conflict = true;
        return throwError(() => this.errors.exception(IdempotencyErrorCode.TransactionConflict, exchange, { retryAfter: true }));
      }),
    );
  }
}
