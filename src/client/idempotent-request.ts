// A fetch wrapper for the product page's best practice: one Idempotency-Key per logical request,
// reused on every attempt, so a retry after a lost answer gets the original answer back instead of
// doing the work twice. No dependency beyond the platform: global fetch, crypto and timers.

/** Options of {@link idempotentRequest}: fetch's own, plus the key and the retry policy. */
export interface IdempotentRequestInit extends RequestInit {
  /** The key of this logical request; store it with your intent before calling to resume after a crash. @default crypto.randomUUID() (or an Idempotency-Key already in `headers`) */
  idempotencyKey?: string;
  /** Request header that carries the key: the server module's `header` option. @default 'Idempotency-Key' */
  header?: string;
  /** Response header that marks a replay: the module's `replayedHeader` option. @default 'idempotency-replayed' */
  replayedHeader?: string | false;
  /** Retries after the first attempt. @default 3 */
  retries?: number;
  /** Backoff cap of the first retry, doubled on each retry up to `maxDelayMs` (full jitter: the wait is random below the cap). @default 200 */
  baseDelayMs?: number;
  /** Largest wait between two attempts; a `Retry-After` asking for longer ends the retries. @default 10_000 */
  maxDelayMs?: number;
  /** The fetch to use. @default globalThis.fetch */
  fetch?: typeof fetch;
  /** Called before each retry, e.g. to log it. */
  onRetry?: (retry: RetryEvent) => void;
}

/** Why and when an attempt is retried. */
export interface RetryEvent {
  /** The attempt that failed (1 for the first). */
  attempt: number;
  /** Milliseconds until the next attempt. */
  delayMs: number;
  /** A network error, a 5xx, or the error code of a 409 the server says a retry can get past. */
  reason: 'network_error' | 'server_error' | 'idempotency_key_in_use' | 'transaction_conflict' | (string & {});
  /** Status of the failed attempt; absent for a network error. */
  status?: number;
  /** The error of a failed network attempt. */
  error?: unknown;
}

/** The answer of {@link idempotentRequest}. */
export interface IdempotentResponse {
  /** The last attempt's response, body unread; it may be a 4xx/5xx once retries are exhausted or not allowed. */
  response: Response;
  /** The server answered from its idempotency record (its replayed header is `true`): the work was done earlier. */
  replayed: boolean;
  /** Attempts made, 1 when the first one settled it. */
  attempts: number;
  /** The key every attempt carried. */
  idempotencyKey: string;
}

/** Thrown when every attempt failed without a response; carries the key so the request can be resumed later. */
export class IdempotentRequestError extends Error {
  override name = 'IdempotentRequestError';

  constructor(
    message: string,
    /** The key every attempt carried: retry later with it to get the original answer if one was produced. */
    readonly idempotencyKey: string,
    /** Attempts made. */
    readonly attempts: number,
    options: { cause: unknown },
  ) {
    super(message, options);
  }
}

/** Name of the request header carrying the key. */
export const IDEMPOTENCY_KEY_HEADER = 'Idempotency-Key';

// 409 codes of the Patomic envelope after which the same request with the same key may succeed: the
// first attempt is still running (in_use), or its transaction lost a serialization race and was
// rolled back. Problem details say so themselves (`retryable`).
const RETRYABLE_CONFLICTS: ReadonlySet<string> = new Set(['idempotency_key_in_use', 'transaction_conflict']);

const VALID_KEY = /^[\x20-\x7e]{1,255}$/;

/**
 * Sends a non-safe request with an `Idempotency-Key` and retries it safely: network errors, 5xx
 * and `409 idempotency_key_in_use` are retried with the same key, exponential backoff with full
 * jitter and `Retry-After` honoured; any other 4xx is returned at once, never retried. Errors may
 * come as the Patomic envelope or as problem details (`errorFormat: 'problem+json'`).
 *
 * @example
 * ```ts
 * const { response, replayed } = await idempotentRequest('https://api.example.com/v1/keys', {
 *   method: 'POST',
 *   headers: { Authorization: `Bearer ${apiKey}`, 'Content-Type': 'application/json' },
 *   body: JSON.stringify({ name: 'CI integration' }),
 *   idempotencyKey: savedIntent.idempotencyKey,
 * });
 * ```
 */
