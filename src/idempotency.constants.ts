/** Route metadata key written by `@Idempotent()`; namespaced so it never collides with a DI token. */
export const IDEMPOTENT_ROUTE_METADATA = 'idempotency:route-options';

/** The request header that carries the client's key (matched case-insensitively). */
export const IDEMPOTENCY_KEY_HEADER = 'Idempotency-Key';

/** Response header added to every replayed answer. */
export const REPLAYED_HEADER = 'idempotency-replayed';

/** Methods whose requests the module makes idempotent; everything else passes through. */
export const IDEMPOTENT_METHODS: ReadonlySet<string> = new Set(['POST', 'PUT', 'PATCH', 'DELETE']);

/**
 * Response headers never stored or replayed: they describe one connection or one delivery, not the
 * answer. Configurable additions (`excludeHeaders`) come on top of these.
 */
export const UNSTORED_HEADERS: readonly string[] = ['date', 'connection', 'keep-alive', 'transfer-encoding', 'set-cookie'];
