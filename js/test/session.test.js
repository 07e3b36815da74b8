// Session logic of sm.js against the in-memory mock gateway, with both
// crypto backends: login, mutual authentication, key establishment,
// protected requests, errors, timeouts, in-flight limits, reconnection,
// subscriptions, re-login on IP change, logout and close.
import { test } from "node:test";
import assert from "node:assert/strict";
import { MockGateway } from "./mock-gateway.js";
import { connect } from "../src/sm.js";
import { sleep, until } from "./helpers.js";

const td = new TextDecoder();

function opts(gw, backend, extra = {}) {
  return { username: "demo", password: "wsgate-demo", url: "http://gw.test:8080", crypto: backend, fetch: gw.fetch, WebSocket: gw.WebSocket, ...extra };
}

for (const backend of ["webcrypto", "noble"]) {
  test(`${backend}: login, key establishment, plain and sensitive requests, frame hook`, async () => {
    const gw = new MockGateway();
    const frames = [];
    const secrets = [];
    const states = [];
    const s = await connect(
      opts(gw, backend, {
        onFrame: (dir, bytes, info) => frames.push({ dir, bytes, info }),
        testHooks: { onSecrets: (x) => secrets.push(x) },
      }),
    );
    s.on("state", (d) => states.push(d.state));
    assert.equal(s.backend, backend);
    assert.equal(s.user, "demo");
    assert.equal(s.ip, "127.0.0.1");
    assert.equal(s.state, "open");
    assert.equal(s.keyFingerprint, gw.fp);
    assert.equal(s.sessionId.length, 22);
    assert.ok(s.expiresAt > Date.now() + 3500_000);
    assert.equal(gw.keyInits, 1);

    const plain = await s.request("sys.echo", "plain-marker-123");
    assert.equal(td.decode(plain), "plain-marker-123");
    const secret = await s.request("sys.echo", "sensitive-marker-456", { sensitive: true });
    assert.equal(td.decode(secret), "sensitive-marker-456");
    assert.deepEqual(await s.requestJson("sys.echo", { a: [1, "x"] }), { a: [1, "x"] });
    assert.deepEqual([...(await s.request("sys.echo", Uint8Array.of(0, 255, 7)))], [0, 255, 7]);
    assert.deepEqual(await s.requestJson("sys.whoami"), { user: "demo", ip: "127.0.0.1", session_expires_in: 3000 });

    // The hook saw HELLO, KEY_INIT, KEY_ACK, then requests and responses.
    const names = frames.map((f) => `${f.dir}:${f.info.typeName}`);
    assert.deepEqual(names.slice(0, 3), ["in:HELLO", "out:KEY_INIT", "in:KEY_ACK"]);
    assert.equal(frames.filter((f) => f.info.typeName === "REQUEST").length, 5);
    const wire = Buffer.concat(frames.map((f) => Buffer.from(f.bytes)));
    assert.ok(wire.includes(Buffer.from("plain-marker-123")), "a plain payload is visible on the wire");
    assert.ok(!wire.includes(Buffer.from("sensitive-marker-456")), "a sensitive payload is not");
    assert.ok(!wire.includes(Buffer.from("wsgate-demo")), "the password never crosses the wire");
    assert.equal(secrets.length, 1);
    assert.ok(!wire.includes(Buffer.from(secrets[0].dynamicPassword)));
    assert.deepEqual(Buffer.from(secrets[0].dynamicPassword), [...gw.conns][0].dp, "server opened the same dynamic password");
    const encFrames = frames.filter((f) => f.info.encrypted);
    assert.ok(encFrames.some((f) => f.dir === "out" && f.info.typeName === "REQUEST"));
    assert.ok(encFrames.some((f) => f.dir === "in" && f.info.typeName === "RESPONSE"));

    s.close();
    assert.equal(s.state, "closed");
    assert.deepEqual(states, ["closed"]);
    await assert.rejects(s.request("sys.echo", "x"), (e) => e.code === "closed");
    await assert.rejects(s.logout(), (e) => e.code === "closed");
    await until(() => gw.conns.size === 0, 2000, "server sees the close");
  });

  test(`${backend}: login failures: wrong password, unknown user, pin, server signature, rate limit`, async () => {
    const gw = new MockGateway();
    await assert.rejects(connect(opts(gw, backend, { password: "nope" })), (e) => e.code === "invalid-proof" && /Wrong user name or password/.test(e.message));
    await assert.rejects(connect(opts(gw, backend, { username: "mallory" })), (e) => e.code === "invalid-proof");
    await assert.rejects(connect(opts(gw, backend, { pin: "A".repeat(43) })), (e) => e.code === "server_key_mismatch" && e.message.includes(gw.fp));
    const pinned = await connect(opts(gw, backend, { pin: [gw.fp, "B".repeat(43)] }));
    assert.equal(pinned.state, "open");
    pinned.close();
    gw.badServerSignature = true;
    await assert.rejects(connect(opts(gw, backend)), (e) => e.code === "invalid-server-signature");
    gw.badServerSignature = false;
    gw.rateLimited = true;
    await assert.rejects(connect(opts(gw, backend)), (e) => e.code === "rate_limited" && e.retryAfter === 42 && /42 s/.test(e.message));
    gw.rateLimited = false;
    gw.down = true;
    await assert.rejects(connect(opts(gw, backend)), (e) => e.code === "network_error");
    gw.down = false;
    // Bad arguments fail before any traffic.
    await assert.rejects(connect({ username: "demo" }), (e) => e.code === "invalid_argument");
    await assert.rejects(connect(opts(gw, backend, { url: "ftp://x" })), (e) => e.code === "invalid_argument");
    // Only the pinned login and the one whose ServerSignature the client
    // refused got past the proof check on the server.
    assert.equal(gw.sessions.size, 2);
  });

  test(`${backend}: iteration counts outside 4096..10 000 000 are refused`, async () => {
    const gw = new MockGateway({ users: {} });
    gw.setUser("demo", "wsgate-demo", 1000);
    await assert.rejects(connect(opts(gw, backend)), (e) => e.code === "protocol_error" && /1000 PBKDF2 iterations/.test(e.message));
    assert.equal(gw.sessions.size, 0);
  });
}

