// Builds the console into dist/ (committed, embedded by ui/embed.go) and writes
// dist/source-hash.txt, the hash of what it was built from; ui's Go test recomputes it and fails
// when the committed build is stale. Keep sourceHash in step with embed_test.go.
import * as esbuild from 'esbuild';
import { createHash } from 'node:crypto';
import { readFileSync, readdirSync, writeFileSync, mkdirSync, rmSync, copyFileSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';

const root = new URL('.', import.meta.url).pathname;

function files(dir) {
  return readdirSync(dir).flatMap((n) => {
    const p = join(dir, n);
    return statSync(p).isDirectory() ? files(p) : [p];
  });
}

// sourceHash: sha256 over each input file, in order of its slash path: path, NUL, content, NUL.
function sourceHash() {
  const inputs = [...files(join(root, 'src')), join(root, 'package-lock.json'), join(root, 'build.mjs')]
    .map((p) => relative(root, p).split('\\').join('/'))
    .sort();
  const h = createHash('sha256');
  for (const p of inputs) {
    h.update(p + '\0');
    h.update(readFileSync(join(root, p)));
    h.update('\0');
  }
  return h.digest('hex');
}

const dist = join(root, 'dist');
rmSync(dist, { recursive: true, force: true });
mkdirSync(dist);
await esbuild.build({
  entryPoints: { app: join(root, 'src/main.jsx') },
  bundle: true, minify: true, format: 'esm', target: ['es2020'],
  jsx: 'automatic', jsxImportSource: 'preact',
  outdir: dist, legalComments: 'none', logLevel: 'warning',
});
copyFileSync(join(root, 'src/index.html'), join(dist, 'index.html'));
writeFileSync(join(dist, 'source-hash.txt'), sourceHash() + '\n');
console.log('ui: built', readdirSync(dist).join(', '));
