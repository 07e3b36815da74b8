// Channel continuity (docs/protocol.md §6.5, issue 12) in real headless
// Chromium against the real gateway: the gateway is killed and restarted
// while events flow to history channels; each page's handler must see every
// acknowledged event exactly once, in order, or a `gap` that covers it.
//
// Run alone with a fresh binary:
//
//   cargo build -p wsgate
//   cd js && node --test --test-timeout=180000 test/e2e/continuity.test.mjs
//
// (WSGATE_E2E_LOCAL_BUNDLE=1 serves sm.js built from src/ instead of the
// bundle the binary embeds.) What it needs from the gateway, beyond what
// browser.test.mjs does:
// - `[[channels]]` with `history = 100` (config written below): EVENT_AT,
//   SUBSCRIBE with `since` answered {"epoch","offset","recovered"}, replay;
// - `POST /api/publish` on a history channel answers the new event's
//   position {"epoch","offset"} (besides whatever else it says);
// - after a restart (same port, data dir and config) either the same
//   stream (same epoch: the page recovers) or a new epoch (the page gets a
//   `not_recovered` gap); both pass.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { API_KEY, checkPrerequisites, checkServedBundle, freePort, launchBrowser, openPage, sleep, startGateway, tempDir } from "./harness.mjs";

const CHANNELS = [
  { name: "hist.feed", sensitive: false },
  { name: "secret.hist.feed", sensitive: true },
];

let gw;
let browser;
let port;
let dataDir;
let configDir;
let config;

function writeHistoryConfig(dir) {
  const file = join(dir, "wsgate-e2e-continuity.toml");
  writeFileSync(
    file,
    [
      `api_keys = ["${API_KEY}"]`,
      "",
      "[[channels]]",
      'pattern = "hist.*"',
      "history = 100",
      "",
      "[[channels]]",
      'pattern = "secret.hist.*"',
      "sensitive = true",
      "history = 100",
      "",
    ].join("\n"),
  );
  return file;
}

/** POST /api/publish; resolves with the event's position, or null if the request failed (gateway down). */
async function publishAt(origin, channel, data) {
  let res;
  try {
    res = await fetch(`${origin}/api/publish`, {
      method: "POST",
      headers: { "Content-Type": "application/json", Authorization: `Bearer ${API_KEY}` },
      body: JSON.stringify({ channel, data }),
      signal: AbortSignal.timeout(2000),
    });
  } catch {
    return null; // not acknowledged: it may or may not have been published
  }
  const text = await res.text();
  if (res.status >= 500) return null;
  if (!res.ok) throw new Error(`publish to ${channel}: HTTP ${res.status} ${text}`);
  const j = JSON.parse(text);
  if (typeof j.epoch !== "string" || !Number.isSafeInteger(j.offset)) {
    throw new Error(`POST /api/publish on history channel ${channel} answered ${text}, not a position {"epoch","offset"} (docs/protocol.md §6.5)`);
  }
  return { epoch: j.epoch, offset: j.offset };
}

before(async () => {
  checkPrerequisites();
  port = await freePort();
  dataDir = tempDir("wsgate-e2e-data-");
  configDir = tempDir("wsgate-e2e-config-");
  config = writeHistoryConfig(configDir);
  gw = await startGateway({ port, dataDir, config });
  await checkServedBundle(gw.origin);
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await gw?.stop();
  for (const d of [dataDir, configDir]) if (d) rmSync(d, { recursive: true, force: true });
});

const CONTEXTS = [
  { secure: true, label: "secure context (127.0.0.1, webcrypto)" },
  { secure: false, label: "insecure context (wsgate.test, noble)" },
];

/**
 * Checks one page's timeline for one channel against the acknowledged
 * publishes: no event twice, offsets increasing within an epoch, an epoch
 * never revisited, and every acknowledged event delivered or inside a gap.
 */
function checkTimeline(timeline, acks, label) {
  const detail = () => `${label}: ${JSON.stringify(timeline)}`;
  const delivered = new Map();
  const gaps = [];
  // The position after the previous entry: events must go on from there.
  let last = null;
  for (const entry of timeline) {
    if (entry[0] === "gap") {
      const g = entry[1];
      assert.ok(["not_recovered", "resync", "skip"].includes(g.reason), detail());
      gaps.push(g);
      last = { epoch: g.epoch, offset: g.offset };
      continue;
    }
    if (entry[0] === "recovered") continue;
    const [, epoch, offset, data] = entry;
    const key = `${epoch}:${offset}`;
    assert.ok(!delivered.has(key), `event ${key} delivered twice; ${detail()}`);
    if (last) {
      assert.equal(epoch, last.epoch, `the epoch changed without a gap; ${detail()}`);
      assert.ok(offset > last.offset, `event ${key} after ${last.epoch}:${last.offset}; ${detail()}`);
    }
    delivered.set(key, data);
    last = { epoch, offset };
  }
  const ns = [...delivered.values()].map((d) => JSON.parse(d).n);
  assert.equal(new Set(ns).size, ns.length, `a payload delivered twice; ${detail()}`);
  const covered = (a) =>
    gaps.some(
      (g) =>
        (a.epoch === g.epoch && a.offset <= g.offset && !(g.previous && g.previous.epoch === g.epoch && a.offset <= g.previous.offset)) ||
        (g.previous && g.epoch !== a.epoch && g.previous.epoch === a.epoch && a.offset > g.previous.offset),
    );
  let missing = 0;
  for (const a of acks) {
    const key = `${a.epoch}:${a.offset}`;
    if (delivered.has(key)) assert.equal(JSON.parse(delivered.get(key)).n, a.n, `event ${key} has another payload; ${detail()}`);
    else {
      assert.ok(covered(a), `acknowledged event n=${a.n} at ${key} neither delivered nor inside a gap; ${detail()}`);
      missing++;
    }
  }
  return { delivered: delivered.size, gaps: gaps.length, missing };
}