test("server error codes pass through; the connection stays usable", async () => {
  const gw = new MockGateway();
  const s = await connect(opts(gw, "webcrypto"));
  await assert.rejects(s.request("secret.echo", "x"), (e) => e.code === "encryption_required" && /sensitive/.test(e.message));
  assert.equal(td.decode(await s.request("secret.echo", "x", { sensitive: true })), "x");
  await assert.rejects(s.request("nope", ""), (e) => e.code === "not_found");
  await assert.rejects(s.request("nope", "", { sensitive: true }), (e) => e.code === "not_found");
  await assert.rejects(s.subscribe("forbidden", () => {}), (e) => e.code === "forbidden");
  await assert.rejects(s.request("", ""), (e) => e.code === "invalid_argument");
  await assert.rejects(s.request("x".repeat(1025), ""), (e) => e.code === "invalid_argument");
  await assert.rejects(s.request("sys.echo", new Uint8Array(1024 * 1024)), (e) => e.code === "too_large");
  assert.equal(td.decode(await s.request("sys.echo", new Uint8Array(1024 * 1024 - 8 - 8 - 16))).length, 1024 * 1024 - 32);
  assert.equal(td.decode(await s.request("sys.echo", "still fine")), "still fine");
  assert.equal(s.state, "open");
  s.close();
});

test("timeouts: a late response is ignored and its id is not reused while in flight", async () => {
  const gw = new MockGateway();
  const s = await connect(opts(gw, "noble", { requestTimeout: 150 }));
  await assert.rejects(s.request("slow", "400"), (e) => e.code === "timeout");
  // The server still holds that id: new requests must use other ids.
  const ids = [];
  for (let i = 0; i < 3; i++) {
    await s.request("sys.echo", "x");
    ids.push(gw.log.filter((l) => l[0] === "frame").at(-1)[3]);
  }
  assert.ok(!ids.includes(1), `id 1 reused: ${ids}`);
  await sleep(400); // the late answer arrives and is dropped silently
  assert.equal(td.decode(await s.request("sys.echo", "after")), "after");
  assert.equal(s.state, "open");
  s.close();
});

test("in-flight limit: requests beyond maxInFlight wait for a free slot", async () => {
  const gw = new MockGateway();
  const s = await connect(opts(gw, "webcrypto", { maxInFlight: 2 }));
  const held = [s.request("hold", "a"), s.request("hold", "b")];
  const queued = s.request("sys.echo", "c");
  await sleep(50);
  assert.equal(gw.maxInFlightSeen, 2);
  assert.equal(gw.log.filter((l) => l[0] === "frame").length, 2, "third request not sent yet");
  [...gw.conns][0].releaseHeld();
  assert.deepEqual((await Promise.all(held)).map((b) => td.decode(b)), ["released", "released"]);
  assert.equal(td.decode(await queued), "c");
  assert.equal(gw.maxInFlightSeen, 2);
  s.close();
});

