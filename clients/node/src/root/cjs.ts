// The package's directory, for the CommonJS build: this file is dist/cjs/root/cjs.js.
// (`import.meta` is a syntax error in CommonJS, hence a file per build.)
import { join } from 'node:path';

/** The installed package's directory (where proto/ is). */
export const packageRoot: string = join(__dirname, '..', '..', '..');
