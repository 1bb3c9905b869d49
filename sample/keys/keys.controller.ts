import { Controller, Delete, Get, HttpCode, Param, Patch, Post, Query } from '@nestjs/common';
import { Idempotent } from '../../src';
import { ApiError } from '../errors/api-error';
import { JsonBody } from '../validation/json-body.decorator';
import { type ApiKeyView, type MintedKeyView, toApiKeyView } from './api-key.view';
import { encodeCursor, invalidCursor, isKeyId, parseListQuery, parseMintKey, parseUpdateKey } from './keys.params';
import { KeysService } from './keys.service';

/**
 * The Patomic-style key API. Every route is behind the API key guard; the writes are
 * `@Idempotent()`, so a retry with the same `Idempotency-Key` replays the first answer, and a
 * mint retried after a lost response hands back the same `plain_key` instead of minting another.
 */
@Controller('v1/keys')
export class KeysController {
  constructor(private readonly keys: KeysService) {}

  /** Mints a key; `plain_key` is in this answer (and its replays) only. */
  @Post()
  @Idempotent()
  async mint(@JsonBody() body: unknown): Promise<MintedKeyView> {
    const { key, plainKey } = await this.keys.mint(parseMintKey(body));
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
  @Idempotent()
  async update(@Param('id') id: string, @JsonBody() body: unknown): Promise<ApiKeyView> {
    if (!isKeyId(id)) throw ApiError.resourceMissing('key', id);
    return toApiKeyView(found(id, await this.keys.update(id, parseUpdateKey(body))));
  }

  /** Revokes the key: it stays listed, with `revoked_at` set, and no longer authenticates. */
  @Delete(':id')
  @Idempotent()
  @HttpCode(200)
  async revoke(@Param('id') id: string): Promise<ApiKeyView> {
    return toApiKeyView(found(id, isKeyId(id) ? await this.keys.revoke(id) : null));
  }
}

function found<T>(id: string, value: T | null): T {
  if (value === null) throw ApiError.resourceMissing('key', id);
  return value;
}
