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

/** Canonical text is handed to the hash in pieces of about this many characters. */
const FLUSH_AT = 64 * 1024;

/**
 * Feeds a canonical JSON rendering of `value` into `hash`. Iterative, with an explicit stack, so a
 * deeply nested body cannot overflow the call stack; the text is built up and hashed in large
 * pieces, since every `update()` call has a fixed cost.
 */
function hashCanonicalJson(hash: Hash, value: unknown): void {
  const stack: unknown[] = [value];
  let text = '';
  while (stack.length > 0) {
    const item = stack.pop();
    if (item instanceof Token) {
      text += item.text;
    } else if (Array.isArray(item)) {
      stack.push(Token.closeArray);
      for (let i = item.length - 1; i >= 0; i--) {
        stack.push(item[i]);
        if (i > 0) stack.push(Token.comma);
      }
      text += '[';
    } else if (item !== null && typeof item === 'object') {
      const keys = Object.keys(item).sort();
      stack.push(Token.closeObject);
      for (let i = keys.length - 1; i >= 0; i--) {
        stack.push((item as Record<string, unknown>)[keys[i]]);
        stack.push(new Token(`${i > 0 ? ',' : ''}${JSON.stringify(keys[i])}:`));
      }
      text += '{';
    } else {
      text += JSON.stringify(item) ?? 'null';
    }
    if (text.length >= FLUSH_AT) {
      hash.update(text);
      text = '';
    }
  }
  hash.update(text);
}

class Token {
  static readonly closeArray = new Token(']');
  static readonly closeObject = new Token('}');
  static readonly comma = new Token(',');
  constructor(readonly text: string) {}
}
