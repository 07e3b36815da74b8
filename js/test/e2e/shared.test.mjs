// Shared mode (README "Shared mode", issue 14) in real headless Chromium
// against the real gateway: three pages of one origin with
// `connect({ shared: true })` share one SharedWorker (the gateway's
// /sm-worker.js), so the gateway sees one login, one WebSocket and one
// KEY_INIT (its /metrics say so); concurrent requests from all three each
// get their own reply; an event reaches all three; closing the first page
// keeps the others working and releases only its subscriptions (the
// presence list of the channel only it held empties); `logout()` in one
// closes all. On a secure page (Web Crypto in the worker) and an insecure
// one (noble). Then the fallback: a page without SharedWorker gets a session
// of its own and says so (`shared === false`).
//
// Run it alone with a fresh binary:
//
//   cargo build -p wsgate
//   cd js && node --test --test-timeout=180000 test/e2e/shared.test.mjs
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { rmSync, writeFileSync } from "node:fs";
import { get as httpGet } from "node:http";
import { join } from "node:path";
import { API_KEY, checkPrerequisites, checkServedBundle, freePort, launchBrowser, openPage, publish, startGateway, tempDir } from "./harness.mjs";

let gw;
let browser;
let port;
let metricsPort;
let dataDir;
let configDir;

before(async () => {
  checkPrerequisites();
  port = await freePort();
  metricsPort = await freePort();
  dataDir = tempDir("wsgate-e2e-shared-data-");
  configDir = tempDir("wsgate-e2e-shared-config-");
  const config = join(configDir, "wsgate-e2e-shared.toml");
  writeFileSync(
    config,
    [`api_keys = ["${API_KEY}"]`, `metrics_listen = "127.0.0.1:${metricsPort}"`, "", "[[channels]]", 'pattern = "news"', "", "[[channels]]", 'pattern = "room.*"', "presence = true", ""].join("\n"),
  );
  gw = await startGateway({ port, dataDir, config });
  await checkServedBundle(gw.origin);
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await gw?.stop();
  for (const d of [dataDir, configDir]) if (d) rmSync(d, { recursive: true, force: true });
});

/** The gateway's counters from /metrics. */
function metrics() {
  return new Promise((resolve, reject) => {
    httpGet(`http://127.0.0.1:${metricsPort}/metrics`, { agent: false }, (res) => {
      let body = "";
      res.on("data", (c) => (body += c));
      res.on("end", () => {
        const m = {};
        for (const line of body.split("\n")) {
          const hit = /^(wsgate_[a-z_]+(?:\{[^}]*\})?) (\d+(?:\.\d+)?)$/.exec(line);
          if (hit) m[hit[1]] = Number(hit[2]);
        }
        resolve(m);
      });
    }).on("error", reject);
  });
}

const COUNTERS = ["wsgate_connections_total", 'wsgate_logins_total{result="ok"}', "wsgate_key_establishments_total"];

async function counters() {
  const m = await metrics();
  const out = {};
  for (const k of COUNTERS) {
    const v = Object.entries(m).find(([name]) => name === k || name.startsWith(`${k}{`));
    out[k] = v ? v[1] : 0;
  }
  out.open = m.wsgate_connections_open;
  return out;
}

/** In a page: connect({ shared: true }) into window.__s; an event log in window.__events. */
async function sharedLogin(page, password) {
  return page.evaluate(async (password) => {
    const { connect } = await import("/sm.js");
    window.__s = await connect({ username: "demo", password, shared: true });
    window.__events = [];
    window.__states = [];
    window.__s.on("state", (d) => window.__states.push([d.state, d.error ? d.error.code : null]));
    return { shared: window.__s.shared, state: window.__s.state, user: window.__s.user, sessionId: window.__s.sessionId, backend: window.__s.backend };
  }, password);
}

const subscribe = (page, channel) =>
  page.evaluate(async (channel) => {
    await window.__s.subscribe(channel, (data, meta) => window.__events.push([meta.channel, new TextDecoder().decode(data)]));
  }, channel);

const eventsOf = (page) => page.evaluate(() => window.__events);

