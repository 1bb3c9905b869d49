import { createCipheriv, createDecipheriv, createHmac, randomBytes } from 'node:crypto';
import type { CipherGCM, DecipherGCM } from 'node:crypto';
import type { StoredResponse } from '../store/idempotency.store';
import type { ResolvedEncryption } from './encryption-options';

/**
 * The only entry of a sealed record's `response_headers`, naming the key that sealed it. A colon is
 * never part of an HTTP header name, so no real header of a record in clear is ever taken for it.
 */
export const SEALED_MARKER = ':sealed';

// A sealed `response_body`: format (1) | nonce (12) | wrapped data key (32) | ciphertext | tag (16).
// The ciphertext holds u32 length of the headers' JSON | that JSON | the body.
const SERVER_SEALED = 1;
const CALLER_BOUND = 2;
const NONCE_BYTES = 12;
const KEY_BYTES = 32;
const TAG_BYTES = 16;
/** Format, nonce and wrapped key: what a re-seal under another key rewrites. */
export const SEALED_HEAD_BYTES = 1 + NONCE_BYTES + KEY_BYTES;
const LENGTH_BYTES = 4;
// Large bodies go through the cipher in pieces, written into one buffer: no second whole copy.
const PIECE_BYTES = 64 * 1024;
const CALLER_SALT = Buffer.from('nest-idempotency-pg caller key v1');
const WRAP_INFO = Buffer.from('nest-idempotency-pg record key v1');
const ONE = Buffer.from([1]);

/** Why a record cannot be opened; it is never replayed. */
export class UnreadableRecordError extends Error {
  override name = 'UnreadableRecordError';
}

/** Whether `headers` are those of a sealed record. */
export function isSealed(headers: StoredResponse['headers']): boolean {
  return Object.hasOwn(headers, SEALED_MARKER);
}

/**
 * Seals and opens stored answers with AES-256-GCM (README, "Security"). Each record gets a random
 * data key and nonce; the data key is stored masked with a key derived (HKDF-Expand) from the ring
 * key, the nonce, the scope and the idempotency key, and, for caller-bound records, also with a key
 * derived (HKDF) from the caller's secret. Rotation therefore rewrites only the masked data key
 * (see `remask`), for caller-bound records too. The status, scope and key are authenticated data:
 * a record with another status, or copied to another scope or key, never opens.
 */
export class RecordSealer {
  constructor(private readonly encryption: ResolvedEncryption) {}

  /** The cipher of one record for the request that claims it; undefined when its caller's secret is unresolved. */
  async cipherFor(request: unknown, scope: string, key: string): Promise<RecordCipher | undefined> {
    const resolve = this.encryption.callerSecret;
    if (!resolve) return new RecordCipher(this.encryption, scope, key, undefined);
    const secret = await resolve(request);
    if (secret === undefined || secret.length === 0) return undefined;
    return new RecordCipher(this.encryption, scope, key, typeof secret === 'string' ? Buffer.from(secret) : secret);
  }
}

/** Seals and opens the answer of one record (one scope and key), for one request. */
export class RecordCipher {
  // Private fields: neither a log line nor JSON.stringify of this object shows them.
  readonly #encryption: ResolvedEncryption;
  readonly #record: Buffer;
  readonly #callerSecret: Buffer | undefined;

  constructor(encryption: ResolvedEncryption, scope: string, key: string, callerSecret: Buffer | undefined) {
    this.#encryption = encryption;
    this.#record = recordIdBytes(scope, key);
    this.#callerSecret = callerSecret;
  }

