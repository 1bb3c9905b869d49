import { createHash } from 'node:crypto';

/** A short, non-reversible name of a scope + key for logs: the raw key or scope is never logged. */
export function keyHash(scope: string, key: string): string {
  return createHash('sha256').update(scope).update('\0').update(key).digest('hex').slice(0, 16);
}

/** The message of anything thrown. */
export function errorMessage(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