async function presenceIs(page, channel, want, what) {
  const deadline = Date.now() + 10_000;
  let got;
  for (;;) {
    got = await page.evaluate((c) => window.__s.presence(c), channel);
    if (JSON.stringify(got) === JSON.stringify(want) || Date.now() > deadline) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  assert.deepEqual(got, want, what);
}

for (const secure of [true, false]) {
  const kind = secure ? "secure page (Web Crypto)" : "insecure page (noble)";
  test(`three pages, one WebSocket: requests, events, a closed page, logout — ${kind}`, async () => {
    const before = await counters();
    const pages = [];
    for (let i = 0; i < 3; i++) pages.push(await openPage(browser, port, { secure }));
    const infos = [];
    // The first page logs in; the others join without the password.
    infos.push(await sharedLogin(pages[0].page, "wsgate-demo"));
    for (const p of pages.slice(1)) infos.push(await sharedLogin(p.page, undefined));
    for (const info of infos) {
      assert.equal(info.shared, true);
      assert.equal(info.state, "open");
      assert.equal(info.user, "demo");
      assert.equal(info.sessionId, infos[0].sessionId, "one session");
      assert.equal(info.backend, secure ? "webcrypto" : "noble");
    }
    const after = await counters();
    assert.equal(after.wsgate_connections_total - before.wsgate_connections_total, 1, "exactly one WebSocket for three pages");
    assert.equal(after['wsgate_logins_total{result="ok"}'] - before['wsgate_logins_total{result="ok"}'], 1, "one login");
    assert.equal(after.wsgate_key_establishments_total - before.wsgate_key_establishments_total, 1, "one KEY_INIT");
    assert.equal(after.open, 1, "one connection open");

    // Concurrent requests from all three pages, each with its own reply.
    const replies = await Promise.all(
      pages.map((p, i) =>
        p.page.evaluate(async (i) => {
          const asks = [];
          for (let k = 0; k < 15; k++) asks.push(window.__s.request("sys.echo", `page ${i} #${k}`, { sensitive: k % 3 === 0 }).then((b) => new TextDecoder().decode(b)));
          return Promise.all(asks);
        }, i),
      ),
    );
    replies.forEach((r, i) => assert.deepEqual(r, Array.from({ length: 15 }, (_, k) => `page ${i} #${k}`)));

    // An event reaches all three; page 0 alone holds a presence channel.
    const room = `room.shared-${secure ? "s" : "i"}`;
    for (const p of pages) await subscribe(p.page, "news");
    await subscribe(pages[0].page, room);
    await presenceIs(pages[1].page, room, { users: [{ user: "demo", connections: 1 }], truncated: false }, "page 0's subscription is the connection's");
    await publish(gw.origin, "news", { n: 1 });
    for (const p of pages) await p.page.waitForFunction(() => window.__events.length === 1, null, { timeout: 10_000 });
    for (const p of pages) assert.deepEqual(await eventsOf(p.page), [["news", '{"n":1}']]);

    // Page 0 closes: the worker notices and releases only its subscriptions.
    await pages[0].page.close();
    await presenceIs(pages[1].page, room, { users: [], truncated: false }, "the channel only page 0 held was unsubscribed");
    await publish(gw.origin, "news", { n: 2 });
    for (const p of pages.slice(1)) await p.page.waitForFunction(() => window.__events.length === 2, null, { timeout: 10_000 });
    assert.equal(new TextDecoder().decode(Uint8Array.from(await pages[2].page.evaluate(async () => Array.from(await window.__s.request("sys.echo", "still")))))
      , "still");
    assert.equal((await counters()).open, 1, "the connection stays");

    // logout() in one page closes the session for every page.
    await pages[1].page.evaluate(() => window.__s.logout());
    await pages[2].page.waitForFunction(() => window.__s.state === "closed", null, { timeout: 10_000 });
    assert.deepEqual((await pages[2].page.evaluate(() => window.__states)).at(-1), ["closed", "closed"]);
    const err = await pages[2].page.evaluate(() => window.__s.request("sys.echo", "x").then(() => null, (e) => e.code));
    assert.equal(err, "closed");
    const deadline = Date.now() + 10_000;
    while ((await counters()).open !== 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    assert.equal((await counters()).open, 0, "the WebSocket closed");
    for (const p of pages.slice(1)) {
      assert.deepEqual(p.errors, [], `page errors: ${p.errors.join("; ")}`);
      await p.page.close();
    }
  });
}

test("without SharedWorker (removed from the page), shared: true runs the session in the page and says so", async () => {
  const before = await counters();
  const page = await browser.context.newPage();
  await page.addInitScript(() => {
    delete window.SharedWorker;
  });
  await page.goto(`${gw.origin}/`);
  const got = await page.evaluate(async () => {
    const { connect } = await import("/sm.js");
    const s = await connect({ username: "demo", password: "wsgate-demo", shared: true });
    const echo = new TextDecoder().decode(await s.request("sys.echo", "here", { sensitive: true }));
    const r = { shared: s.shared, echo, hasWorker: typeof SharedWorker };
    await s.logout();
    return r;
  });
  assert.deepEqual(got, { shared: false, echo: "here", hasWorker: "undefined" });
  const after = await counters();
  assert.equal(after.wsgate_connections_total - before.wsgate_connections_total, 1);
  await page.close();
});
