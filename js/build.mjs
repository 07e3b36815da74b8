// Bundles src/sm.js into one ES module. Deterministic: same sources and
// esbuild version give the same bytes.
//   node build.mjs [outfile]   (default ../crates/server/assets/sm.js)
import { build } from "esbuild";
import { readFileSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const out = resolve(process.argv[2] ?? resolve(here, "../crates/server/assets/sm.js"));
const pkg = JSON.parse(readFileSync(resolve(here, "package.json"), "utf8"));

await build({
  absWorkingDir: here,
  entryPoints: [resolve(here, "src/sm.js")],
  outfile: out,
  bundle: true,
  format: "esm",
  platform: "browser",
  target: ["es2020"],
  minify: true,
  legalComments: "eof",
  sourcemap: false,
  charset: "utf8",
  // @hpke/common has a Node <= 18 fallback `await import("crypto")`, never
  // reached where globalThis.crypto exists (every browser).
  external: ["crypto"],
  banner: { js: `/*! sm.js ${pkg.version} — wsgate browser module (protocol wsgate-v1). Built from js/ with esbuild; do not edit. */` },
  logLevel: "warning",
});
console.log(`built ${out}`);
