// sm.js and the demo page in real headless Chromium against the real
// gateway, in a secure context (http://127.0.0.1:PORT, Web Crypto) and an
// insecure one (http://wsgate.test:PORT mapped to 127.0.0.1: no
// crypto.subtle, so the noble backend).
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync, rmSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { checkPrerequisites, checkServedBundle, freePort, launchBrowser, openPage, publish, startGateway, tempDir, writeConfig } from "./harness.mjs";

let gw;
let browser;
let port;
let dataDir;
let configDir;
let config;

before(async () => {
  checkPrerequisites();
  port = await freePort();
  dataDir = tempDir("wsgate-e2e-data-");
  configDir = tempDir("wsgate-e2e-config-");
  config = writeConfig(configDir);
  gw = await startGateway({ port, dataDir, config });
  await checkServedBundle(gw.origin);
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await gw?.stop();
  for (const d of [dataDir, configDir]) if (d) rmSync(d, { recursive: true, force: true });
});

// The issue asks for the same session after a gateway restart. A gateway
// whose session state lives in memory forgets it; then set
// WSGATE_E2E_SESSIONS_SURVIVE_RESTART=0 to expect sm.js to surface
// session_expired instead (autoRelogin sessions must recover either way).
const SESSIONS_SURVIVE_RESTART = process.env.WSGATE_E2E_SESSIONS_SURVIVE_RESTART !== "0";

const CONTEXTS = [
  { secure: true, label: "secure context (127.0.0.1)", backend: "webcrypto" },
  { secure: false, label: "insecure context (wsgate.test)", backend: "noble" },
];

