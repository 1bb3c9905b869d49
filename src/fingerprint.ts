import { createHash, hash, randomUUID, type Hash } from 'node:crypto';

/** What the fingerprint is computed from: the concrete request, not the route template. */
export interface FingerprintInput {
  method: string;
  /** Path and query string as the client sent them. */
  url: string;
  /** Whether the request carried a body at all (no body differs from `{}`). */
  hasBody: boolean;
  /** The parsed body (JSON object, array, string, Buffer...) as the platform's body parser left it. */
  body: unknown;
}

/**
 * SHA-256 hex of method, URL and a canonical form of the body. Parsed JSON is hashed with sorted
 * keys, so key order and whitespace do not matter; Buffers and strings are hashed as raw bytes.
 */
export function fingerprintRequest(input: FingerprintInput): string {
  const head = `${input.method}\n${input.url}\n`;
  if (!input.hasBody) return sha256(`${head}none`);
  if (Buffer.isBuffer(input.body) || input.body instanceof Uint8Array) return createHash('sha256').update(`${head}raw:`).update(input.body).digest('hex');
  if (typeof input.body === 'string') return sha256(`${head}raw:${input.body}`);
  // A body no parser read is invisible here, so two such requests can never be proven the same:
  // each gets a fingerprint of its own, and a retry is a conflict rather than a wrong replay.
  if (input.body === undefined) return sha256(`${head}unparsed:${randomUUID()}`);
  // A large body is hashed in pieces as its text is built, so its whole text is never held.
  let pieces: Hash | undefined;
  const rest = canonicalJson(input.body, (piece) => (pieces ??= createHash('sha256').update(`${head}json:`)).update(piece));
  return pieces ? pieces.update(rest).digest('hex') : sha256(`${head}json:${rest}`);
}

// One call, without a Hash object: several times cheaper for the short texts most requests have.
const sha256 = (text: string): string => hash('sha256', text, 'hex');

/** Canonical text is handed over in pieces of about this many characters. */
const PIECE_CHARS = 64 * 1024;

/** An object or array whose members are being written: its sorted keys (objects) and the next member. */
interface Container {
  value: any;
  keys: string[] | undefined;
  length: number;
  next: number;
}

/**
 * Writes `value` as JSON with the keys of every object sorted, handing each piece of about
 * PIECE_CHARS to `flush` and returning the rest. Iterative, one stack entry per open container,
 * so a deeply nested body cannot overflow the call stack.
 */
function canonicalJson(value: unknown, flush: (piece: string) => void): string {
  const open: Container[] = [];
  let text = '';
  let item = value;
  for (;;) {
    if (item !== null && typeof item === 'object') {
      const keys = Array.isArray(item) ? undefined : Object.keys(item).sort();
      text += keys ? '{' : '[';
      open.push({ value: item, keys, length: (keys ?? (item as unknown[])).length, next: 0 });
    } else {
      text += JSON.stringify(item) ?? 'null';
    }
    if (text.length >= PIECE_CHARS) {
      flush(text);
      text = '';
    }
    // The next member of the innermost container not yet written, closing those that are done.
    let container = open[open.length - 1] as Container | undefined;
    while (container !== undefined && container.next === container.length) {
      text += container.keys ? '}' : ']';
      open.pop();
      container = open[open.length - 1];
    }
    if (!container) return text;
    const index = container.next++;
    if (container.keys) {
      const key = container.keys[index];
      text += index > 0 ? `,${JSON.stringify(key)}:` : `${JSON.stringify(key)}:`;
      item = container.value[key];
    } else {
      if (index > 0) text += ',';
      item = container.value[index];
    }
  }
}
