// End-to-end harness: the real gateway binary and headless Chromium.
//
// Environment:
//   WSGATE_BIN      gateway binary (default ../target/debug/wsgate from js/)
//   CHROMIUM_BIN    browser (default /usr/bin/chromium)
//   WSGATE_E2E_LOCAL_BUNDLE=1  build sm.js from src/ now and serve that for
//                   /sm.js instead of failing when the binary embeds another
//                   bundle (for iterating on sm.js without rebuilding the gateway)
import { execFileSync, spawn } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { get as httpGet } from "node:http";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const here = dirname(fileURLToPath(import.meta.url));
export const JS_DIR = resolve(here, "../..");
export const BUNDLE = resolve(JS_DIR, "../crates/server/assets/sm.js");
export const DEMO_HTML = resolve(JS_DIR, "../crates/server/assets/demo.html");
export const WORKER_BUNDLE = resolve(JS_DIR, "../crates/server/assets/sm-worker.js");
export const WSGATE_BIN = resolve(JS_DIR, process.env.WSGATE_BIN ?? "../target/debug/wsgate");
export const CHROMIUM_BIN = process.env.CHROMIUM_BIN ?? "/usr/bin/chromium";
export const INSECURE_HOST = "wsgate.test";

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** A TCP port that was free a moment ago. */
export function freePort() {
  return new Promise((resolvePort, reject) => {
    const srv = createServer();
    srv.unref();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolvePort(port));
    });
  });
}

export function tempDir(prefix) {
  return mkdtempSync(join(tmpdir(), prefix));
}

/** Preconditions, with messages a person can act on. */
export function checkPrerequisites() {
  if (!existsSync(WSGATE_BIN)) throw new Error(`gateway binary not found at ${WSGATE_BIN}: run \`cargo build -p wsgate\` or set WSGATE_BIN`);
  if (!existsSync(CHROMIUM_BIN)) throw new Error(`Chromium not found at ${CHROMIUM_BIN}: \`apt-get install -y chromium\` or set CHROMIUM_BIN`);
}

export const API_KEY = `e2e-${Math.random().toString(36).slice(2)}${Math.random().toString(36).slice(2)}`;

/**
 * A config for the tests: an API key for /api/publish, a plain channel
 * `news` and sensitive channels `secret.*`. Written into dataDir's parent
 * temp dir and passed with --config; --listen, --data-dir and --demo flags
 * override it.
 */
export function writeConfig(dir) {
  const file = join(dir, "wsgate-e2e.toml");
  writeFileSync(
    file,
    [
      `api_keys = ["${API_KEY}"]`,
      "",
      "[[channels]]",
      'pattern = "news"',
      "",
      "[[channels]]",
      'pattern = "secret.*"',
      "sensitive = true",
      "",
    ].join("\n"),
  );
  return file;
}

/** POST /api/publish with the test API key. */
export async function publish(origin, channel, data) {
  const res = await fetch(`${origin}/api/publish`, {
    method: "POST",
    headers: { "Content-Type": "application/json", Authorization: `Bearer ${API_KEY}` },
    body: JSON.stringify({ channel, data }),
  });
  if (!res.ok) throw new Error(`publish to ${channel}: HTTP ${res.status} ${await res.text()}`);
}

/**
 * Starts `wsgate serve --demo` and resolves once it prints its
 * "listening on http://127.0.0.1:PORT" line.
 */
export async function startGateway({ port, dataDir, config, timeoutMs = 30_000 }) {
  const args = ["serve", "--demo", "--listen", `127.0.0.1:${port}`, "--data-dir", dataDir, ...(config ? ["--config", config] : [])];
  const proc = spawn(WSGATE_BIN, args, { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, RUST_LOG: process.env.RUST_LOG ?? "warn" } });
  let out = "";
  const want = `listening on http://127.0.0.1:${port}`;
  await new Promise((resolveReady, reject) => {
    const timer = setTimeout(() => {
      proc.kill("SIGKILL");
      reject(new Error(`gateway did not print "${want}" within ${timeoutMs} ms; output:\n${out}`));
    }, timeoutMs);
    const onData = (d) => {
      out += d.toString();
      if (out.includes(want)) {
        clearTimeout(timer);
        resolveReady();
      }
    };
    proc.stdout.on("data", onData);
    proc.stderr.on("data", onData);
    proc.on("exit", (code, sig) => {
      clearTimeout(timer);
      reject(new Error(`gateway exited (${code ?? sig}) before it was ready; output:\n${out}`));
    });
  });
  const exited = new Promise((r) => proc.on("exit", r));
  return {
    proc,
    port,
    dataDir,
    origin: `http://127.0.0.1:${port}`,
    output: () => out,
    /** SIGKILL (a crash) or SIGTERM (a clean stop); resolves once the process is gone. */
    async stop(signal = "SIGTERM") {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill(signal);
      await exited;
    },
  };
}