for (const ctx of CONTEXTS) {
  test(`${ctx.label}: crypto.subtle is ${ctx.secure ? "present" : "absent"}; /sm.js served as a module`, async () => {
    const { page, errors } = await openPage(browser, port, ctx);
    const env = await page.evaluate(async () => {
      const mod = await import("/sm.js");
      return { secure: isSecureContext, subtle: typeof crypto.subtle, hasSubtle: mod.hasSubtle(), exports: Object.keys(mod).sort(), protocol: mod.PROTOCOL };
    });
    assert.equal(env.secure, ctx.secure);
    assert.equal(env.subtle, ctx.secure ? "object" : "undefined");
    assert.equal(env.hasSubtle, ctx.secure);
    assert.deepEqual(env.exports, ["PROTOCOL", "Session", "SharedSession", "WsgateError", "connect", "hasSubtle"]);
    assert.equal(env.protocol, "wsgate-v1");
    const res = await page.request.get(`${gw.origin}/sm.js`);
    assert.match(res.headers()["content-type"], /^text\/javascript/);
    assert.deepEqual(errors, []);
    await page.close();
  });

  test(`${ctx.label}: API: login, plain and sensitive echo, whoami, error codes, logout`, async () => {
    const { page, errors } = await openPage(browser, port, ctx);
    // The login as the browser sent and received it: sealed (docs/protocol.md §4.1).
    const seen = [];
    page.on("response", (res) => {
      const req = res.request();
      if (req.method() !== "PUT" || !req.url().endsWith("/auth/session")) return;
      seen.push(res.text().then((text) => ({ request: req.postData() ?? "", status: res.status(), response: text }), (e) => ({ request: req.postData() ?? "", status: res.status(), response: `"unreadable: ${e.message}"` })));
    });
    const r = await page.evaluate(async () => {
      const { connect, WsgateError } = await import("/sm.js");
      const out = {};
      try {
        await connect({ username: "demo", password: "not-the-password" });
        out.wrong = "no error";
      } catch (e) {
        out.wrong = { code: e.code, message: e.message, isWsgateError: e instanceof WsgateError };
      }
      const frames = [];
      const s = await connect({ username: "demo", password: "wsgate-demo", onFrame: (dir, bytes, info) => frames.push([dir, info && info.typeName, info && info.encrypted]) });
      const states = [];
      s.on("state", (d) => states.push(d.state));
      out.backend = s.backend;
      out.user = s.user;
      out.ip = s.ip;
      out.state = s.state;
      out.sid = s.sessionId;
      const td = new TextDecoder();
      out.plain = td.decode(await s.request("sys.echo", "plain hello"));
      out.sensitive = td.decode(await s.request("sys.echo", "sensitive hello", { sensitive: true }));
      out.bytes = Array.from(await s.request("sys.echo", new Uint8Array([0, 1, 254, 255]), { sensitive: true }));
      out.json = await s.requestJson("sys.echo", { n: 1, s: "ü" });
      out.whoami = await s.requestJson("sys.whoami");
      try {
        await s.request("no.such.route", "x");
      } catch (e) {
        out.notFound = e.code;
      }
      out.afterError = td.decode(await s.request("sys.echo", "still open"));
      await s.logout();
      try {
        await s.request("sys.echo", "x");
      } catch (e) {
        out.afterLogout = e.code;
      }
      out.states = states;
      out.frames = frames;
      return out;
    });
    assert.equal(r.wrong.code, "invalid-proof");
    assert.equal(r.wrong.isWsgateError, true);
    assert.match(r.wrong.message, /Wrong user name or password/);
    assert.equal(r.backend, ctx.backend);
    assert.equal(r.user, "demo");
    assert.equal(r.ip, "127.0.0.1");
    assert.equal(r.state, "open");
    assert.equal(r.sid.length, 22);
    assert.equal(r.plain, "plain hello");
    assert.equal(r.sensitive, "sensitive hello");
    assert.deepEqual(r.bytes, [0, 1, 254, 255]);
    assert.deepEqual(r.json, { n: 1, s: "ü" });
    assert.equal(r.whoami.user, "demo");
    assert.equal(r.whoami.ip, "127.0.0.1");
    assert.ok(r.whoami.session_expires_in > 0);
    assert.equal(r.notFound, "not_found");
    assert.equal(r.afterError, "still open");
    assert.equal(r.afterLogout, "closed");
    assert.deepEqual(r.states, ["closed"]);
    assert.deepEqual(r.frames.slice(0, 3), [
      ["in", "HELLO", false],
      ["out", "KEY_INIT", false],
      ["in", "KEY_ACK", true],
    ]);
    assert.ok(r.frames.some(([d, t, e]) => d === "out" && t === "REQUEST" && e === true));
    assert.ok(r.frames.some(([d, t, e]) => d === "out" && t === "REQUEST" && e === false));
    assert.ok(r.frames.some(([d, t]) => d === "out" && t === "LOGOUT"));
    // Two logins (the wrong password, then the good one), two requests each,
    // every one sealed: no SCRAM message, user name or nonce in clear.
    const logins = await Promise.all(seen);
    assert.equal(logins.length, 4, JSON.stringify(logins));
    assert.deepEqual(
      // (Member order of an outer body is not part of the protocol.)
      logins.map((l) => [Object.keys(JSON.parse(l.request)).sort().join(","), l.status, JSON.parse(l.response).status, Object.keys(JSON.parse(l.response)).sort().join(",")]),
      [
        ["ct,enc,kid", 401, "unauthenticated", "ct,sid,status"],
        ["ct,sid", 401, "failed", "ct,status"],
        ["ct,enc,kid", 401, "unauthenticated", "ct,sid,status"],
        ["ct,sid", 200, "authenticated", "ct,status"],
      ],
    );
    for (const l of logins) {
      for (const clear of ["scram", "demo", "p=wsgate-v1", "r=", "v="]) {
        assert.ok(!l.request.includes(clear) && !l.response.includes(clear), `"${clear}" in a login message: ${JSON.stringify(l)}`);
      }
    }
    assert.deepEqual(errors, []);
    await page.close();
  });

  test(`${ctx.label}: demo page: wrong password shows invalid-proof; login; plain and sensitive echo; whoami; logout`, async () => {
    const { page, errors } = await openPage(browser, port, ctx);
    assert.equal(await page.inputValue("#username"), "demo");
    assert.equal(await page.inputValue("#password"), "wsgate-demo");
    await page.waitForFunction(() => !document.getElementById("context").textContent.includes("checking"));
    assert.match(await page.textContent("#context"), ctx.secure ? /secure context/ : /not a secure context/);

    await page.fill("#password", "wrong password");
    await page.click("#login");
    await page.waitForSelector("#error.show", { timeout: 15_000 });
    assert.match(await page.textContent("#error"), /invalid-proof/);
    assert.match(await page.textContent("#error"), /Wrong user name or password/);

    await page.fill("#password", "wsgate-demo");
    await page.click("#login");
    await page.waitForSelector("#session-card:not(.hidden)", { timeout: 15_000 });
    assert.equal(await page.textContent("#user"), "demo");
    assert.equal(await page.textContent("#ip"), "127.0.0.1");
    assert.equal(await page.textContent("#backend"), ctx.backend);
    assert.equal(await page.textContent("#state"), "open");
    assert.equal(await page.isVisible("#error"), false);

    await page.fill("#message", "demo plain message");
    await page.click("#send-plain");
    await page.waitForFunction(() => document.getElementById("response").textContent.includes("demo plain message"));
    assert.match(await page.textContent("#response"), /plain response/);

    await page.fill("#message", "demo secret message");
    await page.click("#send-sensitive");
    await page.waitForFunction(() => document.getElementById("response").textContent.includes("demo secret message"));
    assert.match(await page.textContent("#response"), /sensitive response/);

    // The wire panel: the plain request is readable, the sensitive one is not.
    const wire = await page.$$eval(".frame", (els) => els.map((el) => ({ head: el.querySelector(".head").textContent, text: el.querySelector(".text").textContent, hex: el.querySelector("pre").textContent })));
    const requests = wire.filter((f) => f.head.includes("REQUEST"));
    assert.equal(requests.length, 2);
    const plainReq = requests.find((f) => f.head.includes("integrity-protected"));
    const secretReq = requests.find((f) => f.head.includes("encrypted"));
    assert.ok(plainReq.text.includes("demo plain message"));
    assert.match(plainReq.hex, /^0000 {2}10 00 00 00 00 /, "hex dump starts with the REQUEST header");
    assert.ok(!secretReq.text.includes("demo secret message"));
    assert.ok(wire.some((f) => f.head.includes("HELLO") && f.head.includes("unprotected")));
    assert.ok(wire.some((f) => f.head.includes("KEY_INIT")));

    await page.click("#whoami");
    await page.waitForFunction(() => document.getElementById("response").textContent.includes("sys.whoami"));
    const who = JSON.parse((await page.textContent("#response")).replace(/^sys\.whoami:\n/, ""));
    assert.equal(who.user, "demo");
    assert.equal(who.ip, "127.0.0.1");

    await page.click("#logout");
    await page.waitForSelector("#login-card:not(.hidden)");
    assert.match(await page.textContent("#state"), /closed/);
    assert.equal(await page.isVisible("#error"), false, "a deliberate logout is not shown as an error");
    assert.deepEqual(errors, []);
    await page.close();
  });
}

