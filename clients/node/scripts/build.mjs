// Builds the package: copies the protocol's .proto files into proto/ (loaded at run
// time), then compiles src/ twice, to dist/esm (ES modules) and dist/cjs (CommonJS).
// The protos come from $CACHELOCK_PROTO, or the repository's proto/ two levels up.
import { execFileSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(dirname(fileURLToPath(import.meta.url)));
const source = resolve(process.env.CACHELOCK_PROTO ?? join(here, '..', '..', 'proto'));
if (!existsSync(join(source, 'cachelock'))) {
  throw new Error(`no cachelock protos in ${source}: set CACHELOCK_PROTO to the repository's proto/`);
}
rmSync(join(here, 'proto'), { recursive: true, force: true });
// Only cachelock's own files: the google/protobuf types come with @grpc/proto-loader.
cpSync(join(source, 'cachelock'), join(here, 'proto', 'cachelock'), {
  recursive: true,
  filter: (path) => path.endsWith('.proto') || statSync(path).isDirectory(),
});

rmSync(join(here, 'dist'), { recursive: true, force: true });
const tsc = createRequire(import.meta.url).resolve('typescript/bin/tsc');
for (const config of ['tsconfig.json', 'tsconfig.cjs.json']) {
  try {
    execFileSync(process.execPath, [tsc, '-p', join(here, config)], { stdio: 'inherit' });
  } catch {
    process.exit(1); // tsc has said why
  }
}
// The package is "type": "module": this package.json marks dist/cjs's files as CommonJS.
// Being their nearest one, it also maps their '#root' (package.json maps the ES modules').
mkdirSync(join(here, 'dist', 'cjs'), { recursive: true });
writeFileSync(
  join(here, 'dist', 'cjs', 'package.json'),
  `${JSON.stringify({ type: 'commonjs', imports: { '#root': './root/cjs.js' } }, null, 2)}\n`,
);
