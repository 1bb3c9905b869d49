import { createHmac, randomBytes } from 'node:crypto';

/** Every API key starts with this, so leaked keys are easy to recognise (and to scan for). */
export const KEY_PREFIX = 'ptmc_';

/** `ptmc_` + 32 random bytes in base64url (43 characters, no padding). */
export const PLAIN_KEY_PATTERN = /^ptmc_[A-Za-z0-9_-]{43}$/;

/** Characters of the key shown as its `prefix`: `ptmc_` + the first 8 random characters (48 bits). */
const DISPLAY_PREFIX_LENGTH = KEY_PREFIX.length + 8;

/** A new plain API key. It is shown once, to whoever minted it, and never stored. */
export function generatePlainKey(): string {
  return KEY_PREFIX + randomBytes(32).toString('base64url');
}

/**
 * The keyed hash stored instead of the key: HMAC-SHA256 with the server secret, in hex. Keys carry
 * 256 random bits, so a fast hash is enough (no PBKDF2 needed), and the secret means a copy of the
 * table alone does not let anyone check guesses.
 */
export function hashPlainKey(secret: Buffer, plainKey: string): string {
  return createHmac('sha256', secret).update(plainKey, 'utf8').digest('hex');
}

/** What lists show to tell keys apart, e.g. `ptmc_Ab3dE9xQ`; the remaining 35 characters stay secret. */
export function displayPrefixOf(plainKey: string): string {
  return plainKey.slice(0, DISPLAY_PREFIX_LENGTH);
}
