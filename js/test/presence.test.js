// Presence (docs/protocol.md §6.6) in sm.js against the mock gateway's
// presence channels (`room.*`, sensitive `secret.room.*`, history and
// presence `hist.room.*`), with both crypto backends: presence() lists,
// `subscribe(…, { presence })` with `"presence_events": true` in the
// SUBSCRIBE body, join/leave events in order with their meta, no events
// without the option, several handlers on one channel, reconnects keeping
// presence events on (merged with `since` on history channels), errors as
// WsgateError codes, and a sensitive presence channel (ENC).
import { test } from "node:test";
import assert from "node:assert/strict";
import { MockGateway } from "./mock-gateway.js";
import { WsgateError, connect } from "../src/sm.js";
import { sleep, until } from "./helpers.js";

const USERS = { demo: "wsgate-demo", erin: "erin-password" };

function opts(gw, backend, extra = {}) {
  return { username: "demo", password: "wsgate-demo", url: "http://gw.test:8080", crypto: backend, fetch: gw.fetch, WebSocket: gw.WebSocket, maxReconnectDelay: 50, ...extra };
}

/** Subscribes with a presence handler; `seen` records [kind, user, meta] in arrival order. */
async function watch(s, channel, extra = {}) {
  const seen = [];
  const events = [];
  const sub = await s.subscribe(channel, (data, meta) => events.push([meta.channel, new TextDecoder().decode(data)]), {
    ...extra,
    presence: (d, meta) => seen.push(d.join !== undefined ? ["join", d.join, meta] : ["leave", d.leave, meta]),
  });
  return { sub, seen, events, names: () => seen.map(([k, u]) => `${k} ${u}`) };
}

const lastBody = (gw, channel) => {
  const b = gw.subscribeBodies.filter(([c]) => c === channel).at(-1);
  return b && b[1] !== "" ? JSON.parse(b[1]) : b && "";
};

