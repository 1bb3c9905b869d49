import { Inject, Injectable, Logger, type CallHandler } from '@nestjs/common';
import type { Observable } from 'rxjs';
import { captureResponse, type CapturedResponse } from './capture/response-capture';
import type { ResolvedIdempotencyOptions } from './idempotency-options.interface';
import { RESOLVED_IDEMPOTENCY_OPTIONS } from './idempotency-options';
import { publishEvent } from './idempotency-events';
import { errorMessage } from './log-format';
import { RequestLifecycle } from './request-lifecycle';
import type { RunContext } from './run-context';
import { IdempotencyStore, type RecordOwner, type StoredResponse } from './store/idempotency.store';
import { toStoredResponse } from './stored-response';

/**
 * Runs the handler of a claimed key on a lease: the lease is renewed while the handler runs, and
 * the captured response is stored (or, for a 5xx, the claim released) before the response leaves.
 *
 * The key is never freed while the handler may still run or an answer for it may still be written:
 * - a client that leaves does not stop the answer from being stored when the pipeline still
 *   writes it; the key is released at once only when no answer can come any more (the handler was
 *   torn down, or its answer broke off midway). Otherwise the lease is no longer renewed once the
 *   handler is done and the connection gone, so a pipeline that never answers frees the key when
 *   its lease runs out;
 * - an answer written while the handler still runs (an outer `timeout()` interceptor) goes out as
 *   it is, is never stored, and the key stays in flight until the handler ends: then the record is
 *   completed without a replayable answer (retries get `idempotency_response_not_stored`), or
 *   released if the handler failed.
 */
@Injectable()
export class LeasedRun {
  private readonly logger = new Logger('Idempotency');

  constructor(
    private readonly store: IdempotencyStore,
    @Inject(RESOLVED_IDEMPOTENCY_OPTIONS) private readonly options: ResolvedIdempotencyOptions,
  ) {}

  run(context: RunContext, owner: RecordOwner, next: CallHandler): Observable<unknown> {
    const { exchange, trace } = context;
    let decided = false;
    // An answer that left while the handler still ran: the record waits for the handler.
    let answeredEarly: CapturedResponse | undefined;

    const decide = async (outcome: StoredResponse | undefined, status?: number) => {
      decided = true;
      clearInterval(renewal);
      lifecycle.dispose();
      await this.settle(owner, outcome, status, context);
    };
    const abandonIfNoAnswer = () => {
      if (decided || answeredEarly || lifecycle.handlerRunning || !lifecycle.connectionClosed) return;
      if (lifecycle.handlerEnd === 'torn_down' || progress.bodyStarted) void decide(undefined);
    };
    // The handler ended after the pipeline answered in its place: the record is completed without
    // a replayable answer, unless the handler failed with a 5xx or was torn down (then released).
    const decideLate = (status: number) => {
      const done = lifecycle.handlerEnd === 'answered' || (lifecycle.handlerEnd === 'failed' && lifecycle.failedBelow500);
      return decide(done ? { status, headers: {}, body: null } : undefined, status);
    };
    const lifecycle = new RequestLifecycle(exchange, {
      handlerEnded: () => {
        if (!answeredEarly) return abandonIfNoAnswer();
        if (!decided) void decideLate(answeredEarly.status);
      },
      connectionClosed: abandonIfNoAnswer,
    });

    const renewal = setInterval(() => {
      // Past the handler, only an open connection can still bring its answer.
      if (!lifecycle.handlerRunning && lifecycle.connectionClosed) return clearInterval(renewal);
      this.store.renew(owner, this.options.lease).then(
        (owned) => {
          // A renewal answered after the decision finds the record no longer in flight: not a loss.
          if (!owned && !decided) {
            clearInterval(renewal);
            publishEvent('lease_lost', trace);
            this.logger.warn(`Lease lost for key ${trace.keyHash}: another request took it over; this response will not be stored.`);
          }
        },
        (error: unknown) => this.logger.warn(`Lease renewal failed for key ${trace.keyHash}: ${errorMessage(error)}`),
      );
    }, Math.max(1, Math.floor(this.options.lease / 3)));
    renewal.unref();

    const progress = captureResponse(exchange.response, this.options.maxResponseBytes, async (captured) => {
      if (decided) return;
      // The pipeline stopped listening to the handler (a timeout): this answer is not the handler's.
      if (lifecycle.pipelineLetGo) {
        if (lifecycle.handlerRunning) answeredEarly = captured;
        else await decideLate(captured.status);
        return;
      }
      if (lifecycle.handlerRunning) {
        // The handler writes its answer itself (`@Res()`): it is stored once the handler has ended.
        await lifecycle.handlerDone;
        if (decided) return;
      }
      // A 5xx, or an answer the handler never took part in (an outer interceptor answered instead).
      const failed = captured.status >= 500 || !lifecycle.handlerStarted;
      await decide(failed ? undefined : toStoredResponse(captured, context, this.options.maxResponseBytes), captured.status);
    });
    return lifecycle.observe(next);
  }

  /** Stores `outcome` as the record's answer, or releases the key when there is none. */
  private async settle(owner: RecordOwner, outcome: StoredResponse | undefined, status: number | undefined, { exchange, trace }: RunContext): Promise<void> {
    try {
      if (!outcome) {
        if (this.options.expiresHeader && !exchange.response.headersSent) exchange.response.removeHeader(this.options.expiresHeader);
        await this.store.release(owner);
        publishEvent('released', trace, { status });
      } else if (await this.store.complete(owner, outcome)) {
        publishEvent('stored', trace, { status });
      } else {
        publishEvent('lease_lost', trace, { status });
        this.logger.warn(`Response for key ${trace.keyHash} not stored: the claim was taken over after its lease ran out.`);
      }
    } catch (error) {
      // The response still goes out; the claim stays in flight until its lease runs out, so no
      // retry runs the handler again before then.
      publishEvent('store_error', trace, { status, error: errorMessage(error) });
      this.logger.error(`Storing the response for key ${trace.keyHash} failed: ${errorMessage(error)}`);
    }
  }
}
