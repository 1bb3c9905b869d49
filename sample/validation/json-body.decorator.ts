import { createParamDecorator, type ExecutionContext } from '@nestjs/common';
import type { Request } from 'express';
import { ApiError } from '../errors/api-error';

/**
 * The parsed JSON body, or `{}` when the request has none. A body sent as anything but JSON is
 * refused with 415, rather than read as "no fields" and answered with a puzzling "name is required".
 * Like pipes, it runs after the idempotency claim, so its 4xx is stored and replayed.
 */
export const JsonBody = createParamDecorator((_data: unknown, context: ExecutionContext): unknown => {
  const request = context.switchToHttp().getRequest<Request>();
  const length = request.headers['content-length'];
  const hasBody = (length !== undefined && length !== '0') || request.headers['transfer-encoding'] !== undefined;
  if (hasBody && !request.is('application/json')) throw ApiError.unsupportedMediaType();
  return request.body ?? {};
});
