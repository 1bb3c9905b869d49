import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { secretInFile } from './secret-file';

/** Environment variable that holds the server secret API keys are hashed with. */
export const KEY_SECRET_ENV = 'PATOMIC_KEY_SECRET';

/** File in the data folder that keeps the generated secret when the environment has none. */
export const KEY_SECRET_FILE = 'key-secret';

const MIN_SECRET_LENGTH = 32;

/**
 * The secret API keys are hashed with: `PATOMIC_KEY_SECRET` when set (at least 32 characters), else
 * the one in `<dataDir>/key-secret`, generated (32 random bytes, base64url, mode 600) on first use.
 * Changing it makes every existing key stop authenticating.
 */
export async function loadKeySecret(dataDir: string, env: NodeJS.ProcessEnv = process.env): Promise<Buffer> {
  const fromEnv = env[KEY_SECRET_ENV];
  if (fromEnv !== undefined && fromEnv !== '') {
    if (fromEnv.length < MIN_SECRET_LENGTH) {
      throw new Error(`${KEY_SECRET_ENV} must be at least ${MIN_SECRET_LENGTH} characters long; generate one with: openssl rand -base64 32`);
    }
    return Buffer.from(fromEnv, 'utf8');
  }
  const file = path.join(dataDir, KEY_SECRET_FILE);
  const stored = await secretInFile(file, () => randomBytes(32).toString('base64url'));
  if (stored.length < MIN_SECRET_LENGTH) {
    throw new Error(`${file} does not hold a valid secret (at least ${MIN_SECRET_LENGTH} characters); delete it only if no key minted with it is still needed.`);
  }
  return Buffer.from(stored, 'utf8');
}
