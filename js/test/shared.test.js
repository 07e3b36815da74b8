// Shared mode (README "Shared mode") in Node: pages are connect() calls,
// the SharedWorker is the real hub (src/shared/hub.js) on real
// MessageChannel ports in this process, and the gateway is the mock one.
// What the gateway sees is counted: logins, WebSockets, KEY_INITs, every
// SUBSCRIBE/UNSUBSCRIBE. The Chromium test (test/e2e/shared.test.mjs) runs
// the same against the real gateway and a real SharedWorker.
import { test, afterEach } from "node:test";
import assert from "node:assert/strict";
import { MockGateway } from "./mock-gateway.js";
import { Session, SharedSession, WsgateError, connect } from "../src/sm.js";
import { createHub } from "../src/shared/hub.js";
import { sleep, until } from "./helpers.js";

const td = new TextDecoder();

const USERS = { demo: "wsgate-demo", erin: "erin-password" };

/** A SharedWorker global backed by one hub: every `new SharedWorker()` is a page's port to it. */
function installWorker(gw, sessionOptions) {
  const hub = createHub({ fetch: gw.fetch, WebSocket: gw.WebSocket, locks: null, sessionOptions });
  const ports = [];
  globalThis.SharedWorker = class FakeSharedWorker {
    constructor(url, opts) {
      assert.equal(opts.name, "wsgate-sm");
      assert.match(String(url), /sm-worker\.js$/);
      const { port1, port2 } = new MessageChannel();
      hub.attach(port2);
      ports.push(port1);
      this.port = port1;
    }
    addEventListener() {}
  };
  return { hub, ports };
}

afterEach(() => {
  delete globalThis.SharedWorker;
});

const base = (gw, extra = {}) => ({ username: "demo", password: "wsgate-demo", url: "http://gw.test:8080", maxReconnectDelay: 50, shared: true, ...extra });
const frames = (gw, type) => gw.log.filter((l) => l[0] === "frame" && l[1] === type);
const SUBSCRIBE = 0x20;
const UNSUBSCRIBE = 0x21;

test("three pages share one login, one WebSocket and one KEY_INIT; each request gets its own reply", async () => {
  const gw = new MockGateway({ users: USERS });
  installWorker(gw);
  const a = await connect(base(gw));
  const b = await connect(base(gw));
  const c = await connect(base(gw, { password: undefined })); // joins: no password needed
  for (const s of [a, b, c]) {
    assert.ok(s instanceof SharedSession && s instanceof Session);
    assert.equal(s.shared, true);
    assert.equal(s.state, "open");
    assert.equal(s.user, "demo");
    assert.equal(s.sessionId, a.sessionId);
  }
  assert.equal(gw.firstRequests, 1, "one login");
  assert.equal(gw.keyInits, 1, "one KEY_INIT");
  assert.equal(gw.conns.size, 1, "one WebSocket");
  const asks = [];
  for (const [i, s] of [a, b, c].entries()) for (let k = 0; k < 20; k++) asks.push(s.request("sys.echo", `page ${i} request ${k}`, { sensitive: k % 2 === 0 }).then((r) => [i, k, td.decode(r)]));
  for (const [i, k, got] of await Promise.all(asks)) assert.equal(got, `page ${i} request ${k}`);
  assert.deepEqual(await b.requestJson("sys.echo", { x: 1 }), { x: 1 });
  const err = await c.request("secret.echo", "x").catch((e) => e);
  assert.ok(err instanceof WsgateError, "errors cross as WsgateError");
  assert.equal(err.code, "encryption_required");
  assert.match(err.message, /sensitive/);
  for (const s of [a, b, c]) s.close();
});