for (const backend of ["webcrypto", "noble"]) {
  test(`${backend}: reconnect after the gateway restarts: in-flight fails with closed, same session, new KEY_INIT, subscriptions restored`, async () => {
    const gw = new MockGateway();
    const s = await connect(opts(gw, backend, { maxReconnectDelay: 100 }));
    const states = [];
    s.on("state", (d) => states.push(d.state));
    const events = [];
    const off = await s.subscribe("news", (data, meta) => events.push([td.decode(data), meta.channel, meta.encrypted]));
    await s.subscribe("secret.news", (data, meta) => events.push([td.decode(data), meta.channel, meta.encrypted]), { sensitive: true });
    gw.publish("news", "one");
    gw.publish("secret.news", "s-one");
    await until(() => events.length === 2, 2000, "events");
    const sid = s.sessionId;
    const inflight = s.request("hold", "x");
    await sleep(20);
    gw.kill();
    await assert.rejects(inflight, (e) => e.code === "closed" && /may or may not have been processed/.test(e.message));
    await until(() => s.state === "reconnecting", 2000, "reconnecting");
    // A request made while down waits and goes out after the reconnect.
    const waiting = s.request("sys.echo", "queued during outage");
    await sleep(300);
    gw.revive();
    await until(() => s.state === "open", 5000, "reopen");
    assert.equal(td.decode(await waiting), "queued during outage");
    assert.equal(s.sessionId, sid, "same session");
    assert.equal(gw.keyInits, 2, "a new KEY_INIT on the new connection");
    await until(() => [...gw.conns][0]?.subs.size === 2, 2000, "subscriptions restored");
    gw.publish("news", "two");
    gw.publish("secret.news", "s-two");
    await until(() => events.length === 4, 2000, "events after reconnect");
    assert.deepEqual(events, [
      ["one", "news", false],
      ["s-one", "secret.news", true],
      ["two", "news", false],
      ["s-two", "secret.news", true],
    ]);
    assert.deepEqual(states, ["reconnecting", "open"]);
    await off();
    await until(() => ![...gw.conns][0].subs.has("news"), 2000, "unsubscribed");
    gw.publish("news", "three");
    await sleep(50);
    assert.equal(events.length, 4);
    s.close();
  });
}

test("a session the server forgot surfaces session_expired", async () => {
  const gw = new MockGateway();
  const s = await connect(opts(gw, "webcrypto", { maxReconnectDelay: 50 }));
  const states = [];
  s.on("state", (d) => states.push([d.state, d.error?.code]));
  gw.kill({ forgetSessions: true });
  gw.revive();
  await until(() => s.state === "closed", 5000, "closed");
  assert.deepEqual(states.at(-1), ["closed", "session_expired"]);
  await assert.rejects(s.request("sys.echo", "x"), (e) => e.code === "session_expired" && /Log in again/.test(e.message));
});

test("autoRelogin: a session the server forgot is replaced by a new login without the password", async () => {
  const gw = new MockGateway();
  const s = await connect(opts(gw, "noble", { maxReconnectDelay: 50, autoRelogin: true }));
  const sessions = [];
  s.on("session", (d) => sessions.push(d.sessionId));
  const first = s.sessionId;
  const events = [];
  await s.subscribe("news", (d) => events.push(td.decode(d)));
  gw.kill({ forgetSessions: true });
  gw.revive();
  await until(() => s.state === "open" && s.sessionId !== first, 5000, "re-login");
  assert.deepEqual(sessions, [s.sessionId]);
  assert.equal(td.decode(await s.request("sys.echo", "again")), "again");
  await until(() => [...gw.conns][0]?.subs.has("news"), 2000, "subscription restored");
  gw.publish("news", "after");
  await until(() => events.length === 1, 2000, "event");
  // 4001 (ended on purpose) is never renewed.
  for (const c of [...gw.conns]) c.drop(4001, "revoked");
  await until(() => s.state === "closed", 2000, "closed");
  await assert.rejects(s.request("sys.echo", "x"), (e) => e.code === "session_expired");
});

