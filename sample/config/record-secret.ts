import { hash, randomBytes } from 'node:crypto';
import path from 'node:path';
import { secretInFile } from './secret-file';

/** Environment variable that holds the secret stored answers are sealed with (base64 of 32 bytes). */
export const RECORD_SECRET_ENV = 'PATOMIC_RECORD_SECRET';

/** File in the data folder that keeps the generated secret when the environment has none. */
export const RECORD_SECRET_FILE = 'record-secret';

const SECRET_BYTES = 32;

/**
 * The secret the idempotency records are sealed with: `PATOMIC_RECORD_SECRET` when set, else the one
 * in `<dataDir>/record-secret`, generated (32 random bytes, base64, mode 600) on first use. Changing
 * it makes the stored answers of the last 24 hours unreadable (their retries get a 409), never wrong.
 */
export async function loadRecordSecret(dataDir: string, env: NodeJS.ProcessEnv = process.env): Promise<Buffer> {
  const fromEnv = env[RECORD_SECRET_ENV];
  if (fromEnv !== undefined && fromEnv !== '') return decoded(fromEnv, RECORD_SECRET_ENV);
  const file = path.join(dataDir, RECORD_SECRET_FILE);
  return decoded(await secretInFile(file, () => randomBytes(SECRET_BYTES).toString('base64')), file);
}

/** The id the sample gives its record key: derived from the secret, so a new secret is a new key. */
export function recordKeyId(secret: Buffer): string {
  return `sample-${hash('sha256', secret, 'hex').slice(0, 8)}`;
}

function decoded(base64: string, where: string): Buffer {
  const secret = Buffer.from(base64, 'base64');
  if (secret.length !== SECRET_BYTES || secret.toString('base64') !== base64.trim()) {
    throw new Error(`${where} must hold base64 of ${SECRET_BYTES} random bytes: openssl rand -base64 32`);
  }
  return secret;
}