for (const ctx of CONTEXTS) {
  test(`${ctx.label}: subscriptions: plain and sensitive channels, events from /api/publish, unsubscribe`, async () => {
    const { page, errors } = await openPage(browser, port, ctx);
    await page.evaluate(async () => {
      const { connect } = await import("/sm.js");
      const s = await connect({ username: "demo", password: "wsgate-demo" });
      window.__s = s;
      window.__events = [];
      const td = new TextDecoder();
      const record = (data, meta) => window.__events.push([meta.channel, meta.encrypted, td.decode(data)]);
      window.__offNews = await s.subscribe("news", record);
      window.__plainSecret = await s.subscribe("secret.alerts", record).then(() => "no error", (e) => e.code);
      window.__offSecret = await s.subscribe("secret.alerts", record, { sensitive: true });
      window.__unknown = await s.subscribe("nope", record).then(() => "no error", (e) => e.code);
    });
    await publish(gw.origin, "news", { headline: "plain news" });
    await publish(gw.origin, "secret.alerts", "sensitive alert");
    await page.waitForFunction(() => window.__events.length === 2, null, { timeout: 10_000 });
    const first = await page.evaluate(() => ({ events: window.__events, plainSecret: window.__plainSecret, unknown: window.__unknown }));
    assert.equal(first.plainSecret, "encryption_required");
    assert.equal(first.unknown, "not_found");
    assert.deepEqual(first.events, [
      ["news", false, '{"headline":"plain news"}'],
      ["secret.alerts", true, '"sensitive alert"'],
    ]);
    await page.evaluate(() => window.__offNews());
    await publish(gw.origin, "news", "after unsubscribe");
    await publish(gw.origin, "secret.alerts", "second alert");
    await page.waitForFunction(() => window.__events.length >= 3, null, { timeout: 10_000 });
    await new Promise((r) => setTimeout(r, 200));
    const events = await page.evaluate(async () => {
      await window.__s.logout();
      return window.__events;
    });
    assert.deepEqual(events.slice(2), [["secret.alerts", true, '"second alert"']]);
    assert.deepEqual(errors, []);
    await page.close();
  });
}

