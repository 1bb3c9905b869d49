import { Inject, Injectable, Logger, type CallHandler } from '@nestjs/common';
import { type Observable, finalize } from 'rxjs';
import { captureResponse, type CapturedResponse } from './capture/response-capture';
import type { ResolvedIdempotencyOptions } from './idempotency-options.interface';
import { RESOLVED_IDEMPOTENCY_OPTIONS } from './idempotency-options';
import { publishEvent } from './idempotency-events';
import { errorMessage } from './log-format';
import type { RunContext } from './run-context';
import { IdempotencyStore, type RecordOwner } from './store/idempotency.store';
import { toStoredResponse } from './stored-response';

/**
 * Runs the handler of a claimed key on a lease: the lease is renewed while the handler runs, and
 * the captured response is stored (or, for a 5xx, the claim released) before the response leaves.
 */
@Injectable()
export class LeasedRun {
  private readonly logger = new Logger('Idempotency');

  constructor(
    private readonly store: IdempotencyStore,
    @Inject(RESOLVED_IDEMPOTENCY_OPTIONS) private readonly options: ResolvedIdempotencyOptions,
  ) {}

  run({ exchange, trace, unstored }: RunContext, owner: RecordOwner, next: CallHandler): Observable<unknown> {
    let finished = false;
    let handlerSettled = false;
    let connectionClosed = false;

    const renewal = setInterval(() => {
      this.store.renew(owner, this.options.lease).then(
        (owned) => {
          // A renewal answered after the completion finds the record no longer in flight: not a loss.
          if (!owned && !finished) {
            clearInterval(renewal);
            publishEvent('lease_lost', trace);
            this.logger.warn(`Lease lost for key ${trace.keyHash}: another request took it over; this response will not be stored.`);
          }
        },
        (error: unknown) => this.logger.warn(`Lease renewal failed for key ${trace.keyHash}: ${errorMessage(error)}`),
      );
    }, Math.max(1, Math.floor(this.options.lease / 3)));
    renewal.unref();

    const finish = async (captured: CapturedResponse | null) => {
      finished = true;
      clearInterval(renewal);
      const status = captured?.status;
      try {
        if (captured === null || captured.status >= 500) {
          // Headers already out (a streamed body) can no longer change; the release still must happen.
          if (this.options.expiresHeader && !exchange.response.headersSent) {
            exchange.response.removeHeader(this.options.expiresHeader);
          }
          await this.store.release(owner);
          publishEvent('released', trace, { status });
        } else if (await this.store.complete(owner, toStoredResponse(captured, unstored, this.options.maxResponseBytes))) {
          publishEvent('stored', trace, { status });
        } else {
          publishEvent('lease_lost', trace, { status });
          this.logger.warn(`Response for key ${trace.keyHash} not stored: the claim was taken over after its lease ran out.`);
        }
      } catch (error) {
        // The response still goes out; the claim stays in flight until its lease runs out, so no
        // retry runs the handler again before then (SPEC W12).
        publishEvent('store_error', trace, { status, error: errorMessage(error) });
        this.logger.error(`Storing the response for key ${trace.keyHash} failed: ${errorMessage(error)}`);
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
}
