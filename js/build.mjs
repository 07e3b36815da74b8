// Bundles src/sm.js into one ES module. Deterministic: same sources and
// esbuild version give the same bytes.
//   node build.mjs [outfile] [--test-hooks]   (default ../crates/server/assets/sm.js;
//   sm-worker.js is written next to it)
// --test-hooks keeps `testHooks.onSecrets` (tests that need the session's
// secrets, e.g. the wire capture); the published bundle never has it.
import { build } from "esbuild";
import { readFileSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const args = process.argv.slice(2);
const testHooks = args.includes("--test-hooks");
const outArg = args.find((a) => !a.startsWith("--"));
const out = resolve(outArg ?? resolve(here, "../crates/server/assets/sm.js"));
const pkg = JSON.parse(readFileSync(resolve(here, "package.json"), "utf8"));

// The shared worker's script goes next to the module, where sm.js looks for
// it by default (`new URL("./sm-worker.js", import.meta.url)`).
const workerOut = resolve(dirname(out), "sm-worker.js");

for (const [entry, outfile, format, what] of [
  ["src/sm.js", out, "esm", "wsgate browser module"],
  ["src/shared/worker.js", workerOut, "iife", "wsgate browser module, shared worker"],
]) await build({
  absWorkingDir: here,
  entryPoints: [resolve(here, entry)],
  outfile,
  bundle: true,
  format,
  platform: "browser",
  target: ["es2020"],
  minify: true,
  legalComments: "eof",
  sourcemap: false,
  charset: "utf8",
  // @hpke/common has a Node <= 18 fallback `await import("crypto")`, never
  // reached where globalThis.crypto exists (every browser). It resolves to a
  // stub rather than staying an external import: an app's bundler (webpack,
  // Vite) re-bundling the npm package would otherwise trip over a Node
  // built-in.
  plugins: [
    {
      name: "no-node-crypto",
      setup(b) {
        b.onResolve({ filter: /^(node:)?crypto$/ }, () => ({ path: "crypto", namespace: "wsgate-stub" }));
        b.onLoad({ filter: /.*/, namespace: "wsgate-stub" }, () => ({ contents: "export const webcrypto = undefined;", loader: "js" }));
      },
    },
  ],
  define: { __WSGATE_TEST_HOOKS__: testHooks ? "true" : "false" },
  banner: { js: `/*! ${entry === "src/sm.js" ? "sm.js" : "sm-worker.js"} ${pkg.version} — ${what} (protocol wsgate-v1). Built from js/ with esbuild; do not edit. */` },
  logLevel: "warning",
});
console.log(`built ${out} and ${workerOut}`);
