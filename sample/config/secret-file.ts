import { promises as fs } from 'node:fs';

/**
 * The secret kept in `file`: written from `generate()` on first use (mode 600), else read back,
 * trimmed, and made 600 again if someone loosened it. Never overwrites a file that exists (another
 * start may have just written it). The caller checks what it holds.
 */
export async function secretInFile(file: string, generate: () => string): Promise<string> {
  const generated = generate();
  try {
    // 'wx': fails when the file exists.
    await fs.writeFile(file, `${generated}\n`, { mode: 0o600, flag: 'wx' });
    return generated;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
  }
  const stored = (await fs.readFile(file, 'utf8')).trim();
  const { mode } = await fs.stat(file);
  if ((mode & 0o077) !== 0) await fs.chmod(file, 0o600);
  return stored;
}
