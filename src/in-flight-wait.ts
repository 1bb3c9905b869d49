import { Inject, Injectable } from '@nestjs/common';
import diagnostics_channel from 'node:diagnostics_channel';
import type { Socket } from 'node:net';
import type { HttpExchange } from './capture/http-exchange';
import { IDEMPOTENCY_CHANNELS, type IdempotencyEvent } from './idempotency-events';
import type { ResolvedIdempotencyOptions } from './idempotency-options.interface';
import { RESOLVED_IDEMPOTENCY_OPTIONS } from './idempotency-options';
import { keyHash } from './log-format';
import type { ClaimOutcome, ClaimRequest } from './store/idempotency.store';

/** The first pause between two claims of a waiting duplicate, doubled after each claim up to the longest. */
const FIRST_PAUSE_MS = 25;
const LONGEST_PAUSE_MS = 250;

/** The events after which a key is claimable or answerable again. */
const SETTLED_CHANNELS = [IDEMPOTENCY_CHANNELS.stored, IDEMPOTENCY_CHANNELS.released];

/**
 * Holds a duplicate of a request in flight (`inFlight: 'wait'`) until the first one's record is
 * settled, by claiming its key again after pauses that back off with jitter, so that all it holds
 * between two claims is a timer: no connection, no transaction, no session state (it works through
 * a transaction pooler and across instances alike). Each claim is the ordinary one, so the key is
 * taken only atomically, as by any request: a stored answer is replayed, a released key is run.
 *
 * Polling is the guarantee. LISTEN/NOTIFY would need a session connection of its own, which a
 * transaction pooler does not keep; within one instance, though, the duplicate is woken as soon as
 * that instance publishes that it stored or released the key.
 */
@Injectable()
export class InFlightWait {
  private waiting = 0;
  /** The wake-ups of the paused duplicates, by key hash (as the events carry it). */
  private readonly paused = new Map<string, Set<() => void>>();

  constructor(@Inject(RESOLVED_IDEMPOTENCY_OPTIONS) private readonly options: ResolvedIdempotencyOptions) {}

  /**
   * With `inFlight: 'wait'`, claims a key found in flight again with `claim` until that gives
   * another outcome; answers `first` or the last in-flight outcome when the wait ran out, when as
   * many duplicates as `inFlightWaiters` already wait, or when the client left. A key in flight
   * for another request (another fingerprint) is a conflict, answered without waiting.
   */
  async wait<T extends ClaimOutcome>(
    request: ClaimRequest,
    first: T,
    exchange: HttpExchange,
    claim: () => Promise<T>,
  ): Promise<T> {
    const socket = exchange.request.socket;
    if (this.options.inFlight !== 'wait' || !isTwin(first, request) || !socket || socket.destroyed) return first;
    if (this.waiting >= this.options.inFlightWaiters) return first;
    const deadline = performance.now() + this.options.inFlightWait;
    const hash = keyHash(request.scope, request.key);
    let outcome = first;
    this.waiting++;
    try {
      for (let pause = FIRST_PAUSE_MS; ; pause = Math.min(pause * 2, LONGEST_PAUSE_MS)) {
        const remaining = deadline - performance.now();
        if (remaining <= 0) return outcome;
        // Between half and all of the pause, so that duplicates do not claim in step.
        await this.pause(hash, Math.min(remaining, pause * (0.5 + Math.random() / 2)), socket);
        if (socket.destroyed) return outcome;
        outcome = await claim();
        if (!isTwin(outcome, request)) return outcome;
      }
    } finally {
      this.waiting--;
    }
  }

  /** Resolves after `ms`, or sooner when this instance settles the key or the client leaves. */
  private pause(hash: string, ms: number, socket: Socket): Promise<void> {
    return new Promise((resolve) => {
      const wake = () => {
        clearTimeout(timer);
        socket.removeListener('close', wake);
        this.forget(hash, wake);
        resolve();
      };
      const timer = setTimeout(wake, ms);
      socket.once('close', wake);
      this.remember(hash, wake);
    });
  }

  private remember(hash: string, wake: () => void): void {
    if (this.paused.size === 0) this.listen('subscribe');
    let wakes = this.paused.get(hash);
    if (!wakes) this.paused.set(hash, (wakes = new Set()));
    wakes.add(wake);
  }

  private forget(hash: string, wake: () => void): void {
    const wakes = this.paused.get(hash);
    if (!wakes?.delete(wake)) return;
    if (wakes.size === 0) this.paused.delete(hash);
    if (this.paused.size === 0) this.listen('unsubscribe');
  }

  /** Events are heard only while a duplicate is paused: otherwise nobody subscribes, and they cost nothing. */
  private listen(how: 'subscribe' | 'unsubscribe'): void {
    for (const name of SETTLED_CHANNELS) diagnostics_channel[how](name, this.onSettled);
  }

  private readonly onSettled = (event: unknown) => {
    const { keyHash: hash } = event as IdempotencyEvent;
    for (const wake of (hash && this.paused.get(hash)) || []) wake();
  };
}

/** The key is in flight for this very request (or for a request not known yet): one to wait for. */
function isTwin(outcome: ClaimOutcome, request: ClaimRequest): boolean {
  return outcome.kind === 'in_flight' && (outcome.fingerprint === null || outcome.fingerprint === request.fingerprint);
}
