// Login speed of sm.js in headless Chromium against a real gateway, for a
// user with the default 600 000 PBKDF2 iterations:
//   - connect() end to end on a secure page (http://127.0.0.1:PORT, Web
//     Crypto), on an insecure page (http://wsgate.test:PORT mapped to
//     127.0.0.1: no crypto.subtle) with the wasm PBKDF2, and on the insecure
//     page with WebAssembly removed before sm.js loads (the pure-JS path of
//     earlier releases, and the fallback under a CSP without wasm);
//   - PBKDF2 alone per backend, on the same pages, with the longest task
//     (PerformanceObserver "longtask") each run left the page blocked.
// Runs are interleaved (one of each variant per round) so load on the
// machine spreads over all of them; one warm-up round is not counted.
//
//   npm run bench:login -- [--runs N] [--json FILE] [--iterations N]
//                          [--sm-src DIR] [--skip-connect]
// --sm-src DIR builds sm.js from DIR/src/sm.js instead of ./src (e.g. a copy
// whose login matches a gateway of another commit); --skip-connect measures
// PBKDF2 alone (when the gateway and sm.js in the tree do not log in together).
//
// Environment: WSGATE_BIN (default $CARGO_TARGET_DIR/release/wsgate, else
// ../target/release/wsgate, else the e2e default), CHROMIUM_BIN.
// sm.js is built from src/ now and routed for /sm.js (the binary may embed an
// older bundle); the PBKDF2-only page module is built from src/ as well.
// Each run's PBKDF2 output is checked against OpenSSL's (node:crypto).
import { execFileSync, spawnSync } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { cpus, loadavg, totalmem } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { build } from "esbuild";

const here = dirname(fileURLToPath(import.meta.url));
const JS_DIR = resolve(here, "..");

function arg(name, dflt) {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : dflt;
}
const RUNS = Number(arg("--runs", "7"));
const ITERATIONS = Number(arg("--iterations", "600000"));
const JSON_OUT = arg("--json", null);
const SM_SRC = resolve(arg("--sm-src", JS_DIR));
const SKIP_CONNECT = process.argv.includes("--skip-connect");
const PASSWORD = "bench-login-speed-password";

if (!process.env.WSGATE_BIN) {
  const candidates = [process.env.CARGO_TARGET_DIR && join(process.env.CARGO_TARGET_DIR, "release/wsgate"), resolve(JS_DIR, "../target/release/wsgate")].filter(Boolean);
  const found = candidates.find((p) => existsSync(p));
  if (found) process.env.WSGATE_BIN = found;
}
const H = await import("../test/e2e/harness.mjs");

// sm.js as build.mjs bundles it, from SM_SRC/src, routed for /sm.js.
const smBundle = (
  await build({
    absWorkingDir: SM_SRC,
    entryPoints: [join(SM_SRC, "src/sm.js")],
    nodePaths: [join(JS_DIR, "node_modules")],
    bundle: true,
    format: "esm",
    platform: "browser",
    target: ["es2020"],
    minify: true,
    write: false,
    external: ["crypto"],
  })
).outputFiles[0].text;

// The PBKDF2-only module for the page: the three paths sm.js can take.
const kdfModule = (
  await build({
    absWorkingDir: JS_DIR,
    stdin: {
      contents: `
        import { webCryptoBackend } from "./src/crypto/webcrypto.js";
        import { pbkdf2Sha256Wasm, forceScalarForTests, wasmPbkdf2Kind } from "./src/crypto/pbkdf2-wasm.js";
        import { pbkdf2Async } from "@noble/hashes/pbkdf2.js";
        import { sha256 } from "@noble/hashes/sha2.js";
        export const kdf = {
          webcrypto: (p, s, c) => webCryptoBackend.pbkdf2Sha256(p, s, c, 32),
          wasm: (p, s, c) => pbkdf2Sha256Wasm(p, s, c, 32),
          "wasm-unsliced": (p, s, c) => pbkdf2Sha256Wasm(p, s, c, 32, { slice: Number.MAX_SAFE_INTEGER }),
          // The scalar loop, what engines without WebAssembly SIMD get.
          "wasm-scalar": async (p, s, c) => {
            forceScalarForTests(true);
            try {
              return await pbkdf2Sha256Wasm(p, s, c, 32);
            } finally {
              forceScalarForTests(false);
            }
          },
          "pure-js": (p, s, c) => pbkdf2Async(sha256, p, s, { c, dkLen: 32, asyncTick: 10 }),
        };
        export const wasmKind = wasmPbkdf2Kind;`,
      resolveDir: JS_DIR,
      sourcefile: "bench-kdf.js",
    },
    bundle: true,
    format: "esm",
    platform: "browser",
    target: ["es2020"],
    minify: true,
    write: false,
    external: ["crypto"],
  })
).outputFiles[0].text;

