import { createHash, randomUUID, type Hash } from 'node:crypto';

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
  const hash = createHash('sha256');
  hash.update(`${input.method}\n${input.url}\n`);
  if (!input.hasBody) hash.update('none');
  else if (Buffer.isBuffer(input.body) || input.body instanceof Uint8Array) hash.update('raw:').update(input.body);
  else if (typeof input.body === 'string') hash.update('raw:').update(input.body, 'utf8');
  // A body no parser read is invisible here, so two such requests can never be proven the same:
  // each gets a fingerprint of its own, and a retry is a conflict rather than a wrong replay.
  else if (input.body === undefined) hash.update(`unparsed:${randomUUID()}`);
  else {
    hash.update('json:');
    hashCanonicalJson(hash, input.body);
  }
  return hash.digest('hex');
}

/**
 * Feeds a canonical JSON rendering of `value` into `hash`. Iterative, with an explicit stack, so a
 * deeply nested body cannot overflow the call stack.
 */
function hashCanonicalJson(hash: Hash, value: unknown): void {
  const stack: unknown[] = [value];
  while (stack.length > 0) {
    const item = stack.pop();
    if (item instanceof Token) {
      hash.update(item.text);
    } else if (Array.isArray(item)) {
      stack.push(Token.closeArray);
      for (let i = item.length - 1; i >= 0; i--) {
        stack.push(item[i]);
        if (i > 0) stack.push(Token.comma);
      }
      stack.push(Token.openArray);
    } else if (item !== null && typeof item === 'object') {
      const keys = Object.keys(item).sort();
      stack.push(Token.closeObject);
      for (let i = keys.length - 1; i >= 0; i--) {
        stack.push((item as Record<string, unknown>)[keys[i]]);
        stack.push(new Token(`${i > 0 ? ',' : ''}${JSON.stringify(keys[i])}:`));
      }
      stack.push(Token.openObject);
    } else {
      hash.update(JSON.stringify(item) ?? 'null');
    }
  }
}

class Token {
  static readonly openArray = new Token('[');
  static readonly closeArray = new Token(']');
  static readonly openObject = new Token('{');
  static readonly closeObject = new Token('}');
  static readonly comma = new Token(',');
  constructor(readonly text: string) {}
}
