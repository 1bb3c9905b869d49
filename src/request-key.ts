import { IDEMPOTENCY_KEY_HEADER } from './idempotency.constants';

/** Result of reading the `Idempotency-Key` header: absent, invalid, or a valid key. */
export type RequestKey = { kind: 'absent' } | { kind: 'invalid' } | { kind: 'valid'; key: string };

const MAX_KEY_LENGTH = 255;
const PRINTABLE_ASCII = /^[\x20-\x7e]+$/;

/**
 * Reads the key from the raw header lines (`IncomingMessage.rawHeaders`) of the header `name`,
 * given in lower case. Raw lines are needed because Node joins repeated headers with ", ", which
 * would make two header lines look like one key that legitimately contains a comma.
 */
export function readRequestKey(rawHeaders: readonly string[], name = IDEMPOTENCY_KEY_HEADER.toLowerCase()): RequestKey {
  let value: string | undefined;
  for (let i = 0; i < rawHeaders.length; i += 2) {
    if (rawHeaders[i].length === name.length && rawHeaders[i].toLowerCase() === name) {
      if (value !== undefined) return { kind: 'invalid' };
      value = rawHeaders[i + 1];
    }
  }
  if (value === undefined) return { kind: 'absent' };
  // Only the spaces and tabs HTTP allows around a value; String#trim() would also eat non-ASCII
  // spaces such as U+00A0, turning an invalid key into a valid one.
  let key = value.replace(/^[ \t]+|[ \t]+$/g, '');
  // The IETF draft sends the key as a structured-field string: "abc" is the same key as abc.
  if (key.length >= 2 && key.startsWith('"') && key.endsWith('"')) key = key.slice(1, -1);
  if (key.length === 0 || key.length > MAX_KEY_LENGTH || !PRINTABLE_ASCII.test(key) || !/[^ ]/.test(key)) {
    return { kind: 'invalid' };
  }
  return { kind: 'valid', key };
}