const stats = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  const median = s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2;
  return { median, min: s[0], max: s[s.length - 1], samples: xs };
};

H.checkPrerequisites();
const dataDir = H.tempDir("wsgate-bench-login-data-");
const port = await H.freePort();
// A user with the default iterations (the CLI's default; checked below).
const add = spawnSync(H.WSGATE_BIN, ["user", "add", "benchuser", "--data-dir", dataDir, "--password-stdin"], { input: `${PASSWORD}\n`, encoding: "utf8" });
if (add.status !== 0) throw new Error(`wsgate user add failed: ${add.stderr}${add.stdout}`);
const gw = await H.startGateway({ port, dataDir });
const browser = await H.launchBrowser();
await browser.context.route("**/sm.js", (route) => route.fulfill({ status: 200, contentType: "text/javascript; charset=utf-8", body: smBundle }));
await browser.context.route("**/bench-kdf.js", (route) => route.fulfill({ status: 200, contentType: "text/javascript; charset=utf-8", body: kdfModule }));
const gitRev = (() => {
  try {
    return execFileSync("git", ["-C", JS_DIR, "rev-parse", "--short", "HEAD"], { encoding: "utf8" }).trim();
  } catch {
    return null;
  }
})();

/** A fresh page of the gateway's origin; `noWasm` removes WebAssembly before any module loads. */
async function page({ secure, noWasm = false }) {
  const p = await browser.context.newPage();
  if (noWasm) await p.addInitScript(() => { globalThis.WebAssembly = undefined; });
  await p.goto(`http://${secure ? "127.0.0.1" : H.INSECURE_HOST}:${port}/`);
  await p.evaluate(() => {
    globalThis.__longest = 0;
    new PerformanceObserver((l) => {
      for (const e of l.getEntries()) globalThis.__longest = Math.max(globalThis.__longest, e.duration);
    }).observe({ type: "longtask" });
  });
  return p;
}

const CONNECT = [
  { key: "secure/webcrypto", label: "secure page, Web Crypto", secure: true },
  { key: "insecure/wasm", label: "insecure page, wasm PBKDF2", secure: false },
  { key: "insecure/pure-js", label: "insecure page, pure JS (no WebAssembly)", secure: false, noWasm: true },
];
const KDF = [
  { key: "webcrypto", label: "Web Crypto (secure page)", secure: true },
  { key: "wasm", label: "wasm, yielding every ~25 ms (insecure page)", secure: false },
  { key: "wasm-unsliced", label: "wasm, one run, no yields (insecure page)", secure: false },
  { key: "wasm-scalar", label: "wasm without SIMD (scalar loop), yielding (insecure page)", secure: false },
  { key: "pure-js", label: "pure JS @noble/hashes (insecure page)", secure: false },
];

const pages = new Map();
for (const v of CONNECT) pages.set(v.key, await page(v));
const kdfPages = new Map([
  [true, await page({ secure: true })],
  [false, await page({ secure: false })],
]);
// Check what each page is.
for (const v of CONNECT) {
  const env = await pages.get(v.key).evaluate(() => ({ secure: isSecureContext, subtle: !!(globalThis.crypto && crypto.subtle), wasm: typeof WebAssembly }));
  if (env.secure !== v.secure || env.subtle !== v.secure || (env.wasm === "undefined") !== !!v.noWasm) throw new Error(`${v.key}: unexpected page ${JSON.stringify(env)}`);
}

