// Presence (docs/protocol.md §6.6, issue 13) in real headless Chromium
// against the real gateway: two pages, two users, each seeing the other
// join and leave — through the API (`presence()`, `subscribe(…, { presence })`)
// and through the demo page's "Who is online" panel.
//
// Run it alone with a fresh binary:
//
//   cargo build -p wsgate
//   cd js && node --test --test-timeout=180000 test/e2e/presence.test.mjs
//
// (WSGATE_E2E_LOCAL_BUNDLE=1 serves sm.js and the demo page from this tree
// instead of what the binary embeds.) What it needs from the gateway:
// - `[[channels]]` with `presence = true` (config written below): `room.*`,
//   sensitive `secret.room.*`, and `demo.*` (the demo page's `demo.room`;
//   `serve --demo` may configure that itself, the test does not rely on it);
// - PRESENCE (0x26) answered `{"users":[{"user","connections"}…]}` sorted by
//   user; SUBSCRIBE with `{"presence_events": true}`; PRESENCE_EVENT (0x27)
//   `{"join"}` / `{"leave"}`, ENC on a sensitive channel; PRESENCE on a
//   channel without presence: `ERR not_found`;
// - a second user made with `wsgate user add` in the data dir, beside
//   `--demo`'s demo / wsgate-demo.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { API_KEY, WSGATE_BIN, checkPrerequisites, checkServedBundle, freePort, launchBrowser, openPage, startGateway, tempDir } from "./harness.mjs";

const ALICE = "alice";
const ALICE_PASSWORD = `alice-${Math.random().toString(36).slice(2)}`;

let gw;
let browser;
let port;
let dataDir;
let configDir;

function writePresenceConfig(dir) {
  const file = join(dir, "wsgate-e2e-presence.toml");
  writeFileSync(
    file,
    [
      `api_keys = ["${API_KEY}"]`,
      "",
      "[[channels]]",
      'pattern = "room.*"',
      "presence = true",
      "",
      "[[channels]]",
      'pattern = "secret.room.*"',
      "sensitive = true",
      "presence = true",
      "",
      "[[channels]]",
      'pattern = "demo.*"',
      "presence = true",
      "",
      "[[channels]]",
      'pattern = "news"',
      "",
    ].join("\n"),
  );
  return file;
}

before(async () => {
  checkPrerequisites();
  port = await freePort();
  dataDir = tempDir("wsgate-e2e-presence-data-");
  configDir = tempDir("wsgate-e2e-presence-config-");
  const add = spawnSync(WSGATE_BIN, ["user", "add", ALICE, "--data-dir", dataDir, "--password-stdin", "--iterations", "4096"], { input: `${ALICE_PASSWORD}\n`, encoding: "utf8" });
  if (add.status !== 0) throw new Error(`wsgate user add failed: ${add.stderr}${add.stdout}`);
  gw = await startGateway({ port, dataDir, config: writePresenceConfig(configDir) });
  await checkServedBundle(gw.origin);
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await gw?.stop();
  for (const d of [dataDir, configDir]) if (d) rmSync(d, { recursive: true, force: true });
});

/** In a page: connects as `username` and keeps the session and a presence log in `window`. */
async function login(page, username, password) {
  await page.evaluate(
    async ({ username, password }) => {
      const { connect } = await import("/sm.js");
      window.__s = await connect({ username, password });
      window.__presence = [];
      window.__off = {};
    },
    { username, password },
  );
}

/** In a page: subscribes to `channel` with a presence handler that logs [channel, "join"|"leave", user, encrypted]. */
async function watch(page, channel, sensitive = false) {
  await page.evaluate(
    async ({ channel, sensitive }) => {
      window.__off[channel] = await window.__s.subscribe(channel, () => {}, {
        sensitive,
        presence: (d, meta) => window.__presence.push([meta.channel, d.join !== undefined ? "join" : "leave", d.join ?? d.leave, meta.encrypted]),
      });
    },
    { channel, sensitive },
  );
}

const presenceOf = (page, channel, sensitive = false) => page.evaluate(({ channel, sensitive }) => window.__s.presence(channel, { sensitive }), { channel, sensitive });

/**
 * presence() until it answers `want` (presence is fleet state: the protocol
 * does not promise it changed by the time a SUBSCRIBE is answered).
 */
