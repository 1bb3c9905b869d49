// The client entry point, separate from the module's (src/index.ts): it needs no NestJS and runs
// wherever global fetch does (Node 18+, browsers, workers).
export {
  idempotentRequest,
  IdempotentRequestError,
  IDEMPOTENCY_KEY_HEADER,
  type IdempotentRequestInit,
  type IdempotentResponse,
  type RetryEvent,
} from './idempotent-request';