/** Bundles built from src/ right now (WSGATE_E2E_LOCAL_BUNDLE=1, or the test build). */
/** @type {Map<boolean, Buffer>} */
const freshBuilds = new Map();

/** A fresh build of the sources; with `testHooks`, the test build that keeps `testHooks.onSecrets`. */
function freshBundle(testHooks = false) {
  if (!freshBuilds.has(testHooks)) {
    const dir = tempDir("wsgate-bundle-");
    const out = join(dir, "sm.js");
    execFileSync(process.execPath, [resolve(JS_DIR, "build.mjs"), out, ...(testHooks ? ["--test-hooks"] : [])], { stdio: "ignore" });
    freshBuilds.set(testHooks, readFileSync(out));
    rmSync(dir, { recursive: true, force: true });
  }
  return /** @type {Buffer} */ (freshBuilds.get(testHooks));
}

/**
 * Headless Chromium with a fresh profile; wsgate.test resolves to 127.0.0.1.
 * `testHooks`: pages get a test build of sm.js that keeps `testHooks.onSecrets`
 * (the published bundle the gateway serves has none).
 */
export async function launchBrowser({ testHooks = false } = {}) {
  const userDataDir = tempDir("wsgate-chromium-");
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM_BIN,
    headless: true,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
      `--host-resolver-rules=MAP ${INSECURE_HOST} 127.0.0.1`,
    ],
  }).catch((e) => {
    rmSync(userDataDir, { recursive: true, force: true });
    throw e;
  });
  if (process.env.WSGATE_E2E_LOCAL_BUNDLE === "1" || testHooks) {
    const body = freshBundle(testHooks);
    await context.route("**/sm.js", (route) => route.fulfill({ status: 200, contentType: "text/javascript; charset=utf-8", body }));
  }
  return {
    context,
    /** The profile directory: every Chromium process's command line names it. */
    userDataDir,
    async close() {
      await context.close().catch(() => {});
      rmSync(userDataDir, { recursive: true, force: true });
    },
  };
}

/**
 * GET on a connection of its own that is closed at once (fetch() would keep
 * it alive, and its FIN could land in a later packet capture).
 */
function getOnce(url) {
  return new Promise((resolveBody, reject) => {
    const req = httpGet(url, { agent: false, headers: { Connection: "close" } }, (res) => {
      const chunks = [];
      res.on("data", (c) => chunks.push(c));
      res.on("end", () => resolveBody(Buffer.concat(chunks)));
      res.on("error", reject);
    });
    req.on("error", reject);
  });
}

/**
 * The gateway must serve the committed bundle and demo page (the binary
 * embeds them at build time); a stale binary would test something else.
 */
export async function checkServedBundle(origin) {
  if (process.env.WSGATE_E2E_LOCAL_BUNDLE === "1") return "routed";
  for (const [path, file] of [["/sm.js", BUNDLE], ["/sm-worker.js", WORKER_BUNDLE], ["/", DEMO_HTML]]) {
    const served = await getOnce(`${origin}${path}`);
    const local = readFileSync(file);
    if (!served.equals(local)) {
      throw new Error(
        `${origin}${path} (${served.length} bytes) differs from ${file} (${local.length} bytes): the gateway binary embeds an older copy. Rebuild it (cargo build -p wsgate) or set WSGATE_E2E_LOCAL_BUNDLE=1.`,
      );
    }
  }
  return "embedded";
}

/** Opens a page of the gateway's demo origin (secure: 127.0.0.1, insecure: wsgate.test). */
export async function openPage(browser, port, { secure }) {
  const page = await browser.context.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  // The demo page's Content-Security-Policy: anything it blocks (a script,
  // a style, WebAssembly, a WebSocket) is a failure of the page's tests.
  page.on("console", (m) => {
    if (m.type() === "error" && /Content Security Policy/i.test(m.text())) errors.push(m.text());
  });
  const origin = `http://${secure ? "127.0.0.1" : INSECURE_HOST}:${port}`;
  await page.goto(`${origin}/`);
  if (process.env.WSGATE_E2E_LOCAL_BUNDLE === "1") {
    // The local demo page, written into the document the gateway served: a
    // fulfilled (routed) document would have no IP address, and Chromium's
    // Local Network Access checks would then block its WebSocket to 127.0.0.1.
    await page.setContent(readFileSync(DEMO_HTML, "utf8"));
  }
  return { page, origin, errors };
}
