import diagnostics_channel from 'node:diagnostics_channel';
import { keyHash } from './log-format';

/** The events the module publishes, each on the channel `idempotency:<name>`. */
export type IdempotencyEventName =
  | 'claimed'
  | 'replayed'
  | 'conflict'
  | 'in_use'
  | 'stored'
  | 'released'
  | 'lease_lost'
  | 'store_error'
  | 'purged'
  | 'unreadable';

/**
 * What an event carries. Never the raw key, token or body: `keyHash` is a short SHA-256 of scope
 * and key, enough to correlate events of one key.
 */
export interface IdempotencyEvent {
  name: IdempotencyEventName;
  /** `Controller.handler` of the route, when the event belongs to a request. */
  route?: string;
  method?: string;
  keyHash?: string;
  /** The HTTP status answered or stored. */
  status?: number;
  /** Milliseconds since the module started handling the request (or the purge). */
  durationMs?: number;
  /** Rows purged. */
  count?: number;
  /** The error message of a `store_error`, or why an `unreadable` record cannot be opened. */
  error?: string;
}

/** The channel names, for `diagnostics_channel.subscribe(IDEMPOTENCY_CHANNELS.stored, …)`. */
export const IDEMPOTENCY_CHANNELS: Readonly<Record<IdempotencyEventName, string>> = Object.freeze({
  claimed: 'idempotency:claimed',
  replayed: 'idempotency:replayed',
  conflict: 'idempotency:conflict',
  in_use: 'idempotency:in_use',
  stored: 'idempotency:stored',
  released: 'idempotency:released',
  lease_lost: 'idempotency:lease_lost',
  store_error: 'idempotency:store_error',
  purged: 'idempotency:purged',
  unreadable: 'idempotency:unreadable',
});

const channels = new Map(
  Object.entries(IDEMPOTENCY_CHANNELS).map(([name, channel]) => [name as IdempotencyEventName, diagnostics_channel.channel(channel)]),
);

/**
 * Where an event happened: one request on one route, timed from when the module saw it. The route
 * name and the key hash are only computed when an event or a log line reads them.
 */
export class RequestTrace {
  readonly startedAt = performance.now();
  private routeName?: string;
  private identity?: { scope: string; key: string; hash?: string };

  constructor(
    private readonly controller: Function,
    private readonly handler: Function,
    readonly method: string,
  ) {}

  /** `Controller.handler` of the route. */
  get route(): string {
    return (this.routeName ??= `${this.controller.name}.${this.handler.name}`);
  }

  /** The short hash of scope and key (see `keyHash`), once the request has a key. */
  get keyHash(): string | undefined {
    if (!this.identity) return undefined;
    return (this.identity.hash ??= keyHash(this.identity.scope, this.identity.key));
  }

  /** Records the scope and key the request claims. */
  identify(scope: string, key: string): void {
    this.identity = { scope, key };
  }
}

/** Publishes an event; costs nothing when nobody subscribes. */
export function publishEvent(name: IdempotencyEventName, trace: RequestTrace | undefined, details: Partial<IdempotencyEvent> = {}): void {
  const channel = channels.get(name)!;
  if (!channel.hasSubscribers) return;
  const context = trace
    ? { route: trace.route, method: trace.method, keyHash: trace.keyHash, durationMs: performance.now() - trace.startedAt }
    : {};
  channel.publish({ name, ...context, ...details } satisfies IdempotencyEvent);
}
