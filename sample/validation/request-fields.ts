import { ApiError } from '../errors/api-error';

/** The fields of a JSON body or of a query string, checked against the names an endpoint accepts. */
export type RequestFields = Readonly<Record<string, unknown>>;

/**
 * The body as an object of fields. Anything but a JSON object is rejected, and so is any field the
 * endpoint does not know: a typo such as `rate_limit` must not be silently ignored.
 */
export function bodyFields(body: unknown, allowed: readonly string[]): RequestFields {
  if (body === null || typeof body !== 'object' || Array.isArray(body)) {
    throw ApiError.invalidBody(`The request body must be a JSON object, not ${Array.isArray(body) ? 'an array' : typeof body === 'object' ? 'null' : typeof body}.`);
  }
  return onlyAllowed(body as Record<string, unknown>, allowed);
}

/** The query string as fields; unknown parameters are rejected as in the body. */
export function queryFields(query: unknown, allowed: readonly string[]): RequestFields {
  return onlyAllowed((query ?? {}) as Record<string, unknown>, allowed);
}

function onlyAllowed(fields: Record<string, unknown>, allowed: readonly string[]): RequestFields {
  for (const name of Object.keys(fields)) {
    if (!allowed.includes(name)) {
      throw ApiError.invalidParameter(name, `Unknown parameter "${name}"; this endpoint accepts ${allowed.map((a) => `"${a}"`).join(', ') || 'none'}.`);
    }
  }
  return fields;
}

/** Reads a string field of 1 to `maxLength` characters (code points), not only whitespace. */
export function readString(fields: RequestFields, name: string, rule: { required: true; maxLength: number }): string;
export function readString(fields: RequestFields, name: string, rule: { required?: false; maxLength: number }): string | undefined;
export function readString(fields: RequestFields, name: string, rule: { required?: boolean; maxLength: number }): string | undefined {
  const value = fields[name];
  if (value === undefined) {
    if (rule.required) throw ApiError.parameterMissing(name);
    return undefined;
  }
  if (typeof value !== 'string') throw ApiError.invalidParameter(name, `"${name}" must be a string.`);
  const length = [...value].length;
  if (length === 0 || value.trim() === '' || length > rule.maxLength) {
    throw ApiError.invalidParameter(name, `"${name}" must be 1 to ${rule.maxLength} characters long and not blank.`);
  }
  return value;
}

/**
 * Reads an integer field within [min, max]. JSON bodies must send a number (`"60"` is refused);
 * query strings are text by nature, so `fromText` accepts plain decimal digits there.
 */
export function readInteger(fields: RequestFields, name: string, rule: { min: number; max: number; fromText?: boolean }): number | undefined {
  let value = fields[name];
  if (value === undefined) return undefined;
  if (rule.fromText) {
    if (typeof value !== 'string' || !/^\d{1,9}$/.test(value)) {
      throw ApiError.invalidParameter(name, `"${name}" must be an integer from ${rule.min} to ${rule.max}.`);
    }
    value = Number(value);
  }
  if (typeof value !== 'number' || !Number.isInteger(value) || value < rule.min || value > rule.max) {
    throw ApiError.invalidParameter(name, `"${name}" must be an integer from ${rule.min} to ${rule.max}.`);
  }
  return value;
}
