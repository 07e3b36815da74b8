// A fresh app on another origin (issue 14), in headless Chromium: the npm
// package as a user gets it (`npm pack`, then `npm install` of the tarball in
// a throw-away folder, offline: the package has no dependencies), an app that
// imports it by name, bundled with esbuild and served by a small Node HTTP
// server on another port of 127.0.0.1, against a gateway whose
// allowed_origins lists that origin. Then the same app from an origin that is
// not listed: the login is refused with a clear WsgateError and the gateway
// refuses its WebSocket with 403.
//
// Both app origins are http://127.0.0.1:PORT, a secure context (Web Crypto
// backend): the insecure-context path is the same sm.js code covered by
// browser.test.mjs, and the origin checks do not depend on it. Documents come
// from real loopback servers, so Chromium's Local Network Access checks allow
// their requests to the gateway on 127.0.0.1.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { readFileSync, readdirSync, rmSync, writeFileSync, mkdirSync, existsSync } from "node:fs";
import { createServer, request as httpRequest } from "node:http";
import { join } from "node:path";
import { build } from "esbuild";
import { checkPrerequisites, checkServedBundle, freePort, JS_DIR, launchBrowser, publish, sleep, startGateway, tempDir, writeConfig } from "./harness.mjs";

const NPM = process.platform === "win32" ? "npm.cmd" : "npm";

let root;
let gw;
let browser;
/** @type {{ server: import("node:http").Server, origin: string }[]} */
const apps = [];
let allowed;
let unlisted;

// The app a user would write: imports the package by name.
const MAIN_JS = `
import { connect, WsgateError, PROTOCOL } from "wsgate-sm";

const td = new TextDecoder();

// Logs in to the gateway at gatewayOrigin, sends plain and sensitive
// requests, subscribes to a plain and a sensitive channel.
window.runApp = async (gatewayOrigin) => {
  const out = { protocol: PROTOCOL, pageOrigin: location.origin };
  const s = await connect({ url: gatewayOrigin, username: "demo", password: "wsgate-demo" });
  window.session = s;
  out.backend = s.backend;
  out.user = s.user;
  out.state = s.state;
  out.plain = td.decode(await s.request("sys.echo", "plain from another origin"));
  out.sensitive = td.decode(await s.request("sys.echo", "sensitive from another origin", { sensitive: true }));
  window.events = [];
  await s.subscribe("news", (data, meta) => window.events.push({ channel: meta.channel, data: td.decode(data), encrypted: !!meta.encrypted }));
  await s.subscribe("secret.alerts", (data, meta) => window.events.push({ channel: meta.channel, data: td.decode(data), encrypted: !!meta.encrypted }), { sensitive: true });
  return out;
};

// Shared mode from this origin: the worker script is the package's
// dist/sm-worker.js, copied onto this origin (default workerUrl: next to
// app.js, or given explicitly).
window.runShared = async (gatewayOrigin, workerUrl) => {
  const s = await connect({ url: gatewayOrigin, username: "demo", password: "wsgate-demo", shared: true, ...(workerUrl ? { workerUrl } : {}) });
  window.shared = s;
  return { shared: s.shared, sessionId: s.sessionId, echo: td.decode(await s.request("sys.echo", "shared from another origin", { sensitive: true })) };
};

// The same login, reporting how it failed.
window.tryLogin = async (gatewayOrigin) => {
  try {
    const s = await connect({ url: gatewayOrigin, username: "demo", password: "wsgate-demo", reconnect: false });
    await s.close();
    return { ok: true };
  } catch (e) {
    return { ok: false, isWsgateError: e instanceof WsgateError, code: e.code, message: e.message };
  }
};

// A bare WebSocket to the gateway, with sm.js's subprotocol: did it open, and how did it end?
window.tryWebSocket = (wsUrl) =>
  new Promise((resolve) => {
    const r = { opened: false, error: false };
    const ws = new WebSocket(wsUrl, "wsgate.v1");
    ws.onopen = () => { r.opened = true; ws.close(); };
    ws.onerror = () => { r.error = true; };
    ws.onclose = (ev) => { r.closeCode = ev.code; resolve(r); };
  });
`;

const INDEX_HTML = `<!doctype html>
<html><head><meta charset="utf-8"><title>wsgate app</title><script type="module" src="/app.js"></script></head>
<body><p>An app on another origin.</p></body></html>
`;

