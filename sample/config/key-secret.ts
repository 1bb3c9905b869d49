import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';

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
  const generated = randomBytes(32).toString('base64url');
  try {
    // 'wx': never overwrite a secret that exists (another start may have just written it).
    await fs.writeFile(file, `${generated}\n`, { mode: 0o600, flag: 'wx' });
    return Buffer.from(generated, 'utf8');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
  }
  const stored = (await fs.readFile(file, 'utf8')).trim();
  if (stored.length < MIN_SECRET_LENGTH) {
    throw new Error(`${file} does not hold a valid secret (at least ${MIN_SECRET_LENGTH} characters); delete it only if no key minted with it is still needed.`);
  }
  // It guards every key: keep it readable by its owner only, even if someone loosened it.
  const { mode } = await fs.stat(file);
  if ((mode & 0o077) !== 0) await fs.chmod(file, 0o600);
  return Buffer.from(stored, 'utf8');
}
