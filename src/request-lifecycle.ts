import type { CallHandler } from '@nestjs/common';
import type { Socket } from 'node:net';
import { Observable, ReplaySubject, type Subscription } from 'rxjs';
import type { HttpExchange } from './capture/http-exchange';

/** How the handler ended: with its answer, with an error, or torn down because its client left. */
export type HandlerEnd = 'answered' | 'failed' | 'torn_down';

/** What a run hears of its request's lifecycle. */
export interface LifecycleListener {
  handlerEnded(end: HandlerEnd): void;
  connectionClosed(): void;
}

/**
 * What the run of a claimed request must know to decide the fate of its key: whether the handler
 * still runs, and whether its connection is still open.
 *
 * The handler is subscribed to here, and Nest's pipeline only watches that subscription: an outer
 * interceptor that stops listening early (a `timeout()` that answers in the handler's place) must
 * not hide that the handler still runs. Only when the connection is gone is that unsubscription
 * passed on to the handler, as Nest does to a handler's Observable for a client that left.
 *
 * The connection is watched on its socket, not on the response: the response of a pipelined request
 * still waiting for its turn gets no `close` when the client goes.
 */
export class RequestLifecycle {
  private end: HandlerEnd | undefined;
  private handler: Subscription | undefined;
  private letGo = false;
  private failure: unknown;
  private readonly socket: Socket | undefined;
  private resolveEnded!: (end: HandlerEnd) => void;
  /** Settles when the handler has ended. */
  readonly handlerDone = new Promise<HandlerEnd>((resolve) => (this.resolveEnded = resolve));

  constructor(
    exchange: HttpExchange,
    private readonly listener: LifecycleListener,
  ) {
    const socket = exchange.request.socket;
    // A client may leave while the key is being claimed, before anything here listens.
    if (socket && !socket.destroyed) {
      this.socket = socket;
      socket.once('close', this.onClose);
    }
  }

  /** The pipeline has asked for the handler's answer: the handler has started. */
  get handlerStarted(): boolean {
    return this.handler !== undefined;
  }

  /** The handler has started and has neither answered, failed nor been torn down. */
  get handlerRunning(): boolean {
    return this.handler !== undefined && this.end === undefined;
  }

  get handlerEnd(): HandlerEnd | undefined {
    return this.end;
  }

  /** The handler failed with an HTTP error below 500 (which an exception filter renders as a 4xx). */
  get failedBelow500(): boolean {
    const status = (this.failure as { getStatus?: () => unknown } | undefined)?.getStatus?.();
    return typeof status === 'number' && status < 500;
  }

  /** The pipeline stopped listening while the handler still ran: what it answers is not the handler's. */
  get pipelineLetGo(): boolean {
    return this.letGo;
  }

  get connectionClosed(): boolean {
    return this.socket?.destroyed ?? true;
  }

  /** The handler's answer, as Nest's pipeline is to see it. */
  observe(next: CallHandler): Observable<unknown> {
    const answer = new ReplaySubject<unknown>();
    return new Observable((subscriber) => {
      const view = answer.subscribe(subscriber);
      this.handler ??= next.handle().subscribe({
        next: (value) => answer.next(value),
        error: (error: unknown) => {
          this.failure = error;
          this.ended('failed');
          answer.error(error);
        },
        complete: () => {
          this.ended('answered');
          answer.complete();
        },
      });
      return () => {
        view.unsubscribe();
        if (!this.handlerRunning) return;
        this.letGo = true;
        if (this.connectionClosed) this.tearDown();
      };
    });
  }

  /** Stops listening to the connection; the run's decision is made. */
  dispose(): void {
    this.socket?.removeListener('close', this.onClose);
  }

  private readonly onClose = () => this.listener.connectionClosed();

  private tearDown(): void {
    this.handler?.unsubscribe();
    this.ended('torn_down');
  }

  private ended(end: HandlerEnd): void {
    if (this.end !== undefined) return;
    this.end = end;
    this.resolveEnded(end);
    this.listener.handlerEnded(end);
  }
}