/** Serves index.html and app.js from dir on 127.0.0.1, on a port of its own. */
function serveApp(dir) {
  const files = { "/": ["index.html", "text/html; charset=utf-8"], "/index.html": ["index.html", "text/html; charset=utf-8"], "/app.js": ["app.js", "text/javascript; charset=utf-8"], "/sm-worker.js": ["sm-worker.js", "text/javascript; charset=utf-8"] };
  const server = createServer((req, res) => {
    const f = files[new URL(req.url ?? "/", "http://x").pathname];
    if (!f) {
      res.writeHead(404).end("not found");
      return;
    }
    res.writeHead(200, { "Content-Type": f[1], "Cache-Control": "no-store" }).end(readFileSync(join(dir, f[0])));
  });
  return new Promise((resolve, reject) => {
    server.on("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = /** @type {import("node:net").AddressInfo} */ (server.address());
      resolve({ server, origin: `http://127.0.0.1:${port}` });
    });
  });
}

/** A WebSocket upgrade to /ws with this Origin: the status the gateway answers. */
function upgradeStatus(gatewayPort, origin) {
  return new Promise((resolve, reject) => {
    const req = httpRequest({
      host: "127.0.0.1",
      port: gatewayPort,
      path: "/ws",
      agent: false,
      headers: { Connection: "Upgrade", Upgrade: "websocket", "Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Protocol": "wsgate.v1", Origin: origin },
    });
    req.on("upgrade", (res, socket) => {
      socket.destroy();
      resolve(res.statusCode);
    });
    req.on("response", (res) => {
      res.resume();
      resolve(res.statusCode);
    });
    req.on("error", reject);
    req.end();
  });
}