test("subscriptions are counted across pages: one SUBSCRIBE per channel, UNSUBSCRIBE when the last page lets go or goes away", async () => {
  const gw = new MockGateway({ users: USERS });
  const { ports } = installWorker(gw);
  const pages = [await connect(base(gw)), await connect(base(gw)), await connect(base(gw))];
  const got = pages.map(() => []);
  const subs = [];
  for (const [i, s] of pages.entries()) subs.push(await s.subscribe("news", (data, meta) => got[i].push([meta.channel, td.decode(data)])));
  const mine = await pages[0].subscribe("room.mine", (data) => got[0].push(["room.mine", td.decode(data)]));
  assert.equal(frames(gw, SUBSCRIBE).filter((f) => f[4] === "news").length, 1, "one SUBSCRIBE for three pages");
  gw.publish("news", "hello");
  await until(() => got.every((g) => g.length === 1), 2000, "the event at every page");
  assert.deepEqual(got, [[["news", "hello"]], [["news", "hello"]], [["news", "hello"]]]);
  await subs[1]();
  assert.equal(frames(gw, UNSUBSCRIBE).length, 0, "two pages still want news");
  // Page 0 goes away without a word (its port closes, as when a tab dies).
  ports[0].close();
  await until(() => frames(gw, UNSUBSCRIBE).length === 1, 2000, "UNSUBSCRIBE of what only page 0 held");
  assert.deepEqual(frames(gw, UNSUBSCRIBE).map((f) => f[4]), ["room.mine"]);
  gw.publish("news", "second");
  await until(() => got[2].length === 2, 2000, "page 2 still gets news");
  await sleep(30);
  assert.equal(got[1].length, 1, "page 1 unsubscribed");
  assert.equal(got[0].length, 1, "page 0 is gone");
  await subs[2]();
  await until(() => frames(gw, UNSUBSCRIBE).length === 2, 2000, "the last page let go of news");
  assert.equal(frames(gw, UNSUBSCRIBE)[1][4], "news");
  assert.equal(pages[1].state, "open", "the session goes on while a page is attached");
  assert.equal(typeof mine, "function");
  pages[1].close();
  pages[2].close();
  await until(() => gw.log.some((l) => l[0] === "client-close"), 2000, "the worker closed the WebSocket with the last page");
});

test("history channels: pages see positions; a page that joins later starts at the channel's position", async () => {
  const gw = new MockGateway({ users: USERS });
  installWorker(gw);
  const a = await connect(base(gw));
  const b = await connect(base(gw));
  const seen = [[], []];
  const sa = await a.subscribe("hist.feed", (data, meta) => seen[0].push([td.decode(data), meta.offset]));
  assert.equal(sa.channel, "hist.feed");
  gw.publish("hist.feed", "1");
  await until(() => seen[0].length === 1, 2000, "first event");
  const epoch = gw.stream("hist.feed").epoch;
  assert.deepEqual(sa.position, { epoch, offset: 1 });
  const sb = await b.subscribe("hist.feed", (data, meta) => seen[1].push([td.decode(data), meta.offset]));
  assert.deepEqual(sb.position, { epoch, offset: 1 });
  gw.publish("hist.feed", "2");
  await until(() => seen[0].length === 2 && seen[1].length === 1, 2000, "second event at both");
  assert.deepEqual(seen, [[["1", 1], ["2", 2]], [["2", 2]]]);
  assert.deepEqual(sb.position, { epoch, offset: 2 });
  a.close();
  b.close();
});

test("another user gets a session of its own; a wrong password fails alone; the pin is checked on join", async () => {
  const gw = new MockGateway({ users: USERS });
  installWorker(gw);
  const demo = await connect(base(gw));
  const erin = await connect(base(gw, { username: "erin", password: "erin-password" }));
  assert.notEqual(erin.sessionId, demo.sessionId);
  assert.equal(erin.user, "erin");
  assert.equal(gw.firstRequests, 2);
  assert.equal(gw.conns.size, 2);
  const bad = await connect(base(gw, { username: "nobody", password: "x" })).catch((e) => e);
  assert.ok(bad instanceof WsgateError);
  assert.equal(bad.code, "invalid-proof");
  const nopw = await connect(base(gw, { username: "nobody", password: undefined })).catch((e) => e);
  assert.equal(nopw.code, "invalid_password");
  assert.match(nopw.message, /needs the password/);
  const pinned = await connect(base(gw, { pin: "A".repeat(43) })).catch((e) => e);
  assert.equal(pinned.code, "server_key_mismatch");
  const ok = await connect(base(gw, { pin: gw.fp }));
  assert.equal(ok.sessionId, demo.sessionId);
  assert.equal(demo.state, "open");
  for (const s of [demo, erin, ok]) s.close();
});

