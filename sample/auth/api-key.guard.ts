import { type CanActivate, type ExecutionContext, Injectable } from '@nestjs/common';
import type { Response } from 'express';
import { ApiError } from '../errors/api-error';
import { KeysService } from '../keys/keys.service';
import type { AuthenticatedRequest } from './authenticated-request';

const BEARER = /^Bearer[ \t]+(\S+)[ \t]*$/i;

/**
 * Lets a request through only with `Authorization: Bearer <active key>` and leaves the key on
 * `request.apiKey` for the idempotency scope. Missing, malformed, unknown and revoked keys all get
 * the same 401, so the answer tells a caller nothing about which keys exist.
 */
@Injectable()
export class ApiKeyGuard implements CanActivate {
  constructor(private readonly keys: KeysService) {}

  async canActivate(context: ExecutionContext): Promise<boolean> {
    const http = context.switchToHttp();
    const request = http.getRequest<AuthenticatedRequest>();
    const token = BEARER.exec(request.headers.authorization ?? '')?.[1];
    const key = token === undefined ? null : await this.keys.authenticate(token);
    if (key === null) {
      http.getResponse<Response>().setHeader('WWW-Authenticate', 'Bearer realm="patomic"');
      throw ApiError.authentication();
    }
    request.apiKey = { id: key.id, prefix: key.prefix };
    return true;
  }
}
