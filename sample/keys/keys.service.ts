import { Inject, Injectable } from '@nestjs/common';
import { InjectDataSource, InjectRepository } from '@nestjs/typeorm';
import { randomUUID } from 'node:crypto';
import { DataSource, type EntityManager, IsNull, Repository } from 'typeorm';
import { ApiKeyEntity } from './api-key.entity';
import { API_KEY_SECRET } from './keys.constants';
import { displayPrefixOf, generatePlainKey, hashPlainKey, PLAIN_KEY_PATTERN } from './key-material';

/** What minting a key needs. */
export interface MintKeyInput {
  name: string;
  rateLimitRpm: number;
}

/** What an update may change. */
export interface UpdateKeyInput {
  name?: string;
  rateLimitRpm?: number;
}

/** A freshly minted key: the row, and the plain key that exists only in this answer. */
export interface MintedKey {
  key: ApiKeyEntity;
  plainKey: string;
}

/** One page of keys, newest first, and the id of the last one when more follow. */
export interface KeyPage {
  keys: ApiKeyEntity[];
  lastIdIfMore: string | null;
}

// Serialises first-start bootstraps of several instances on one database.
const BOOTSTRAP_LOCK = "hashtext('patomic-sample:bootstrap-key')";

/** Mints, lists, updates, revokes and authenticates API keys. Plain keys are never stored. */
@Injectable()
export class KeysService {
  constructor(
    @InjectRepository(ApiKeyEntity) private readonly keys: Repository<ApiKeyEntity>,
    @InjectDataSource() private readonly dataSource: DataSource,
    @Inject(API_KEY_SECRET) private readonly secret: Buffer,
  ) {}

  /**
   * Mints a key and stores its hash; the plain key is returned once, here. Given the request's
   * idempotency transaction, the key row commits together with the stored answer.
   */
  mint(input: MintKeyInput, manager: EntityManager = this.keys.manager): Promise<MintedKey> {
    return this.insert(manager, input);
  }

  /**
   * Mints the first key when the table has none, and returns its plain key; returns null when any
   * key (even a revoked one) exists. An advisory lock makes two instances starting together mint one.
   */
  bootstrap(): Promise<string | null> {
    return this.dataSource.transaction(async (manager) => {
      await manager.query(`SELECT pg_advisory_xact_lock(${BOOTSTRAP_LOCK})`);
      const [{ found }] = await manager.query('SELECT EXISTS (SELECT 1 FROM api_keys) AS found');
      if (found) return null;
      const { plainKey } = await this.insert(manager, { name: 'Bootstrap key', rateLimitRpm: 60 });
      return plainKey;
    });
  }

  /** The active (not revoked) key whose plain value is `plainKey`, if any. */
  async authenticate(plainKey: string): Promise<ApiKeyEntity | null> {
    if (!PLAIN_KEY_PATTERN.test(plainKey)) return null;
    return this.keys.findOneBy({ keyHash: hashPlainKey(this.secret, plainKey), revokedAt: IsNull() });
  }

  /** A page of keys (revoked ones included), newest first, starting after the key `afterId`. */
  async list(pageSize: number, afterId: string | null): Promise<KeyPage> {
    const query = this.keys
      .createQueryBuilder('key')
      .orderBy('key.created_at', 'DESC')
      .addOrderBy('key.id', 'DESC')
      .limit(pageSize + 1);
    if (afterId !== null) {
      // Row comparison on (created_at, id): stable under concurrent inserts, which land on page one.
      query.where('(key.created_at, key.id) < (SELECT after.created_at, after.id FROM api_keys after WHERE after.id = :afterId)', { afterId });
    }
    const rows = await query.getMany();
    const keys = rows.slice(0, pageSize);
    return { keys, lastIdIfMore: rows.length > pageSize ? keys[keys.length - 1].id : null };
  }

  /** Whether a key with this id exists (revoked or not). */
  async exists(id: string): Promise<boolean> {
    return (await this.keys.countBy({ id })) > 0;
  }

  /** The key with this id, or null. */
  find(id: string): Promise<ApiKeyEntity | null> {
    return this.keys.findOneBy({ id });
  }

  /** Applies the changes and returns the key, or null when there is no such key. */
  async update(id: string, changes: UpdateKeyInput, manager: EntityManager = this.keys.manager): Promise<ApiKeyEntity | null> {
    const set: Partial<ApiKeyEntity> = {};
    if (changes.name !== undefined) set.name = changes.name;
    if (changes.rateLimitRpm !== undefined) set.rateLimitRpm = changes.rateLimitRpm;
    if (Object.keys(set).length > 0) await manager.update(ApiKeyEntity, { id }, set);
    return manager.findOneBy(ApiKeyEntity, { id });
  }

  /**
   * Revokes the key and returns it, or null when there is no such key. Revoking twice keeps the
   * first `revoked_at`, so a repeated DELETE (even without an Idempotency-Key) answers the same.
   */
  async revoke(id: string, manager: EntityManager = this.keys.manager): Promise<ApiKeyEntity | null> {
    await manager
      .createQueryBuilder()
      .update(ApiKeyEntity)
      .set({ revokedAt: () => 'now()' })
      .where('id = :id AND revoked_at IS NULL', { id })
      .execute();
    return manager.findOneBy(ApiKeyEntity, { id });
  }

  private async insert(manager: EntityManager, input: MintKeyInput): Promise<MintedKey> {
    const plainKey = generatePlainKey();
    const key = manager.create(ApiKeyEntity, {
      id: randomUUID(),
      name: input.name,
      rateLimitRpm: input.rateLimitRpm,
      prefix: displayPrefixOf(plainKey),
      keyHash: hashPlainKey(this.secret, plainKey),
      revokedAt: null,
    });
    // insert() reads created_at, which the database fills in, back into `key` (RETURNING).
    await manager.insert(ApiKeyEntity, key);
    return { key, plainKey };
  }
}