test("logout() in one page closes the session for every page", async () => {
  const gw = new MockGateway({ users: USERS });
  installWorker(gw);
  const pages = [await connect(base(gw)), await connect(base(gw)), await connect(base(gw))];
  const states = pages.map(() => []);
  pages.forEach((s, i) => s.on("state", (d) => states[i].push([d.state, d.error && d.error.code])));
  const pending = pages[2].request("sys.echo", "late");
  await pages[1].logout();
  await until(() => pages.every((s) => s.state === "closed"), 2000, "every page closed");
  for (const st of states) assert.deepEqual(st.at(-1), ["closed", "closed"]);
  await pending.then(
    (r) => assert.equal(td.decode(r), "late"),
    (e) => assert.equal(e.code, "closed"),
  );
  for (const s of pages) await assert.rejects(s.request("sys.echo", "x"), (e) => e.code === "closed");
  assert.equal(gw.log.filter((l) => l[0] === "frame" && l[1] === 0x31).length, 1, "one LOGOUT on the wire");
  // The next connect logs in afresh.
  const again = await connect(base(gw));
  assert.notEqual(again.sessionId, pages[0].sessionId);
  assert.equal(gw.firstRequests, 2);
  again.close();
});

test("reconnects happen once, in the worker, and every page sees the states", async () => {
  const gw = new MockGateway({ users: USERS });
  installWorker(gw);
  const pages = [await connect(base(gw)), await connect(base(gw))];
  const states = pages.map(() => []);
  pages.forEach((s, i) => s.on("state", (d) => states[i].push(d.state)));
  const got = [[], []];
  for (const [i, s] of pages.entries()) await s.subscribe("news", (d) => got[i].push(td.decode(d)));
  const subscribes = frames(gw, SUBSCRIBE).length;
  gw.kill();
  await until(() => pages.every((s) => s.state === "reconnecting"), 2000, "reconnecting at every page");
  gw.revive();
  await until(() => pages.every((s) => s.state === "open"), 5000, "open again");
  assert.deepEqual(states, [["reconnecting", "open"], ["reconnecting", "open"]]);
  // "open" is announced once the restoring SUBSCRIBE is queued, not yet sent.
  await until(() => frames(gw, SUBSCRIBE).length > subscribes, 2000, "the restoring SUBSCRIBE");
  await sleep(30);
  assert.equal(frames(gw, SUBSCRIBE).length, subscribes + 1, "the channel restored once");
  assert.equal(gw.keyInits, 2, "one KEY_INIT per connection, not per page");
  gw.publish("news", "after");
  await until(() => got.every((g) => g.length === 1), 2000, "events after the reconnect");
  for (const s of pages) s.close();
});

test("a page whose heartbeat stops is let go; its pending calls fail with closed", async () => {
  const gw = new MockGateway({ users: USERS });
  installWorker(gw);
  const live = await connect(base(gw, { heartbeatInterval: 20 }));
  const silent = await connect(base(gw, { heartbeatInterval: 20 }));
  await silent.subscribe("room.silent", () => {});
  clearInterval(silent._heartbeat); // as a frozen tab: no more heartbeats
  const states = [];
  silent.on("state", (d) => states.push([d.state, d.error && d.error.code, d.error && d.error.message]));
  await until(() => silent.state === "closed", 3000, "the silent page let go");
  assert.equal(states.length, 1);
  assert.equal(states[0][1], "closed");
  assert.match(states[0][2], /no heartbeat/);
  await until(() => frames(gw, UNSUBSCRIBE).some((f) => f[4] === "room.silent"), 2000, "its subscription released");
  assert.equal(live.state, "open");
  assert.equal(td.decode(await live.request("sys.echo", "still here")), "still here");
  live.close();
});

test("options that cannot reach the worker are refused, in every browser; without SharedWorker the session runs here", async () => {
  const gw = new MockGateway({ users: USERS });
  for (const k of ["onFrame", "fetch", "WebSocket", "testHooks"]) {
    const e = await connect(base(gw, { [k]: k === "testHooks" ? {} : () => {} })).catch((x) => x);
    assert.equal(e.code, "invalid_argument", k);
    assert.match(e.message, new RegExp(`cannot take ${k}`));
  }
  // No SharedWorker here (Node, or Chrome on Android): a session of this page's own.
  const s = await connect(base(gw, { shared: false, fetch: gw.fetch, WebSocket: gw.WebSocket }));
  assert.equal(s.shared, false);
  s.close();
  const { fetch: f, WebSocket: W } = gw;
  const saved = [globalThis.fetch, globalThis.WebSocket];
  globalThis.fetch = f;
  globalThis.WebSocket = W;
  try {
    const fallback = await connect(base(gw));
    assert.equal(fallback.shared, false, "shared: true without SharedWorker falls back and says so");
    assert.ok(!(fallback instanceof SharedSession));
    assert.equal(td.decode(await fallback.request("sys.echo", "here")), "here");
    fallback.close();
  } finally {
    [globalThis.fetch, globalThis.WebSocket] = saved;
  }
});

