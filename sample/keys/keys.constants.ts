/** Injection token of the server secret (a Buffer) that API keys are hashed with. */
export const API_KEY_SECRET = Symbol('sample:api-key-secret');

/** `rate_limit_rpm` of a key minted without one. */
export const DEFAULT_RATE_LIMIT_RPM = 60;