test("the README example works as written (insecure context)", async () => {
  const md = readFileSync(fileURLToPath(new URL("../../README-section.md", import.meta.url)), "utf8");
  const html = /```html\n([\s\S]*?)```/.exec(md)[1];
  const { page, errors, origin } = await openPage(browser, port, CONTEXTS[1]);
  // An app's own page, not the demo page: the demo page's strict CSP (its
  // own inline script by hash only) is not what an app page carries.
  await page.goto(`${origin}/healthz`);
  await page.setContent(html);
  await page.fill("#user", "demo");
  await page.fill("#pass", "wsgate-demo");
  await page.click("#login button");
  await page.waitForSelector("#card:not([disabled])", { timeout: 15_000 });
  await publish(gw.origin, "news", "hello readers");
  await page.waitForFunction(() => document.getElementById("out").textContent.includes("hello readers"), null, { timeout: 10_000 });
  await page.click("#card");
  await page.waitForFunction(() => document.getElementById("out").textContent.includes("echo:"), null, { timeout: 10_000 });
  await page.click("#bye");
  await page.waitForFunction(() => document.getElementById("out").textContent.includes("logged out"), null, { timeout: 10_000 });
  const out = await page.textContent("#out");
  assert.match(out, /^logged in as demo from 127\.0\.0\.1 \(crypto: noble\)$/m);
  assert.match(out, /^whoami: \{.*"user":"demo".*\}$/m);
  assert.match(out, /^event on news: "hello readers"$/m);
  assert.match(out, /^echo: \{"card":"4111 1111 1111 1111"\}$/m);
  assert.match(out, /^logged out$/m);
  assert.doesNotMatch(out, /failed/);
  assert.deepEqual(errors, []);
  await page.close();
});

