import { ApiError } from '../errors/api-error';
import { bodyFields, queryFields, readInteger, readString } from '../validation/request-fields';
import { DEFAULT_RATE_LIMIT_RPM } from './keys.constants';
import type { MintKeyInput, UpdateKeyInput } from './keys.service';

const NAME = { maxLength: 100 };
const RATE_LIMIT_RPM = { min: 1, max: 100_000 };
const PAGE_SIZE = { min: 1, max: 100, fromText: true };
const DEFAULT_PAGE_SIZE = 20;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/** `POST /v1/keys`: `{name: string 1–100, rate_limit_rpm?: integer 1–100000}`. */
export function parseMintKey(body: unknown): MintKeyInput {
  const fields = bodyFields(body, ['name', 'rate_limit_rpm']);
  return {
    name: readString(fields, 'name', { required: true, ...NAME }),
    rateLimitRpm: readInteger(fields, 'rate_limit_rpm', RATE_LIMIT_RPM) ?? DEFAULT_RATE_LIMIT_RPM,
  };
}

/** `PATCH /v1/keys/:id`: `{name?, rate_limit_rpm?}`; an empty object changes nothing. */
export function parseUpdateKey(body: unknown): UpdateKeyInput {
  const fields = bodyFields(body, ['name', 'rate_limit_rpm']);
  return {
    name: readString(fields, 'name', NAME),
    rateLimitRpm: readInteger(fields, 'rate_limit_rpm', RATE_LIMIT_RPM),
  };
}

/** `GET /v1/keys?page_size=&cursor=`: the page size and the id the page starts after. */
export function parseListQuery(query: unknown): { pageSize: number; afterId: string | null } {
  const fields = queryFields(query, ['page_size', 'cursor']);
  const pageSize = readInteger(fields, 'page_size', PAGE_SIZE) ?? DEFAULT_PAGE_SIZE;
  const cursor = fields.cursor;
  if (cursor === undefined) return { pageSize, afterId: null };
  const afterId = typeof cursor === 'string' ? decodeCursor(cursor) : null;
  if (afterId === null) throw invalidCursor();
  return { pageSize, afterId };
}

/** The 400 for a cursor that no list answer ever handed out. */
export function invalidCursor(): ApiError {
  return ApiError.invalidParameter('cursor', '"cursor" must be a next_cursor value from a previous list answer.');
}

/**
 * The opaque `next_cursor`: the id of the last key of the page, in base64url. Opaque so clients
 * pass it back as is, and so its content may change later without breaking them.
 */
export function encodeCursor(lastId: string): string {
  return Buffer.from(`key:${lastId}`, 'utf8').toString('base64url');
}

function decodeCursor(cursor: string): string | null {
  const text = Buffer.from(cursor, 'base64url').toString('utf8');
  const id = text.startsWith('key:') ? text.slice(4) : '';
  // Only the exact encoding we hand out is accepted (base64url decoding forgives stray characters).
  return isKeyId(id) && encodeCursor(id) === cursor ? id : null;
}

/** Whether `id` has the shape of a key id (a lower-case UUID); anything else cannot name a key. */
export function isKeyId(id: string): boolean {
  return UUID.test(id);
}
