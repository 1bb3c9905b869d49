import type { OpenApiSchema } from './error-envelope.schema';

/**
 * The schema of the module's errors under `errorFormat: 'problem+json'` (`formatProblemDetails`),
 * with `code` narrowed to `codes`. A host that swaps the renderer with `formatError` answers something else.
 */
export function problemDetailsSchema(codes: readonly string[]): OpenApiSchema {
  return {
    type: 'object',
    required: ['type', 'title', 'status', 'detail', 'instance', 'code', 'retryable'],
    properties: {
      type: { type: 'string', format: 'uri', description: 'Documentation of this error code.' },
      title: { type: 'string', description: 'A short summary of the error code.' },
      status: { type: 'integer', description: 'The HTTP status of this answer.' },
      detail: { type: 'string', description: 'What went wrong, for humans.' },
      instance: { type: 'string', format: 'uri', description: 'Identifies this occurrence (`urn:uuid:…`).' },
      code: { type: 'string', enum: [...codes], description: 'Machine-readable error code.' },
      retryable: { type: 'boolean', description: 'A retry with the same key may succeed (after `Retry-After`).' },
    },
  };
}