async function presenceIs(page, channel, sensitive, want, what) {
  const deadline = Date.now() + 10_000;
  let got;
  for (;;) {
    got = await presenceOf(page, channel, sensitive);
    if (JSON.stringify(got) === JSON.stringify(want) || Date.now() > deadline) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  assert.deepEqual(got, want, what);
}

/** Waits until the page's presence log has `entry` after index `from`; returns its index. */
async function waitFor(page, entry, from = 0) {
  const handle = await page.waitForFunction(
    ({ entry, from }) => {
      const i = window.__presence.findIndex((e, k) => k >= from && JSON.stringify(e) === JSON.stringify(entry));
      return i >= 0 ? i + 1 : 0;
    },
    { entry, from },
    { timeout: 10_000 },
  );
  return (await handle.jsonValue()) - 1;
}

for (const [channel, sensitive] of [
  ["room.e2e", false],
  ["secret.room.e2e", true],
]) {
  test(`two users in two pages see each other join and leave ${channel}${sensitive ? " (sensitive: encrypted)" : ""}`, async () => {
    // demo in a secure page (Web Crypto), alice in an insecure one (noble).
    const a = await openPage(browser, port, { secure: true });
    const b = await openPage(browser, port, { secure: false });
    await login(a.page, "demo", "wsgate-demo");
    await login(b.page, ALICE, ALICE_PASSWORD);

    await watch(a.page, channel, sensitive);
    await presenceIs(b.page, channel, sensitive, { users: [{ user: "demo", connections: 1 }], truncated: false }, "alice asks without being subscribed");

    await watch(b.page, channel, sensitive);
    const joinAt = await waitFor(a.page, [channel, "join", ALICE, sensitive]);
    const both = { users: [ALICE, "demo"].map((user) => ({ user, connections: 1 })), truncated: false };
    await presenceIs(a.page, channel, sensitive, both);
    await presenceIs(b.page, channel, sensitive, both);

    // demo leaves (unsubscribes) and comes back; alice sees both.
    await a.page.evaluate((ch) => window.__off[ch](), channel);
    const leaveAt = await waitFor(b.page, [channel, "leave", "demo", sensitive]);
    await presenceIs(b.page, channel, sensitive, { users: [{ user: ALICE, connections: 1 }], truncated: false });
    await watch(a.page, channel, sensitive);
    await waitFor(b.page, [channel, "join", "demo", sensitive], leaveAt + 1);

    // alice's page closes its session: demo sees her leave.
    await b.page.evaluate(() => window.__s.close());
    await waitFor(a.page, [channel, "leave", ALICE, sensitive], joinAt + 1);
    await presenceIs(a.page, channel, sensitive, { users: [{ user: "demo", connections: 1 }], truncated: false });

    // Nobody heard of someone else, and every event of the channel had its meta.
    for (const { page } of [a, b]) {
      const log = await page.evaluate(() => window.__presence);
      assert.ok(log.every(([ch, kind, user, enc]) => ch === channel && ["join", "leave"].includes(kind) && [ALICE, "demo"].includes(user) && enc === sensitive), JSON.stringify(log));
    }
    const notFound = await a.page.evaluate(() => window.__s.presence("news").then(() => "no error", (e) => e.code));
    assert.equal(notFound, "not_found", "a channel without presence");
    await a.page.evaluate(() => window.__s.logout());
    assert.deepEqual(a.errors, []);
    assert.deepEqual(b.errors, []);
    await a.page.close();
    await b.page.close();
  });
}

test("the demo page's Who is online panel: two users see each other come and go", async () => {
  const pages = [];
  for (const [secure, user, password] of [
    [true, "demo", "wsgate-demo"],
    [false, ALICE, ALICE_PASSWORD],
  ]) {
    const p = await openPage(browser, port, { secure });
    await p.page.fill("#username", user);
    await p.page.fill("#password", password);
    await p.page.click("#login");
    await p.page.waitForSelector("#session-card:not(.hidden)", { timeout: 15_000 });
    await p.page.waitForSelector("#presence-card:not(.hidden)", { timeout: 10_000 });
    pages.push(p);
  }
  const names = (page) => page.$$eval("#presence-list .name", (els) => els.map((e) => e.textContent));
  const waitNames = (page, want) =>
    page.waitForFunction((want) => JSON.stringify([...document.querySelectorAll("#presence-list .name")].map((e) => e.textContent)) === JSON.stringify(want), want, { timeout: 10_000 });
  const [demo, alice] = pages;
  // demo saw alice join by an event; alice's list came from presence().
  await waitNames(demo.page, [ALICE, "demo"]);
  await waitNames(alice.page, [ALICE, "demo"]);
  assert.equal(await demo.page.textContent("#presence-channel"), "demo.room");
  assert.match(await demo.page.textContent("#presence-count"), /^2 online/);
  assert.deepEqual(await demo.page.$$eval("#presence-list li", (els) => els.map((e) => e.textContent)), [ALICE, "demo(you)"]);

  // alice logs out: demo sees her leave; she logs in again: back.
  await alice.page.click("#logout");
  await alice.page.waitForSelector("#login-card:not(.hidden)");
  assert.equal(await alice.page.isVisible("#presence-card"), false, "the panel goes with the session");
  await waitNames(demo.page, ["demo"]);
  assert.match(await demo.page.textContent("#presence-count"), /^1 online/);
  await alice.page.fill("#password", ALICE_PASSWORD);
  await alice.page.click("#login");
  await waitNames(demo.page, [ALICE, "demo"]);
  assert.deepEqual(await names(alice.page), [ALICE, "demo"]);

  await demo.page.click("#logout");
  await waitNames(alice.page, [ALICE]);
  await alice.page.click("#logout");
  for (const { errors, page } of pages) {
    assert.deepEqual(errors, []);
    await page.close();
  }
});