test("a worker of another shared-mode version makes the page fall back", async () => {
  const gw = new MockGateway({ users: USERS });
  globalThis.SharedWorker = class OldWorker {
    constructor() {
      const { port1, port2 } = new MessageChannel();
      port2.onmessage = (ev) => {
        if (ev.data.t === "connect") port2.postMessage({ t: "fail", version: 0, error: { code: "unsupported", message: "old worker" } });
      };
      this.port = port1;
    }
    addEventListener() {}
  };
  const saved = [globalThis.fetch, globalThis.WebSocket];
  globalThis.fetch = gw.fetch;
  globalThis.WebSocket = gw.WebSocket;
  try {
    const s = await connect(base(gw));
    assert.equal(s.shared, false);
    assert.equal(s.state, "open");
    s.close();
  } finally {
    [globalThis.fetch, globalThis.WebSocket] = saved;
  }
});

/** Every value reachable from `root` through properties, arrays, Maps and Sets (not through the MessagePort). */
function reachable(root) {
  const seen = new Set();
  const out = [];
  const walk = (v) => {
    if (v === null || (typeof v !== "object" && typeof v !== "function")) {
      out.push(v);
      return;
    }
    if (seen.has(v) || v instanceof MessagePort) return;
    seen.add(v);
    out.push(v);
    if (ArrayBuffer.isView(v) || v instanceof ArrayBuffer) return;
    if (v instanceof Map) for (const [k, x] of v) (walk(k), walk(x));
    if (v instanceof Set) for (const x of v) walk(x);
    for (const k of Reflect.ownKeys(v)) {
      const d = Object.getOwnPropertyDescriptor(v, k);
      if (d && "value" in d) walk(d.value);
    }
  };
  walk(root);
  return out;
}

test("the page holds no secret: no password, session key, dynamic password or traffic key is reachable from its session", async () => {
  const gw = new MockGateway({ users: USERS });
  const secrets = [];
  const { hub } = installWorker(gw, { testHooks: { onSecrets: (x) => secrets.push(x) } });
  const password = "wsgate-demo";
  const page = await connect(base(gw, { password }));
  await page.subscribe("secret.feed", () => {}, { sensitive: true });
  assert.equal(td.decode(await page.request("sys.echo", "x", { sensitive: true })), "x");
  assert.equal(secrets.length, 1, "the worker's session has its secrets");
  const bytes = [];
  for (const k of ["sessionKey", "dynamicPassword", "c2sKey", "s2cKey"]) {
    const v = secrets[0][k];
    if (v instanceof Uint8Array) bytes.push([k, Buffer.from(v).toString("hex")]);
  }
  assert.ok(bytes.length >= 2, "raw secrets to look for");
  const hexOf = (v) => Buffer.from(v instanceof ArrayBuffer ? new Uint8Array(v) : new Uint8Array(v.buffer, v.byteOffset, v.byteLength)).toString("hex");
  const inWorker = reachable([...hub.sessions.values()][0].session).filter((v) => ArrayBuffer.isView(v)).map(hexOf);
  assert.ok(inWorker.some((h) => h.includes(bytes[0][1])), "the same walk finds the session key in the worker's session (the check can fail)");
  for (const v of reachable(page)) {
    if (typeof v === "string") assert.ok(!v.includes(password), `the password is reachable from the page: ${v}`);
    if (ArrayBuffer.isView(v) || v instanceof ArrayBuffer) {
      const hex = hexOf(v);
      for (const [k, h] of bytes) assert.ok(!hex.includes(h), `${k} is reachable from the page`);
    }
    if (typeof CryptoKey !== "undefined") assert.ok(!(v instanceof CryptoKey), "no CryptoKey in the page");
  }
  page.close();
});

test("a page's pending calls fail with closed when it closes; the others' do not", async () => {
  const gw = new MockGateway({ users: USERS });
  installWorker(gw);
  const a = await connect(base(gw));
  const b = await connect(base(gw));
  const pa = a.request("slow", "200");
  const pb = b.request("slow", "200");
  await sleep(20);
  a.close();
  await assert.rejects(pa, (e) => e instanceof WsgateError && e.code === "closed");
  assert.equal(td.decode(await pb), "late");
  await assert.rejects(a.request("sys.echo", "again"), (e) => e.code === "closed" && /connect\(\)/.test(e.message));
  b.close();
});
