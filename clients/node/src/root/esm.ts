// The package's directory, for the ES module build: this file is dist/esm/root/esm.js.
import { fileURLToPath } from 'node:url';

/** The installed package's directory (where proto/ is). */
export const packageRoot: string = fileURLToPath(new URL('../../..', import.meta.url));