  /** The response as stored: headers and body sealed under the newest key; one without a body keeps no headers. */
  seal({ status, headers, body }: StoredResponse): StoredResponse {
    if (body === null) return { status, headers: {}, body: null };
    const { id, secret } = this.#encryption.sealingKey;
    const format = this.#callerSecret ? CALLER_BOUND : SERVER_SEALED;
    const headerJson = Buffer.from(JSON.stringify(headers));
    const prefix = Buffer.allocUnsafe(LENGTH_BYTES + headerJson.length);
    prefix.writeUInt32BE(headerJson.length, 0);
    headerJson.copy(prefix, LENGTH_BYTES);

    const sealed = Buffer.allocUnsafe(SEALED_HEAD_BYTES + prefix.length + body.length + TAG_BYTES);
    sealed[0] = format;
    const nonce = randomBytes(NONCE_BYTES);
    nonce.copy(sealed, 1);
    const dataKey = randomBytes(KEY_BYTES);
    xor(dataKey, this.#mask(format, secret, nonce), sealed, 1 + NONCE_BYTES);

    const cipher = createCipheriv('aes-256-gcm', dataKey, nonce) as CipherGCM;
    cipher.setAAD(this.#aad(format, status));
    let offset = pour(cipher, prefix, sealed, SEALED_HEAD_BYTES);
    offset = pour(cipher, body, sealed, offset);
    offset += cipher.final().copy(sealed, offset);
    cipher.getAuthTag().copy(sealed, offset);
    return { status, headers: { [SEALED_MARKER]: id }, body: sealed };
  }

  /** The response as it was sent; throws UnreadableRecordError when the record cannot be opened. */
  open({ status, headers, body }: StoredResponse): StoredResponse {
    const id = headers[SEALED_MARKER];
    const secret = typeof id === 'string' ? this.#encryption.keys.get(id) : undefined;
    if (!secret) throw new UnreadableRecordError(`it is sealed under the key "${String(id)}", not in encryption.keys`);
    if (body === null || body.length < SEALED_HEAD_BYTES + LENGTH_BYTES + TAG_BYTES) {
      throw new UnreadableRecordError('its sealed body is truncated');
    }
    const format = body[0];
    if (format !== SERVER_SEALED && format !== CALLER_BOUND) {
      throw new UnreadableRecordError(`its sealed body has an unknown format (${format})`);
    }
    if (format === CALLER_BOUND && !this.#callerSecret) {
      throw new UnreadableRecordError('it is bound to its caller, and this module does not bind records');
    }

    const nonce = body.subarray(1, 1 + NONCE_BYTES);
    const dataKey = Buffer.allocUnsafe(KEY_BYTES);
    xor(body.subarray(1 + NONCE_BYTES, SEALED_HEAD_BYTES), this.#mask(format, secret, nonce), dataKey, 0);
    const decipher = createDecipheriv('aes-256-gcm', dataKey, nonce) as DecipherGCM;
    decipher.setAAD(this.#aad(format, status));
    decipher.setAuthTag(body.subarray(body.length - TAG_BYTES));
    const plain = Buffer.allocUnsafe(body.length - SEALED_HEAD_BYTES - TAG_BYTES);
    const end = pour(decipher, body.subarray(SEALED_HEAD_BYTES, body.length - TAG_BYTES), plain, 0);
    try {
      // Nothing deciphered is used before the tag has been checked here.
      decipher.final();
    } catch {
      throw new UnreadableRecordError(
        'it does not authenticate: changed in the table, moved to another scope or key, or sealed for another caller',
      );
    }
    const headerLength = plain.readUInt32BE(0);
    if (end !== plain.length || LENGTH_BYTES + headerLength > plain.length) {
      throw new UnreadableRecordError('its sealed content is malformed');
    }
    return {
      status,
      headers: JSON.parse(plain.toString('utf8', LENGTH_BYTES, LENGTH_BYTES + headerLength)),
      body: plain.subarray(LENGTH_BYTES + headerLength),
    };
  }

  /** What masks the data key: from the ring key, and for a caller-bound record from the caller's secret too. */
  #mask(format: number, secret: Buffer, nonce: Buffer): Buffer {
    const mask = ringMask(secret, nonce, this.#record);
    if (format === CALLER_BOUND) xor(mask, hkdf(this.#callerSecret!, CALLER_SALT, this.#record), mask, 0);
    return mask;
  }

  #aad(format: number, status: number): Buffer {
    const aad = Buffer.allocUnsafe(3 + this.#record.length);
    aad[0] = format;
    aad.writeUInt16BE(status, 1);
    this.#record.copy(aad, 3);
    return aad;
  }
}

/**
 * The head of a sealed body (`SEALED_HEAD_BYTES`) re-masked from the ring key `from` to `to`: the
 * same data key, so the rest of the body stays as it is. Needs no caller secret.
 */
export function remask(head: Buffer, scope: string, key: string, from: Buffer, to: Buffer): Buffer {
  const record = recordIdBytes(scope, key);
  const nonce = head.subarray(1, 1 + NONCE_BYTES);
  const remasked = Buffer.from(head);
  const wrapped = remasked.subarray(1 + NONCE_BYTES, SEALED_HEAD_BYTES);
  xor(wrapped, ringMask(from, nonce, record), wrapped, 0);
  xor(wrapped, ringMask(to, nonce, record), wrapped, 0);
  return remasked;
}

/** HKDF-Expand (RFC 5869) of one block with the ring key as the pseudorandom key: the ring key is 32 random bytes. */
function ringMask(secret: Buffer, nonce: Buffer, record: Buffer): Buffer {
  return createHmac('sha256', secret).update(WRAP_INFO).update(nonce).update(record).update(ONE).digest();
}

/** HKDF-SHA256 (RFC 5869), extract then expand, of 32 bytes. */
function hkdf(ikm: Buffer, salt: Buffer, info: Buffer): Buffer {
  const prk = createHmac('sha256', salt).update(ikm).digest();
  return createHmac('sha256', prk).update(info).update(ONE).digest();
}

/** Scope and key, each length-prefixed, so ("a b", "c") and ("a", "b c") stay apart. */
function recordIdBytes(scope: string, key: string): Buffer {
  const scopeLength = Buffer.byteLength(scope);
  const keyLength = Buffer.byteLength(key);
  const bytes = Buffer.allocUnsafe(8 + scopeLength + keyLength);
  bytes.writeUInt32BE(scopeLength, 0);
  bytes.write(scope, 4);
  bytes.writeUInt32BE(keyLength, 4 + scopeLength);
  bytes.write(key, 8 + scopeLength);
  return bytes;
}

/** Writes `a` XOR `b` (KEY_BYTES each) into `target` at `offset`. */
function xor(a: Buffer, b: Buffer, target: Buffer, offset: number): void {
  for (let i = 0; i < KEY_BYTES; i++) target[offset + i] = a[i] ^ b[i];
}

/** Runs `input` through the cipher in pieces into `target` at `offset`; returns the offset after it. */
function pour(cipher: CipherGCM | DecipherGCM, input: Buffer, target: Buffer, offset: number): number {
  for (let start = 0; start < input.length; start += PIECE_BYTES) {
    offset += cipher.update(input.subarray(start, start + PIECE_BYTES)).copy(target, offset);
  }
  return offset;
}