before(async () => {
  checkPrerequisites();
  root = tempDir("wsgate-e2e-origins-");

  // The package as published: npm pack (prepack builds dist/sm.js).
  const packDir = join(root, "pack");
  mkdirSync(packDir);
  const packOut = execFileSync(NPM, ["pack", "--json", "--pack-destination", packDir], { cwd: JS_DIR, encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
  const [info] = JSON.parse(packOut.slice(packOut.search(/^\[/m)));
  const tarball = join(packDir, info.filename);
  assert.ok(existsSync(tarball), `npm pack made no ${tarball}`);

  // A fresh app that installs it; offline: the package has no dependencies.
  const app = join(root, "app");
  mkdirSync(app);
  writeFileSync(join(app, "package.json"), JSON.stringify({ name: "wsgate-origins-app", version: "0.0.0", private: true, type: "module" }, null, 2));
  execFileSync(NPM, ["install", "--offline", "--no-audit", "--no-fund", "--ignore-scripts", tarball], { cwd: app, stdio: ["ignore", "pipe", "pipe"] });
  const installed = readdirSync(join(app, "node_modules")).filter((n) => !n.startsWith("."));
  assert.deepEqual(installed, ["wsgate-sm"], "installing the package pulls in nothing else");
  writeFileSync(join(app, "main.js"), MAIN_JS);
  // What README "Shared mode" tells an app to do: serve the package's worker on its own origin.
  writeFileSync(join(app, "sm-worker.js"), readFileSync(join(app, "node_modules/wsgate-sm/dist/sm-worker.js")));
  writeFileSync(join(app, "index.html"), INDEX_HTML);
  await build({ absWorkingDir: app, entryPoints: [join(app, "main.js")], outfile: join(app, "app.js"), bundle: true, format: "esm", platform: "browser", target: ["es2020"], logLevel: "error" });
  // The bundle resolved the name through the package's exports: it embeds the package's module.
  assert.match(readFileSync(join(app, "app.js"), "utf8"), /wsgate-sm\/dist\/sm\.js/);

  allowed = await serveApp(app);
  unlisted = await serveApp(app);
  apps.push(allowed, unlisted);

  // The gateway: the e2e config (API key, channels news and secret.*) with
  // allowed_origins listing the first app origin only.
  const configDir = join(root, "config");
  mkdirSync(configDir);
  const config = writeConfig(configDir);
  writeFileSync(config, `allowed_origins = ["${allowed.origin}"]\n\n${readFileSync(config, "utf8")}`);
  const dataDir = join(root, "data");
  mkdirSync(dataDir);
  gw = await startGateway({ port: await freePort(), dataDir, config });
  await checkServedBundle(gw.origin);
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await gw?.stop();
  for (const a of apps) await new Promise((r) => a.server.close(r));
  if (root) rmSync(root, { recursive: true, force: true });
});

/** Opens the app's page; page errors are failures. */
async function openApp(origin) {
  const page = await browser.context.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  const consoleLines = [];
  page.on("console", (m) => consoleLines.push(m.text()));
  await page.goto(`${origin}/`);
  await page.waitForFunction(() => typeof (/** @type {any} */ (window).runApp) === "function");
  return { page, errors, consoleLines };
}

test("an app on a listed origin: npm package by name, login, plain and sensitive requests, events from /api/publish", async () => {
  const { page, errors } = await openApp(allowed.origin);
  const r = await page.evaluate((gwOrigin) => /** @type {any} */ (window).runApp(gwOrigin), gw.origin);
  assert.equal(r.pageOrigin, allowed.origin);
  assert.notEqual(r.pageOrigin, gw.origin, "the page is on another origin than the gateway");
  assert.equal(r.protocol, "wsgate-v1");
  assert.equal(r.backend, "webcrypto", "127.0.0.1 is a secure context");
  assert.equal(r.user, "demo");
  assert.equal(r.state, "open");
  assert.equal(r.plain, "plain from another origin");
  assert.equal(r.sensitive, "sensitive from another origin");

  await publish(gw.origin, "news", "hello, other origin");
  await publish(gw.origin, "secret.alerts", "secret for other origin");
  await page.waitForFunction(() => /** @type {any} */ (window).events.length >= 2, null, { timeout: 10_000 });
  const events = await page.evaluate(() => /** @type {any} */ (window).events);
  events.sort((a, b) => a.channel.localeCompare(b.channel));
  assert.deepEqual(events, [
    // /api/publish takes JSON `data`; subscribers get its JSON bytes.
    { channel: "news", data: JSON.stringify("hello, other origin"), encrypted: false },
    { channel: "secret.alerts", data: JSON.stringify("secret for other origin"), encrypted: true },
  ]);
  await page.evaluate(() => /** @type {any} */ (window).session.logout());
  // A bare WebSocket from this origin passes the gateway's Origin check too.
  const ws = await page.evaluate((u) => /** @type {any} */ (window).tryWebSocket(u), `${gw.origin.replace(/^http:/, "ws:")}/ws`);
  assert.equal(ws.opened, true);
  assert.deepEqual(errors, []);
  await page.close();
});

test("an app on a listed origin hosts the package's sm-worker.js: two pages share one session in shared mode", async () => {
  const a = await openApp(allowed.origin);
  const b = await openApp(allowed.origin);
  const ra = await a.page.evaluate((gwOrigin) => /** @type {any} */ (window).runShared(gwOrigin), gw.origin);
  const rb = await b.page.evaluate((gwOrigin) => /** @type {any} */ (window).runShared(gwOrigin, "/sm-worker.js"), gw.origin);
  assert.deepEqual(ra, { shared: true, sessionId: ra.sessionId, echo: "shared from another origin" });
  assert.deepEqual(rb, { shared: true, sessionId: ra.sessionId, echo: "shared from another origin" }, "the second page joined the first page's session");
  // A worker URL on another origin (the gateway's own /sm-worker.js) cannot be a SharedWorker of this page.
  const cross = await a.page.evaluate(async (u) => {
    try {
      await (/** @type {any} */ (window).runShared)(u, u + "/sm-worker.js");
      return null;
    } catch (e) {
      return { code: e.code, message: e.message };
    }
  }, gw.origin);
  assert.equal(cross && cross.code, "invalid_argument");
  assert.match(cross.message, /not on this page's origin/);
  await a.page.evaluate(() => /** @type {any} */ (window).shared.logout());
  await b.page.waitForFunction(() => /** @type {any} */ (window).shared.state === "closed", null, { timeout: 10_000 });
  assert.deepEqual([...a.errors, ...b.errors], []);
  await a.page.close();
  await b.page.close();
});

test("the same app on an origin not listed: login refused (network_error naming allowed_origins), WebSocket refused with 403", async () => {
  const { page, errors, consoleLines } = await openApp(unlisted.origin);
  const r = await page.evaluate((gwOrigin) => /** @type {any} */ (window).tryLogin(gwOrigin), gw.origin);
  assert.equal(r.ok, false, "the login must fail from an origin not in allowed_origins");
  assert.equal(r.isWsgateError, true);
  assert.equal(r.code, "network_error");
  assert.match(r.message, /allowed_origins/);
  assert.ok(r.message.includes(unlisted.origin), `the message names the page's origin: ${r.message}`);

  const wsUrl = `${gw.origin.replace(/^http:/, "ws:")}/ws`;
  const ws = await page.evaluate((u) => /** @type {any} */ (window).tryWebSocket(u), wsUrl);
  assert.equal(ws.opened, false, "the gateway must not accept a WebSocket from an origin not listed");
  assert.equal(ws.error, true);
  assert.equal(ws.closeCode, 1006);
  // Chromium logs why the handshake failed.
  await sleep(100);
  assert.ok(
    consoleLines.some((l) => l.includes(wsUrl) && /403/.test(l)),
    `Chromium should report the 403 at the upgrade; console:\n${consoleLines.join("\n")}`,
  );
  // The same at the HTTP level: 403 for this origin, 101 for the listed one and the gateway's own.
  assert.equal(await upgradeStatus(gw.port, unlisted.origin), 403);
  assert.equal(await upgradeStatus(gw.port, allowed.origin), 101);
  assert.equal(await upgradeStatus(gw.port, gw.origin), 101);
  // Uncaught errors on the page would be the app's failure, not the gateway's refusal.
  assert.deepEqual(errors, []);
  await page.close();
});