for (const backend of ["webcrypto", "noble"]) {
  test(`${backend}: presence() lists the users present, sorted, with their connections; subscribed or not; truncated`, async () => {
    const gw = new MockGateway({ users: USERS });
    const frames = [];
    const s = await connect(opts(gw, backend, { onFrame: (dir, bytes, info) => frames.push({ dir, info }) }));
    assert.deepEqual(await s.presence("room.lobby"), { users: [], truncated: false }, "nobody there yet");
    gw.presenceJoin("room.lobby", "zoe");
    gw.presenceJoin("room.lobby", "bob");
    gw.presenceJoin("room.lobby", "bob");
    assert.deepEqual(await s.presence("room.lobby"), {
      users: [
        { user: "bob", connections: 2 },
        { user: "zoe", connections: 1 },
      ],
      truncated: false,
    }, "allowed without being subscribed");
    await s.subscribe("room.lobby", () => {});
    const erin = await connect(opts(gw, backend, { username: "erin", password: "erin-password" }));
    await erin.subscribe("room.lobby", () => {});
    assert.deepEqual((await s.presence("room.lobby")).users, [
      { user: "bob", connections: 2 },
      { user: "demo", connections: 1 },
      { user: "erin", connections: 1 },
      { user: "zoe", connections: 1 },
    ]);
    gw.maxPresenceList = 2;
    assert.deepEqual(await erin.presence("room.lobby"), {
      users: [
        { user: "bob", connections: 2 },
        { user: "demo", connections: 1 },
      ],
      truncated: true,
    });
    const out = frames.filter((f) => f.dir === "out" && f.info.typeName === "PRESENCE");
    assert.equal(out.length, 3);
    assert.ok(out.every((f) => f.info.name === "room.lobby" && !f.info.encrypted && f.info.id !== 0));
    await s.logout();
    await erin.logout();
  });

  test(`${backend}: subscribe(…, { presence }) asks for presence events; joins and leaves arrive in order, with meta`, async () => {
    const gw = new MockGateway({ users: USERS });
    const s = await connect(opts(gw, backend));
    gw.presenceJoin("room.lobby", "bob"); // already there: no event for it
    const w = await watch(s, "room.lobby");
    assert.deepEqual(lastBody(gw, "room.lobby"), { presence_events: true });
    gw.presenceJoin("room.lobby", "carol");
    gw.presenceJoin("room.lobby", "bob"); // a second connection of a present user: no event
    gw.presenceLeave("room.lobby", "bob"); // one of two: still present
    const erin = await connect(opts(gw, backend, { username: "erin", password: "erin-password" }));
    await erin.subscribe("room.lobby", () => {});
    gw.presenceLeave("room.lobby", "bob");
    gw.presenceLeave("room.lobby", "carol");
    erin.close(); // its connection goes: erin is no longer present
    await until(() => w.seen.length === 5, 3000, "five presence events");
    await sleep(30);
    assert.deepEqual(w.names(), ["join carol", "join erin", "leave bob", "leave carol", "leave erin"]);
    assert.deepEqual(w.seen[0][2], { channel: "room.lobby", encrypted: false });
    assert.deepEqual(w.events, [], "presence events do not reach the event handler");
    gw.publish("room.lobby", "hello");
    await until(() => w.events.length === 1, 2000, "a channel event");
    assert.deepEqual(w.events, [["room.lobby", "hello"]]);
    assert.equal(w.seen.length, 5);
    s.close();
  });

  test(`${backend}: without the presence option, no presence events are asked for or delivered`, async () => {
    const gw = new MockGateway({ users: USERS });
    const s = await connect(opts(gw, backend));
    const events = [];
    await s.subscribe("room.quiet", (d) => events.push(d));
    assert.equal(lastBody(gw, "room.quiet"), "", "a plain SUBSCRIBE: empty body");
    gw.presenceJoin("room.quiet", "bob");
    gw.presenceLeave("room.quiet", "bob");
    // Even a PRESENCE_EVENT the server sends anyway reaches nobody.
    gw.conns.forEach((c) => c.presenceEvents.add("room.quiet"));
    gw.sendPresenceEvent("room.quiet", JSON.stringify({ join: "mallory" }));
    gw.publish("room.quiet", "after");
    await until(() => events.length === 1, 2000, "the event after");
    assert.equal(s.state, "open");
    s.close();
  });

  test(`${backend}: several handlers on one channel: its SUBSCRIBE asks while any wants presence; events go to those that do`, async () => {
    const gw = new MockGateway({ users: USERS });
    const s = await connect(opts(gw, backend));
    const plain = await s.subscribe("room.multi", () => {});
    assert.equal(lastBody(gw, "room.multi"), "");
    const a = await watch(s, "room.multi");
    assert.deepEqual(lastBody(gw, "room.multi"), { presence_events: true }, "the joining handler turns them on");
    const plain2 = await s.subscribe("room.multi", () => {});
    assert.deepEqual(lastBody(gw, "room.multi"), { presence_events: true }, "a later plain handler keeps them on");
    const b = await watch(s, "room.multi");
    gw.presenceJoin("room.multi", "bob");
    await until(() => a.seen.length === 1 && b.seen.length === 1, 2000, "join at both presence handlers");
    assert.deepEqual([a.names(), b.names()], [["join bob"], ["join bob"]]);
    await a.sub();
    await b.sub();
    const subscribes = gw.subscribeBodies.length;
    gw.presenceLeave("room.multi", "bob"); // still sent by the server; nobody wants it
    await sleep(30);
    assert.deepEqual([a.names(), b.names()], [["join bob"], ["join bob"]], "off() stops a handler's presence events");
    assert.equal(gw.subscribeBodies.length, subscribes, "no SUBSCRIBE to turn them off");
    const plain3 = await s.subscribe("room.multi", () => {});
    assert.equal(lastBody(gw, "room.multi"), "", "the next SUBSCRIBE no longer asks");
    for (const off of [plain, plain2, plain3]) await off();
    assert.equal(s.state, "open");
    s.close();
  });

  test(`${backend}: reconnects keep presence events on (and merge them with since on a history channel); presence() from "open" goes after the resubscribe`, async () => {
    const gw = new MockGateway({ users: USERS });
    const s = await connect(opts(gw, backend));
    const w = await watch(s, "room.lobby");
    const h = await watch(s, "hist.room.log");
    gw.publish("hist.room.log", "one");
    await until(() => h.events.length === 1, 2000, "history event");
    const epoch = gw.stream("hist.room.log").epoch;
    assert.deepEqual(lastBody(gw, "hist.room.log"), { presence_events: true });
    const refreshed = [];
    s.on("state", (d) => {
      if (d.state === "open" && d.previous === "reconnecting") s.presence("room.lobby").then((l) => refreshed.push(l.users.map((u) => u.user)));
    });
    const before = gw.subscribeBodies.length;
    gw.kill();
    await until(() => s.state === "reconnecting", 2000, "reconnecting");
    gw.presenceJoin("room.lobby", "bob"); // while away: no event reaches us
    gw.revive();
    await until(() => gw.subscribeBodies.length >= before + 2 && refreshed.length === 1, 5000, "resubscribed and refreshed");
    assert.deepEqual(lastBody(gw, "room.lobby"), { presence_events: true });
    assert.deepEqual(lastBody(gw, "hist.room.log"), { since: { epoch, offset: 1 }, presence_events: true });
    assert.deepEqual(refreshed, [["bob", "demo"]], "the list refetched after the reconnect has what no event said");
    // On the new connection the PRESENCE went after both SUBSCRIBEs.
    const frames = gw.log.filter((l) => l[0] === "frame").map((l) => [l[1], l[4]]);
    const lastKill = frames.findLastIndex(([t, n]) => t === 0x20 && n === "room.lobby");
    const presenceAt = frames.findLastIndex(([t]) => t === 0x26);
    assert.ok(presenceAt > lastKill && presenceAt > frames.findLastIndex(([t, n]) => t === 0x20 && n === "hist.room.log"), JSON.stringify(frames));
    gw.presenceJoin("room.lobby", "carol");
    gw.presenceJoin("hist.room.log", "carol");
    await until(() => w.seen.length === 1 && h.seen.length === 1, 2000, "events after the reconnect");
    assert.deepEqual([w.names(), h.names()], [["join carol"], ["join carol"]]);
    s.close();
  });

  test(`${backend}: errors: not_found (no presence), forbidden, encryption_required are WsgateErrors; the session goes on`, async () => {
    const gw = new MockGateway({ users: USERS });
    const s = await connect(opts(gw, backend));
    const code = (p) => p.then(() => "no error", (e) => (e instanceof WsgateError ? e.code : `not a WsgateError: ${e}`));
    assert.equal(await code(s.presence("news")), "not_found");
    assert.equal(await code(s.presence("forbidden.room")), "forbidden");
    assert.equal(await code(s.presence("secret.room.vault")), "encryption_required");
    assert.equal(await code(s.subscribe("forbidden.room", () => {}, { presence: () => {} })), "forbidden");
    assert.equal(await code(s.presence("")), "invalid_argument");
    assert.equal(await code(s.subscribe("room.lobby", () => {}, { presence: /** @type {any} */ (true) })), "invalid_argument");
    const e = await s.presence("news").catch((x) => x);
    assert.match(e.message, /No such route or channel/);
    // A reply that is not a presence list.
    gw.presenceReply = JSON.stringify({ users: [{ user: "bob" }] });
    assert.equal(await code(s.presence("room.lobby")), "protocol_error");
    gw.presenceReply = "not json";
    assert.equal(await code(s.presence("room.lobby")), "protocol_error");
    gw.presenceReply = null;
    assert.deepEqual(await s.presence("room.lobby"), { users: [], truncated: false });
    assert.equal(s.state, "open");
    s.close();
  });

  test(`${backend}: a PRESENCE_EVENT that is neither join nor leave is a protocol violation (reconnect, presence events still on)`, async () => {
    const gw = new MockGateway({ users: USERS });
    const s = await connect(opts(gw, backend));
    const w = await watch(s, "room.lobby");
    const states = [];
    s.on("state", (d) => states.push([d.state, d.error?.code ?? null]));
    const before = gw.subscribeBodies.length;
    gw.sendPresenceEvent("room.lobby", JSON.stringify({ join: "bob", leave: "bob" }));
    await until(() => states.length >= 2 && s.state === "open" && gw.subscribeBodies.length > before, 5000, "reconnected");
    assert.deepEqual(states[0], ["reconnecting", "protocol_error"]);
    assert.deepEqual(w.seen, []);
    assert.deepEqual(lastBody(gw, "room.lobby"), { presence_events: true });
    gw.presenceJoin("room.lobby", "bob");
    await until(() => w.seen.length === 1, 2000, "join after the reconnect");
    s.close();
  });

  test(`${backend}: a sensitive presence channel: SUBSCRIBE, PRESENCE, its answer and the events are encrypted`, async () => {
    const gw = new MockGateway({ users: USERS });
    const frames = [];
    const s = await connect(opts(gw, backend, { onFrame: (dir, bytes, info) => frames.push({ dir, bytes, info }) }));
    const plainTry = await s.subscribe("secret.room.vault", () => {}, { presence: () => {} }).catch((e) => e.code);
    assert.equal(plainTry, "encryption_required");
    const from = frames.length; // that attempt went in clear, as asked
    const w = await watch(s, "secret.room.vault", { sensitive: true });
    gw.presenceJoin("secret.room.vault", "bobbysecret");
    await until(() => w.seen.length === 1, 2000, "join");
    assert.deepEqual(w.seen[0], ["join", "bobbysecret", { channel: "secret.room.vault", encrypted: true }]);
    const list = await s.presence("secret.room.vault", { sensitive: true });
    assert.deepEqual(list.users.map((u) => u.user), ["bobbysecret", "demo"]);
    gw.presenceLeave("secret.room.vault", "bobbysecret");
    await until(() => w.seen.length === 2, 2000, "leave");
    const pe = frames.filter((f) => f.info?.typeName === "PRESENCE_EVENT");
    assert.equal(pe.length, 2);
    assert.ok(pe.every((f) => f.dir === "in" && f.info.encrypted && f.info.id === 0 && f.info.name === "secret.room.vault"));
    const sensitiveOut = frames.filter((f) => f.dir === "out" && ["SUBSCRIBE", "PRESENCE"].includes(f.info?.typeName) && f.info.name === "secret.room.vault" && f.info.encrypted);
    assert.equal(sensitiveOut.length, 2);
    const hay = frames.slice(from).map((f) => Buffer.from(f.bytes).toString("latin1")).join("\n");
    assert.ok(!hay.includes("bobbysecret"), "the user name never crosses the wire in clear");
    assert.ok(!hay.includes("presence_events"), "nor does the SUBSCRIBE body");
    s.close();
  });
}