test("a frame that fails to verify closes the connection with 4400 and reconnects", async () => {
  const gw = new MockGateway();
  const s = await connect(opts(gw, "noble", { maxReconnectDelay: 50 }));
  gw.tamperNextResponse = true;
  await assert.rejects(s.request("sys.echo", "x"), (e) => e.code === "closed");
  await until(() => gw.log.some((l) => l[0] === "client-close" && l[1] === 4400), 2000, "client close 4400");
  await until(() => s.state === "open", 5000, "reopen");
  assert.equal(td.decode(await s.request("sys.echo", "y")), "y");
  assert.equal(gw.keyInits, 2);
  s.close();
});

test("a changed IP makes the client log in again (new session) instead of sending KEY_INIT", async () => {
  const gw = new MockGateway();
  const s = await connect(opts(gw, "webcrypto", { maxReconnectDelay: 50 }));
  const sessions = [];
  s.on("session", (d) => sessions.push(d));
  const first = s.sessionId;
  gw.kill();
  gw.ip = "192.0.2.7";
  gw.revive();
  await until(() => s.state === "open" && s.sessionId !== first, 5000, "re-login");
  assert.equal(s.ip, "192.0.2.7");
  assert.deepEqual(sessions, [{ sessionId: s.sessionId, user: "demo", ip: "192.0.2.7" }]);
  assert.deepEqual(await s.requestJson("sys.whoami"), { user: "demo", ip: "192.0.2.7", session_expires_in: 3000 });
  s.close();
});

test("a rotated server key makes the client log in again; with a pin for the old key it stops", async () => {
  const gw = new MockGateway();
  const free = await connect(opts(gw, "noble", { maxReconnectDelay: 50 }));
  const pinned = await connect(opts(gw, "webcrypto", { maxReconnectDelay: 50, pin: gw.fp }));
  const oldFp = gw.fp;
  gw.kill();
  gw.rotateKey();
  gw.revive();
  await until(() => free.state === "open" && free.keyFingerprint !== oldFp, 5000, "re-login with the new key");
  assert.equal(free.keyFingerprint, gw.fp);
  assert.equal(td.decode(await free.request("sys.echo", "new key", { sensitive: true })), "new key");
  await until(() => pinned.state === "closed", 5000, "pinned session closes");
  await assert.rejects(pinned.request("sys.echo", "x"), (e) => e.code === "server_key_mismatch" && e.message.includes(gw.fp));
  free.close();
});

test("server protocol violations: a text frame or a KEY_ACK for another user", async () => {
  const gw = new MockGateway();
  const s = await connect(opts(gw, "webcrypto", { maxReconnectDelay: 50 }));
  const conn = [...gw.conns][0];
  // A text frame: the client closes with 4400 and reconnects.
  setTimeout(() => conn.ws.onmessage({ data: "text" }), 0);
  await until(() => gw.log.some((l) => l[0] === "client-close" && l[1] === 4400), 2000, "4400");
  await until(() => s.state === "open" && gw.keyInits === 2, 5000, "reconnected");
  s.close();
  // KEY_ACK naming another user: the connection never opens.
  const gw2 = new MockGateway();
  const orig = gw2.sessions.set.bind(gw2.sessions);
  gw2.sessions.set = (k, v) => orig(k, { ...v, user: "someone-else" });
  await assert.rejects(connect(opts(gw2, "noble")), (e) => e.code === "protocol_error" && /another user/.test(e.message));
});

test("logout ends the session on the server; later calls reject with closed", async () => {
  const gw = new MockGateway();
  const s = await connect(opts(gw, "noble"));
  const other = await connect(opts(gw, "webcrypto"));
  const sid = s.sessionId;
  const states = [];
  s.on("state", (d) => states.push([d.state, d.error?.code]));
  await s.logout();
  assert.equal(gw.sessions.has(sid), false);
  assert.equal(gw.sessions.has(other.sessionId), true, "other sessions unaffected");
  assert.deepEqual(states, [["closed", "closed"]]);
  await assert.rejects(s.request("sys.echo", "x"), (e) => e.code === "closed");
  await assert.rejects(s.subscribe("news", () => {}), (e) => e.code === "closed");
  await assert.rejects(s.logout(), (e) => e.code === "closed");
  s.close(); // harmless
  assert.equal(td.decode(await other.request("sys.echo", "ok")), "ok");
  other.close();
});

test("no reconnect when disabled: a lost connection closes the session", async () => {
  const gw = new MockGateway();
  const s = await connect(opts(gw, "webcrypto", { reconnect: false }));
  gw.kill();
  await until(() => s.state === "closed", 2000, "closed");
  await assert.rejects(s.request("sys.echo", "x"), (e) => e.code === "closed");
});
