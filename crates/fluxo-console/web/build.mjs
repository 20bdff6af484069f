// Bundles the console into exactly three files, index.html, app.js and
// app.css, in $FLUXO_CONSOLE_OUT (the Rust crate's build points it at its
// own output) or else in dist/. Type checking is `tsc --noEmit`, run by
// `npm run build` before this script; esbuild only strips the types.
import { build } from "esbuild";
import { copyFile, mkdir } from "node:fs/promises";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const out = resolve(process.env.FLUXO_CONSOLE_OUT || join(here, "dist"));

await mkdir(out, { recursive: true });
await build({
  absWorkingDir: here,
  entryPoints: [
    { in: "src/main.ts", out: "app" },
    { in: "src/app.css", out: "app" },
  ],
  outdir: out,
  bundle: true,
  minify: true,
  target: "es2020",
  format: "iife",
  sourcemap: false,
  legalComments: "none",
  logLevel: "warning",
});
await copyFile(join(here, "src/index.html"), join(out, "index.html"));
console.log(`fluxo console written to ${out}`);
