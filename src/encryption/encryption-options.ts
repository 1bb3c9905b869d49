import { IdempotencyConfigurationError } from '../idempotency.exceptions';
import { bearerToken } from '../idempotency-scope';

/** One key of the ring: an id stored with each record it seals, and 32 random bytes (a Buffer, or base64). */
export interface RecordEncryptionKey {
  id: string;
  secret: Buffer | string;
}

/** Resolves the secret only the caller holds, that caller-bound records are sealed with; `undefined`: unresolved. */
export type CallerSecretResolver = (request: any) => CallerSecret | undefined | Promise<CallerSecret | undefined>;

/** A caller's secret: text (as UTF-8) or bytes. */
export type CallerSecret = string | Buffer;

/** The `encryption` option: seals stored answers with AES-256-GCM. */
export interface RecordEncryptionOptions {
  /** The key ring: the first key seals new records, every key opens the records it sealed. */
  keys: RecordEncryptionKey[];
  /** Also bind each record to a secret of its caller, so the server's keys alone open nothing. @default false */
  bindToCaller?: boolean;
  /** The caller's secret for `bindToCaller`. @default the raw `Authorization: Bearer` token */
  callerSecret?: CallerSecretResolver;
}

/** The `encryption` option checked and copied, as the module uses it. */
export interface ResolvedEncryption {
  /** Every secret by key id, in the order given. */
  keys: ReadonlyMap<string, Buffer>;
  /** The key that seals new records: the first one. */
  sealingKey: { id: string; secret: Buffer };
  /** Set only when records are bound to their callers. */
  callerSecret?: CallerSecretResolver;
}

const SECRET_BYTES = 32;
const KEY_ID = /^[\x21-\x7e]{1,64}$/;
const HOW_TO_MAKE_A_SECRET = 'openssl rand -base64 32';

/** Checks the `encryption` option at bootstrap, saying how to fix what cannot work; undefined when it is not set. */
export function resolveEncryption(options: RecordEncryptionOptions | undefined): ResolvedEncryption | undefined {
  if (options === undefined) return undefined;
  const fail = (message: string): never => {
    throw new IdempotencyConfigurationError(`IdempotencyModule option ${message}`);
  };
  if (!Array.isArray(options.keys) || options.keys.length === 0) {
    fail(`"encryption.keys" lists no key; add { id, secret } with 32 random bytes (${HOW_TO_MAKE_A_SECRET}).`);
  }
  const keys = new Map<string, Buffer>();
  for (const { id, secret } of options.keys) {
    if (typeof id !== 'string' || !KEY_ID.test(id)) {
      const got = JSON.stringify(id);
      fail(`"encryption.keys": a key id must be 1-64 printable ASCII characters without spaces; got ${got}.`);
    }
    if (keys.has(id)) fail(`"encryption.keys" lists the key id "${id}" twice; give each key its own id.`);
    keys.set(id, secretBytes(id, secret, fail));
  }
  if (options.callerSecret !== undefined && options.bindToCaller !== true) {
    fail('"encryption.callerSecret" is only used with bindToCaller: true; set bindToCaller: true, or remove it.');
  }
  const [id, secret] = keys.entries().next().value as [string, Buffer];
  return {
    keys,
    sealingKey: { id, secret },
    callerSecret: options.bindToCaller ? (options.callerSecret ?? bearerToken) : undefined,
  };
}

/** A copy of the secret's bytes, so the caller's Buffer may be reused or zeroed. */
function secretBytes(id: string, secret: Buffer | string, fail: (message: string) => never): Buffer {
  let bytes: Buffer;
  if (Buffer.isBuffer(secret)) {
    bytes = Buffer.from(secret);
  } else {
    bytes = Buffer.from(typeof secret === 'string' ? secret : '', 'base64');
    // Node's decoder skips what is not base64: only a secret that encodes back to itself is one.
    const canonical = (text: string) => text.replace(/=+$/, '').replace(/-/g, '+').replace(/_/g, '/');
    if (typeof secret !== 'string' || canonical(bytes.toString('base64')) !== canonical(secret.trim())) {
      fail(`"encryption.keys": the secret of key "${id}" is not base64; give a Buffer, or base64 of 32 random bytes.`);
    }
  }
  if (bytes.length !== SECRET_BYTES) {
    const problem = `the secret of key "${id}" is ${bytes.length} bytes`;
    fail(`"encryption.keys": ${problem}; it must be 32 random bytes (${HOW_TO_MAKE_A_SECRET}).`);
  }
  return bytes;
}
