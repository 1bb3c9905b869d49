import { Controller, Delete, Get, HttpCode, Param, Patch, Post, Query } from '@nestjs/common';
import type { EntityManager } from 'typeorm';
import { Idempotent, IdempotencyTransaction } from '../../src';
import { ApiError } from '../errors/api-error';
import { JsonBody } from '../validation/json-body.decorator';
import { type ApiKeyView, type MintedKeyView, toApiKeyView } from './api-key.view';
import { encodeCursor, invalidCursor, isKeyId, parseListQuery, parseMintKey, parseUpdateKey } from './keys.params';
import { KeysService } from './keys.service';

/**
 * The Patomic-style key API. Every route is behind the API key guard; the writes are
 * `@Idempotent({ transactional: true })`: the row a write changes and the answer stored for its
 * `Idempotency-Key` commit together, so a retry replays the first answer (a mint retried after a
 * lost response hands back the same `plain_key`) and a failed request leaves nothing behind.
 */
@Controller('v1/keys')
export class KeysController {
  constructor(private readonly keys: KeysService) {}

  /** Mints a key; `plain_key` is in this answer (and its replays) only. */
  @Post()
  @Idempotent({ transactional: true })
  async mint(@JsonBody() body: unknown, @IdempotencyTransaction() manager: EntityManager): Promise<MintedKeyView> {
    const { key, plainKey } = await this.keys.mint(parseMintKey(body), manager);
    return { ...toApiKeyView(key), plain_key: plainKey };
  }

  /** Lists keys newest first; `next_cursor` is null on the last page. */
  @Get()
  async list(@Query() query: unknown): Promise<{ data: ApiKeyView[]; next_cursor: string | null }> {
    const { pageSize, afterId } = parseListQuery(query);
    if (afterId !== null && !(await this.keys.exists(afterId))) throw invalidCursor();
    const page = await this.keys.list(pageSize, afterId);
    return { data: page.keys.map(toApiKeyView), next_cursor: page.lastIdIfMore === null ? null : encodeCursor(page.lastIdIfMore) };
  }

  @Get(':id')
  async get(@Param('id') id: string): Promise<ApiKeyView> {
    return toApiKeyView(found(id, isKeyId(id) ? await this.keys.find(id) : null));
  }

  @Patch(':id')
  @Idempotent({ transactional: true })
  async update(@Param('id') id: string, @JsonBody() body: unknown, @IdempotencyTransaction() manager: EntityManager): Promise<ApiKeyView> {
    if (!isKeyId(id)) throw ApiError.resourceMissing('key', id);
    return toApiKeyView(found(id, await this.keys.update(id, parseUpdateKey(body), manager)));
  }

  /** Revokes the key: it stays listed, with `revoked_at` set, and no longer authenticates. */
  @Delete(':id')
  @Idempotent({ transactional: true })
  @HttpCode(200)
  async revoke(@Param('id') id: string, @IdempotencyTransaction() manager: EntityManager): Promise<ApiKeyView> {
    return toApiKeyView(found(id, isKeyId(id) ? await this.keys.revoke(id, manager) : null));
  }
}

function found<T>(id: string, value: T | null): T {
  if (value === null) throw ApiError.resourceMissing('key', id);
  return value;
}