test("sm.js in Chromium: the gateway restarted while events flow; the page's handler sees every event once, or a gap", async (t) => {
  const pages = [];
  for (const ctx of CONTEXTS) {
    const { page, errors } = await openPage(browser, port, ctx);
    await page.evaluate(async (channels) => {
      const { connect } = await import("/sm.js");
      // autoRelogin: the page recovers whether or not the gateway kept the session.
      const s = await connect({ username: "demo", password: "wsgate-demo", maxReconnectDelay: 300, requestTimeout: 20_000, autoRelogin: true });
      window.__s = s;
      window.__states = [];
      s.on("state", (d) => window.__states.push([d.state, d.error ? d.error.code : null]));
      window.__timeline = {};
      window.__subs = {};
      const td = new TextDecoder();
      for (const { name, sensitive } of channels) {
        const tl = (window.__timeline[name] = []);
        window.__subs[name] = await s.subscribe(name, (data, meta) => tl.push(["event", meta.epoch, meta.offset, td.decode(data)]), {
          sensitive,
          onGap: (d) => tl.push(["gap", d]),
          onRecovered: (d) => tl.push(["recovered", d]),
        });
      }
    }, CHANNELS);
    pages.push({ page, errors, ctx });
  }

  // Publish to both channels every 15 ms, before, during and after the outage.
  const acks = Object.fromEntries(CHANNELS.map((c) => [c.name, []]));
  let n = 0;
  let failed = 0;
  let running = true;
  const publisher = (async () => {
    while (running) {
      const i = ++n;
      const results = await Promise.all(CHANNELS.map((c) => publishAt(gw.origin, c.name, { n: i })));
      results.forEach((pos, k) => {
        if (pos) acks[CHANNELS[k].name].push({ ...pos, n: i });
        else failed++;
      });
      await sleep(15);
    }
  })();
  const acked = () => Math.min(...CHANNELS.map((c) => acks[c.name].length));
  const waitAcked = async (count, what) => {
    const deadline = Date.now() + 20_000;
    while (acked() < count) {
      if (Date.now() > deadline) throw new Error(`only ${acked()} publishes acknowledged, waiting for ${count} (${what})`);
      await sleep(10);
    }
  };

  try {
    await waitAcked(30, "before the restart");
    await gw.stop("SIGKILL");
    for (const { page } of pages) await page.waitForFunction(() => window.__s.state === "reconnecting", null, { timeout: 10_000 });
    await sleep(500); // publishes fail while the gateway is down
    const before = acked();
    gw = await startGateway({ port, dataDir, config });
    for (const { page } of pages) await page.waitForFunction(() => window.__s.state === "open", null, { timeout: 20_000 });
    await waitAcked(before + 30, "after the restart");
  } finally {
    running = false;
    await publisher;
  }

  // Every page gets the last acknowledged event of each channel.
  const lastAcks = Object.fromEntries(CHANNELS.map((c) => [c.name, acks[c.name].at(-1)]));
  for (const { page } of pages) {
    await page.waitForFunction(
      (want) => Object.entries(want).every(([ch, a]) => window.__timeline[ch].some((e) => e[0] === "event" && e[1] === a.epoch && e[2] === a.offset)),
      lastAcks,
      { timeout: 20_000 },
    );
  }
  await sleep(300); // anything late (a duplicate) would show up now

  for (const { page, errors, ctx } of pages) {
    const r = await page.evaluate(async () => {
      const out = { state: window.__s.state, states: window.__states, timeline: window.__timeline, positions: {} };
      for (const [ch, sub] of Object.entries(window.__subs)) out.positions[ch] = sub.position;
      await window.__s.logout();
      return out;
    });
    await t.test(ctx.label, () => {
      assert.equal(r.state, "open", JSON.stringify(r.states));
      assert.equal(r.states[0][0], "reconnecting", JSON.stringify(r.states));
      for (const { name, sensitive } of CHANNELS) {
        const tl = r.timeline[name];
        const summary = checkTimeline(tl, acks[name], `${ctx.label} ${name}`);
        const events = tl.filter((e) => e[0] === "event");
        assert.ok(events.length > 0, `${name}: no events`);
        // The stream before the restart was seen, and the one after.
        assert.equal(events[0][2], acks[name][0].offset, `${name}: the first acknowledged event`);
        assert.deepEqual(r.positions[name], { epoch: lastAcks[name].epoch, offset: lastAcks[name].offset }, `${name}: position`);
        const outcome = tl.find((e) => e[0] === "recovered") ? "recovered" : tl.find((e) => e[0] === "gap") ? `gap (${tl.find((e) => e[0] === "gap")[1].reason})` : "neither";
        t.diagnostic(`${ctx.label} ${name}${sensitive ? " (sensitive)" : ""}: ${summary.delivered} events delivered, ${summary.missing} acknowledged ones inside ${summary.gaps} gap(s); outcome of the resubscribe: ${outcome}`);
      }
      assert.deepEqual(errors, []);
    });
    await page.close();
  }
  t.diagnostic(`${n} publish rounds, ${failed} publishes not acknowledged (gateway down)`);
});
