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
 * Values JSON lacks (BigInt, NaN, Date, Map, class instances...) get tagged forms of their own.
 */
export function fingerprintRequest(input: FingerprintInput): string {
  const head = `${input.method}\n${input.url}\n`;
  if (!input.hasBody) return sha256(`${head}none`);
  if (Buffer.isBuffer(input.body) || input.body instanceof Uint8Array) {
    return createHash('sha256').update(`${head}raw:`).update(input.body).digest('hex');
  }
  if (typeof input.body === 'string') return sha256(`${head}raw:${input.body}`);
  // A body no parser read is invisible here, so two such requests can never be proven the same:
  // each gets a fingerprint of its own, and a retry is a conflict rather than a wrong replay.
  if (input.body === undefined) return unprovable(head);
  // A large body is hashed in pieces as its text is built, so its whole text is never held.
  let pieces: Hash | undefined;
  let rest: string;
  try {
    rest = canonicalJson(input.body, (piece) => (pieces ??= createHash('sha256').update(`${head}json:`)).update(piece));
  } catch {
    // A body that cannot be read whole (a toJSON() or getter that throws, a cycle) is never proven the same either.
    return unprovable(head);
  }
  return pieces ? pieces.update(rest).digest('hex') : sha256(`${head}json:${rest}`);
}

/** A fingerprint no other request has. */
const unprovable = (head: string): string => sha256(`${head}unparsed:${randomUUID()}`);

// One call, without a Hash object: several times cheaper for the short texts most requests have.
const sha256 = (text: string): string => hash('sha256', text, 'hex');

/** Canonical text is handed over in pieces of about this many characters. */
const PIECE_CHARS = 64 * 1024;

/** Containers open deeper than this are tracked: a cyclic body, which never ends, nests past it. */
const TRACKED_DEPTH = 64;

/**
 * An object, array or tagged value whose members are being written: its sorted keys (objects),
 * the next member and what closes it. `of` is the value it writes.
 */
interface Container {
  of: object;
  value: any;
  keys: string[] | undefined;
  length: number;
  next: number;
  close: string;
}

/**
 * Writes `value` as JSON with the keys of every object sorted, handing each piece of about
 * PIECE_CHARS to `flush` and returning the rest. Iterative, one stack entry per open container,
 * so a deeply nested body cannot overflow the call stack. Throws on a cyclic value.
 *
 * JSON values are written as JSON.stringify() writes them. Others never as a JSON value: NaN,
 * Infinity and undefined by name, a BigInt with an `n`, any other object than a plain one or an
 * array as `Name(content)`, its content being what toJSON() returns (a Date's ISO string), what
 * it iterates (a Map's entries, a Set's values), or else its own properties.
 */
function canonicalJson(value: unknown, flush: (piece: string) => void): string {
  const open: Container[] = [];
  let tracked: Set<object> | undefined;
  let text = '';
  let item = value;
  for (;;) {
    if (item !== null && typeof item === 'object') {
      if (open.length >= TRACKED_DEPTH) {
        tracked ??= new Set();
        if (tracked.has(item)) throw new TypeError('a cyclic body has no canonical form');
        tracked.add(item);
      }
      let container: Container;
      if (Array.isArray(item)) {
        text += '[';
        container = { of: item, value: item, keys: undefined, length: item.length, next: 0, close: ']' };
      } else if (isPlainObject(item)) {
        const keys = Object.keys(item).sort();
        text += '{';
        container = { of: item, value: item, keys, length: keys.length, next: 0, close: '}' };
      } else {
        text += `${(item as { constructor?: { name?: string } }).constructor?.name ?? ''}(`;
        container = { of: item, value: [contentOf(item)], keys: undefined, length: 1, next: 0, close: ')' };
      }
      open.push(container);
    } else {
      text += typeof item === 'string' ? JSON.stringify(item) : typeof item === 'bigint' ? `${item}n` : String(item);
    }
    if (text.length >= PIECE_CHARS) {
      flush(text);
      text = '';
    }
    // The next member of the innermost container not yet written, closing those that are done.
    let container = open[open.length - 1] as Container | undefined;
    while (container !== undefined && container.next === container.length) {
      text += container.close;
      tracked?.delete(container.of);
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

function isPlainObject(value: object): boolean {
  const prototype = Object.getPrototypeOf(value);
  return prototype === Object.prototype || prototype === null;
}

/** What stands for an object that is neither plain nor an array. */
function contentOf(value: any): unknown {
  if (typeof value.toJSON === 'function') return value.toJSON();
  // A Map's entries, a Set's or a typed array's values, in their order.
  if (typeof value[Symbol.iterator] === 'function') return [...value];
  return { ...value };
}