async function timeConnect(v) {
  return pages.get(v.key).evaluate(async ({ password }) => {
    const { connect } = await import("/sm.js");
    globalThis.__longest = 0;
    const t0 = performance.now();
    const s = await connect({ username: "benchuser", password, reconnect: false });
    const ms = performance.now() - t0;
    const backend = s.backend;
    await s.logout();
    await new Promise((r) => setTimeout(r, 100)); // let late long-task entries arrive
    return { ms, backend, longest: globalThis.__longest };
  }, { password: PASSWORD });
}

async function timeKdf(v) {
  return kdfPages.get(v.secure).evaluate(async ({ key, iterations }) => {
    const { kdf } = await import("/bench-kdf.js");
    const te = new TextEncoder();
    const salt = crypto.getRandomValues(new Uint8Array(16));
    globalThis.__longest = 0;
    const t0 = performance.now();
    const out = await kdf[key](te.encode("bench-password"), salt, iterations);
    const ms = performance.now() - t0;
    await new Promise((r) => setTimeout(r, 100));
    return { ms, longest: globalThis.__longest, hex: Array.from(out, (b) => b.toString(16).padStart(2, "0")).join(""), salt: Array.from(salt) };
  }, { key: v.key, iterations: ITERATIONS });
}

const results = { connect: {}, kdf: {} };
for (const v of CONNECT) results.connect[v.key] = { ms: [], longest: [], backend: null, cold_ms: null };
for (const v of KDF) results.kdf[v.key] = { ms: [], longest: [] };
let wasmKind = "?";
const load0 = loadavg().map((x) => x.toFixed(2)).join(" ");
try {
  for (let round = 0; round <= RUNS; round++) {
    for (const v of SKIP_CONNECT ? [] : CONNECT) {
      const r = await timeConnect(v);
      const rec = results.connect[v.key];
      rec.backend = r.backend;
      if (round === 0) rec.cold_ms = r.ms;
      else (rec.ms.push(r.ms), rec.longest.push(r.longest));
      process.stderr.write(`round ${round} connect ${v.key}: ${r.ms.toFixed(0)} ms (backend ${r.backend}, longest task ${r.longest.toFixed(0)} ms)\n`);
    }
    for (const v of KDF) {
      const r = await timeKdf(v);
      // Same result as OpenSSL (Node) for the page's random salt.
      const { pbkdf2Sync } = await import("node:crypto");
      const want = pbkdf2Sync("bench-password", Buffer.from(r.salt), ITERATIONS, 32, "sha256").toString("hex");
      if (r.hex !== want) throw new Error(`${v.key}: PBKDF2 result differs from OpenSSL's`);
      if (round > 0) (results.kdf[v.key].ms.push(r.ms), results.kdf[v.key].longest.push(r.longest));
      process.stderr.write(`round ${round} pbkdf2 ${v.key}: ${r.ms.toFixed(0)} ms (longest task ${r.longest.toFixed(0)} ms)\n`);
    }
  }
  wasmKind = await kdfPages.get(false).evaluate(async () => (await import("/bench-kdf.js")).wasmKind());
} finally {
  for (const p of [...pages.values(), ...kdfPages.values()]) await p.close().catch(() => {});
  await browser.close();
  await gw.stop();
  rmSync(dataDir, { recursive: true, force: true });
}