test("reconnect after the gateway is killed and restarted on the same port and data dir", async (t) => {
  // Two default sessions (secure and insecure context) and one with
  // autoRelogin, all alive across the same kill/restart.
  const setups = [
    { ...CONTEXTS[0], autoRelogin: false },
    { ...CONTEXTS[1], autoRelogin: false },
    { ...CONTEXTS[1], autoRelogin: true, label: `${CONTEXTS[1].label} with autoRelogin` },
  ];
  const pages = [];
  for (const ctx of setups) {
    const { page, errors } = await openPage(browser, port, ctx);
    await page.evaluate(async (autoRelogin) => {
      const { connect } = await import("/sm.js");
      const s = await connect({ username: "demo", password: "wsgate-demo", maxReconnectDelay: 500, requestTimeout: 20_000, autoRelogin });
      window.__s = s;
      window.__states = [];
      window.__relogins = [];
      s.on("state", (d) => window.__states.push([d.state, d.error ? d.error.code : null]));
      s.on("session", (d) => window.__relogins.push(d.sessionId));
      window.__sid = s.sessionId;
      window.__news = [];
      await s.subscribe("news", (d) => window.__news.push(new TextDecoder().decode(d)));
    }, ctx.autoRelogin);
    pages.push({ page, errors, ctx });
  }
  await gw.stop("SIGKILL");
  for (const { page } of pages) {
    await page.waitForFunction(() => window.__s.state === "reconnecting", null, { timeout: 10_000 });
    // A request made while the gateway is down waits for the reconnect.
    await page.evaluate(() => {
      window.__pending = window.__s.request("sys.echo", "sent while down", { sensitive: true }).then(
        (b) => new TextDecoder().decode(b),
        (e) => `error ${e.code}: ${e.message}`,
      );
    });
  }
  await new Promise((r) => setTimeout(r, 700));
  gw = await startGateway({ port, dataDir, config });
  const results = [];
  for (const { page, errors, ctx } of pages) {
    await page.waitForFunction(() => window.__s.state !== "reconnecting", null, { timeout: 20_000 });
    const r = await page.evaluate(async () => {
      const s = window.__s;
      const out = { state: s.state, states: [...window.__states], sameSession: s.sessionId === window.__sid, relogins: window.__relogins.length };
      out.pending = await window.__pending;
      if (s.state === "open") out.whoami = await s.requestJson("sys.whoami");
      return out;
    });
    results.push({ r, errors, ctx, page });
  }
  // Subscriptions were restored before the queued request went out (the
  // server handles a connection's frames in order): one publish reaches all.
  await publish(gw.origin, "news", "after restart");
  for (const { r, page } of results) {
    if (r.state !== "open") continue;
    Object.assign(
      r,
      await page.evaluate(async () => {
        const deadline = Date.now() + 5000;
        while (window.__news.length === 0 && Date.now() < deadline) await new Promise((res) => setTimeout(res, 20));
        const news = [...window.__news];
        await window.__s.logout();
        const afterLogout = await window.__s.request("sys.echo", "x").then(() => "no error", (e) => e.code);
        return { news, afterLogout };
      }),
    );
  }
  for (const { r, errors, ctx, page } of results) {
    if (!ctx.autoRelogin && !SESSIONS_SURVIVE_RESTART) {
      await t.test(`${ctx.label}: the forgotten session is surfaced as session_expired (WSGATE_E2E_SESSIONS_SURVIVE_RESTART=0)`, () => {
        const detail = JSON.stringify(r);
        assert.deepEqual(r.states, [["reconnecting", "closed"], ["closed", "session_expired"]], detail);
        assert.equal(r.state, "closed");
        assert.match(r.pending, /^error session_expired: .*Log in again/, detail);
        assert.deepEqual(errors, []);
      });
      await page.close();
      continue;
    }
    await t.test(ctx.autoRelogin ? `${ctx.label}: back online (same session, or a transparent new login if the gateway forgot it)` : `${ctx.label}: same session, new WebSocket and KEY_INIT`, () => {
      const detail = JSON.stringify(r);
      assert.equal(r.states[0][0], "reconnecting", detail);
      if (!ctx.autoRelogin) {
        assert.ok(
          r.sameSession && r.state === "open",
          `the session did not survive the gateway restart (sm.js ended it with ${r.states.at(-1)[1]}): the gateway must keep sessions across a restart with the same data dir, or run with WSGATE_E2E_SESSIONS_SURVIVE_RESTART=0 to expect session_expired instead. ${detail}`,
        );
      }
      assert.deepEqual(r.states.at(-1), ["open", null], detail);
      assert.equal(r.state, "open");
      assert.equal(r.pending, "sent while down");
      assert.equal(r.relogins, r.sameSession ? 0 : 1);
      assert.equal(r.whoami.user, "demo");
      assert.equal(r.whoami.ip, "127.0.0.1");
      assert.deepEqual(r.news, ['"after restart"'], "subscription restored");
      assert.equal(r.afterLogout, "closed");
      assert.deepEqual(errors, []);
    });
    await page.close();
  }
});