export async function idempotentRequest(url: string | URL, init: IdempotentRequestInit = {}): Promise<IdempotentResponse> {
  const {
    idempotencyKey: givenKey,
    header = IDEMPOTENCY_KEY_HEADER,
    replayedHeader = 'idempotency-replayed',
    retries = 3,
    baseDelayMs = 200,
    maxDelayMs = 10_000,
    fetch: fetchImpl = globalThis.fetch,
    onRetry,
    ...requestInit
  } = init;
  for (const [name, value] of [['retries', retries], ['baseDelayMs', baseDelayMs], ['maxDelayMs', maxDelayMs]] as const) {
    if (!Number.isInteger(value) || value < 0) throw new TypeError(`idempotentRequest: "${name}" must be a non-negative integer, got ${String(value)}.`);
  }
  if (isStream(requestInit.body)) {
    throw new TypeError('idempotentRequest: a stream body cannot be sent again on a retry; pass a string, Uint8Array, Blob, URLSearchParams or FormData.');
  }
  const headers = new Headers(requestInit.headers);
  const idempotencyKey = givenKey ?? headers.get(header) ?? globalThis.crypto.randomUUID();
  if (!VALID_KEY.test(idempotencyKey) || idempotencyKey.trim() === '') {
    throw new TypeError('idempotentRequest: the Idempotency-Key must be 1-255 printable ASCII characters (a UUID is the safe default).');
  }
  headers.set(header, idempotencyKey);
  const signal = requestInit.signal ?? undefined;

  for (let attempt = 1; ; attempt++) {
    let response: Response;
    try {
      response = await fetchImpl(url, { ...requestInit, headers });
    } catch (error) {
      // A deliberate abort is not a failure to work around.
      if (signal?.aborted) throw signal.reason;
      if (attempt > retries) {
        throw new IdempotentRequestError(
          `Request failed after ${attempt} attempt(s) with Idempotency-Key ${idempotencyKey}: ${error instanceof Error ? error.message : String(error)}`,
          idempotencyKey,
          attempt,
          { cause: error },
        );
      }
      const delayMs = backoff(attempt, baseDelayMs, maxDelayMs);
      onRetry?.({ attempt, delayMs, reason: 'network_error', error });
      await sleep(delayMs, signal);
      continue;
    }

    const reason = await retryReason(response);
    const replayed = replayedHeader !== false && response.headers.get(replayedHeader) === 'true';
    const result = { response, replayed, attempts: attempt, idempotencyKey };
    if (reason === null || attempt > retries) return result;
    const retryAfterMs = parseRetryAfter(response.headers.get('retry-after'));
    // Never sooner than the server asked; if it asks for longer than we are willing to wait, the
    // caller gets its answer now rather than a hidden multi-minute sleep.
    if (retryAfterMs !== null && retryAfterMs > maxDelayMs) return result;
    const delayMs = Math.max(retryAfterMs ?? 0, backoff(attempt, baseDelayMs, maxDelayMs));
    onRetry?.({ attempt, delayMs, reason, status: response.status });
    // Free the connection: this answer is dropped.
    await response.body?.cancel().catch(() => undefined);
    await sleep(delayMs, signal);
  }
}

async function retryReason(response: Response): Promise<RetryEvent['reason'] | null> {
  if (response.status >= 500) return 'server_error';
  if (response.status !== 409) return null;
  // Only conflicts that a later attempt can resolve; a key reused with another body
  // (idempotency_key_conflict) must never be retried. The clone leaves the body readable.
  const body = (await response.clone().json().catch(() => undefined)) as ErrorBody | null | undefined;
  // The Patomic envelope, or problem details.
  const code = body?.error?.code ?? body?.code;
  if (typeof code !== 'string') return null;
  const retryable = typeof body?.retryable === 'boolean' ? body.retryable : RETRYABLE_CONFLICTS.has(code);
  return retryable ? code : null;
}

/** What the client reads of an error body. */
interface ErrorBody {
  error?: { code?: unknown };
  code?: unknown;
  retryable?: unknown;
}

/** Full jitter: uniformly random below min(max, base * 2^(attempt-1)). */
function backoff(attempt: number, baseDelayMs: number, maxDelayMs: number): number {
  const cap = Math.min(maxDelayMs, baseDelayMs * 2 ** (attempt - 1));
  return Math.floor(Math.random() * cap);
}

/** `Retry-After` in milliseconds: delay-seconds or an HTTP date; null when absent or unreadable. */
function parseRetryAfter(value: string | null): number | null {
  if (value === null) return null;
  const text = value.trim();
  if (/^\d+$/.test(text)) return Number(text) * 1000;
  const date = Date.parse(text);
  return Number.isNaN(date) ? null : Math.max(0, date - Date.now());
}

function isStream(body: unknown): boolean {
  return (
    typeof body === 'object' &&
    body !== null &&
    (typeof (body as ReadableStream).getReader === 'function' || Symbol.asyncIterator in body)
  );
}

function sleep(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal?.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}