const chromium = (() => {
  try {
    return execFileSync(H.CHROMIUM_BIN, ["--version"], { encoding: "utf8", stdio: ["ignore", "pipe", "ignore"] }).trim();
  } catch {
    return "unknown";
  }
})();
const base = SKIP_CONNECT ? NaN : stats(results.connect["secure/webcrypto"].ms).median;
const kdfBase = stats(results.kdf.webcrypto.ms).median;
const fmt = (x) => (x / 1000).toFixed(3);
const rows = [];
console.log(`\nsm.js login speed, ${ITERATIONS} PBKDF2 iterations, ${RUNS} runs each (+1 warm-up), ${chromium}, ${cpus().length}× ${cpus()[0]?.model ?? "?"}, load ${load0}\n`);
console.log("| what | median s | min–max s | × Web Crypto | longest task ms (median) |");
console.log("| --- | ---: | ---: | ---: | ---: |");
for (const v of SKIP_CONNECT ? [] : CONNECT) {
  const r = results.connect[v.key];
  const s = stats(r.ms);
  const row = { what: `connect(): ${v.label}`, key: `connect/${v.key}`, backend: r.backend, seconds: { median: s.median / 1000, min: s.min / 1000, max: s.max / 1000, samples: r.ms.map((x) => x / 1000) }, cold_seconds: r.cold_ms / 1000, ratio_to_webcrypto: s.median / base, longest_task_ms: stats(r.longest).median };
  rows.push(row);
  console.log(`| ${row.what} (backend "${r.backend}") | ${fmt(s.median)} | ${fmt(s.min)}–${fmt(s.max)} | ${row.ratio_to_webcrypto.toFixed(2)} | ${row.longest_task_ms.toFixed(0)} |`);
}
for (const v of KDF) {
  const r = results.kdf[v.key];
  const s = stats(r.ms);
  const row = { what: `PBKDF2 alone: ${v.label}`, key: `pbkdf2/${v.key}`, seconds: { median: s.median / 1000, min: s.min / 1000, max: s.max / 1000, samples: r.ms.map((x) => x / 1000) }, ratio_to_webcrypto: s.median / kdfBase, longest_task_ms: stats(r.longest).median };
  rows.push(row);
  console.log(`| ${row.what} | ${fmt(s.median)} | ${fmt(s.min)}–${fmt(s.max)} | ${row.ratio_to_webcrypto.toFixed(2)} | ${row.longest_task_ms.toFixed(0)} |`);
}
const wasmRatio = SKIP_CONNECT ? null : rows.find((r) => r.key === "connect/insecure/wasm").ratio_to_webcrypto;
/** @type {{ min: number, max: number } | null} */
let roundRatios = null;
if (wasmRatio !== null) {
  // Rounds are interleaved, so each round's two connects saw the same machine.
  const a = results.connect["insecure/wasm"].ms, b = results.connect["secure/webcrypto"].ms;
  const per = a.map((x, i) => x / b[i]);
  roundRatios = { min: Math.min(...per), max: Math.max(...per) };
  const verdict = roundRatios.max <= 2 ? "met" : roundRatios.min > 2 ? "missed" : `within noise (median ${wasmRatio <= 2 ? "met" : "missed"})`;
  console.log(`\nGoal (insecure-page connect() ≤ 2× the Web Crypto time): ${verdict}: ${wasmRatio.toFixed(2)}× median, ${roundRatios.min.toFixed(2)}–${roundRatios.max.toFixed(2)}× round by round`);
}
console.log(`wasm loop on the insecure page: ${wasmKind}`);

if (JSON_OUT) {
  const out = resolve(process.cwd(), JSON_OUT);
  mkdirSync(dirname(out), { recursive: true });
  writeFileSync(
    out,
    JSON.stringify(
      {
        // No machine paths in the record: --sm-src DIR is written as $SM_SRC.
        command: `npm run bench:login -- ${process.argv.slice(2).map((a, i, all) => (all[i - 1] === "--sm-src" ? "$SM_SRC" : a)).join(" ")}`,
        git_head: gitRev,
        sm_js: `built at run time from ${SM_SRC === JS_DIR ? "js/src" : "$SM_SRC/src"}`,
        gateway: H.WSGATE_BIN.replace(/^.*\/(release|debug)\//, "$1/"),
        browser: chromium,
        machine: { cpus: cpus().length, cpu_model: cpus()[0]?.model ?? null, memory_gib: Math.round((totalmem() / 2 ** 30) * 10) / 10, load_average_at_start: load0, load_average_at_end: loadavg().map((x) => x.toFixed(2)).join(" ") },
        iterations: ITERATIONS,
        runs: RUNS,
        wasm_loop: wasmKind,
        goal: { what: "insecure-page connect() ≤ 2× the secure-page (Web Crypto) connect()", ratio: wasmRatio, round_ratios: roundRatios, met: wasmRatio === null ? null : wasmRatio <= 2 },
        rows,
      },
      null,
      2,
    ) + "\n",
  );
  console.log(`wrote ${out}`);
}
