// Channel continuity (docs/protocol.md §6.5) in sm.js against the mock
// gateway's history channels, with both crypto backends: positions in
// `meta`, resubscribing with `since` after a reconnect, replayed events
// exactly once and in order, `gap` (not recovered, RESYNC, a skipped offset)
// and `recovered`, sensitive history channels, stored positions, publish
// positions, and plain channels as before.
import { test } from "node:test";
import assert from "node:assert/strict";
import { MockGateway } from "./mock-gateway.js";
import { connect } from "../src/sm.js";
import { sleep, until } from "./helpers.js";

const td = new TextDecoder();

function opts(gw, backend, extra = {}) {
  return { username: "demo", password: "wsgate-demo", url: "http://gw.test:8080", crypto: backend, fetch: gw.fetch, WebSocket: gw.WebSocket, maxReconnectDelay: 50, ...extra };
}

/** Subscribes and records events, gaps and recoveries in one timeline. */
async function record(s, channel, extra = {}) {
  const log = [];
  const events = [];
  const sub = await s.subscribe(
    channel,
    (data, meta) => {
      events.push({ data: td.decode(data), ...meta });
      log.push(["event", meta.offset, td.decode(data)]);
    },
    {
      ...extra,
      onGap: (d) => log.push(["gap", d]),
      onRecovered: (d) => log.push(["recovered", d]),
    },
  );
  return { sub, log, events, data: () => events.map((e) => e.data) };
}

/** Kills the gateway, runs `whileDown`, revives it and waits until `s` has resubscribed. */
async function outage(gw, s, whileDown) {
  const before = gw.subscribeBodies.length;
  gw.kill();
  await until(() => s.state === "reconnecting", 2000, "reconnecting");
  await whileDown();
  gw.revive();
  await until(() => s.state === "open" && gw.subscribeBodies.length > before, 5000, "reopen and resubscribe");
}

for (const backend of ["webcrypto", "noble"]) {
  test(`${backend}: disconnected while events are published: after the reconnect exactly those, once, in order, then live ones`, async () => {
    const gw = new MockGateway();
    gw.historySize = 10;
    gw.replayOverlap = 2; // the server replays two events the client has already had: the seam
    const s = await connect(opts(gw, backend));
    const r = await record(s, "hist.feed");
    assert.equal(r.sub.channel, "hist.feed");
    const epoch = gw.stream("hist.feed").epoch;
    assert.deepEqual(r.sub.position, { epoch, offset: 0 }, "position known from the SUBSCRIBE answer");
    assert.deepEqual(gw.subscribeBodies, [["hist.feed", ""]], "a first subscription sends no since");
    for (const x of ["a", "b", "c"]) gw.publish("hist.feed", x);
    await until(() => r.events.length === 3, 2000, "live events");
    assert.deepEqual(r.events[0], { data: "a", channel: "hist.feed", encrypted: false, offset: 1, epoch });
    assert.deepEqual(r.sub.position, { epoch, offset: 3 });

    await outage(gw, s, async () => {
      for (const x of ["d", "e", "f", "g"]) gw.publish("hist.feed", x);
    });
    assert.deepEqual(JSON.parse(gw.subscribeBodies.at(-1)[1]), { since: { epoch, offset: 3 } }, "resubscribed from the last position delivered");
    await until(() => r.events.length === 7, 2000, "replayed events");
    // A live event right after the replay, and one duplicating the seam.
    gw.sendEventAt("hist.feed", 7, "g");
    gw.publish("hist.feed", "h");
    await until(() => r.events.length === 8, 2000, "live event after the replay");
    await sleep(30);
    assert.deepEqual(r.data(), ["a", "b", "c", "d", "e", "f", "g", "h"]);
    assert.deepEqual(
      r.events.map((e) => e.offset),
      [1, 2, 3, 4, 5, 6, 7, 8],
    );
    assert.ok(r.events.every((e) => e.epoch === epoch));
    // The recovery is announced before the replayed events.
    assert.deepEqual(r.log.slice(3, 5), [
      ["recovered", { channel: "hist.feed", epoch, offset: 7, since: { epoch, offset: 3 }, missed: 4 }],
      ["event", 4, "d"],
    ]);
    assert.equal(r.log.filter((l) => l[0] === "gap").length, 0);
    assert.deepEqual(r.sub.position, { epoch, offset: 8 });
    s.close();
    assert.deepEqual(r.sub.position, { epoch, offset: 8 }, "still readable after close (to store it)");
  });

  test(`${backend}: a new epoch, or more missed than the history keeps: gap (not_recovered), nothing replayed`, async () => {
    const gw = new MockGateway();
    gw.historySize = 3;
    const s = await connect(opts(gw, backend));
    const r = await record(s, "hist.feed");
    const e1 = gw.stream("hist.feed").epoch;
    gw.publish("hist.feed", "1");
    gw.publish("hist.feed", "2");
    await until(() => r.events.length === 2, 2000, "events");

    // The history was lost while the client was away (a new epoch).
    let e2;
    await outage(gw, s, async () => {
      e2 = gw.newEpoch("hist.feed");
      gw.publish("hist.feed", "lost-1");
      gw.publish("hist.feed", "lost-2");
    });
    await until(() => r.log.some((l) => l[0] === "gap"), 2000, "gap");
    assert.deepEqual(r.log.at(-1), ["gap", { channel: "hist.feed", reason: "not_recovered", epoch: e2, offset: 2, previous: { epoch: e1, offset: 2 } }]);
    gw.publish("hist.feed", "3");
    await until(() => r.events.length === 3, 2000, "live event in the new epoch");
    await sleep(30);
    assert.deepEqual(r.data(), ["1", "2", "3"], "nothing replayed");
    assert.deepEqual([r.events[2].epoch, r.events[2].offset], [e2, 3]);
    assert.equal(r.log.filter((l) => l[0] === "recovered").length, 0);

    // Same epoch, but more events than the history keeps.
    await outage(gw, s, async () => {
      for (let i = 4; i <= 8; i++) gw.publish("hist.feed", String(i));
    });
    await until(() => r.log.filter((l) => l[0] === "gap").length === 2, 2000, "second gap");
    assert.deepEqual(r.log.at(-1), ["gap", { channel: "hist.feed", reason: "not_recovered", epoch: e2, offset: 8, previous: { epoch: e2, offset: 3 } }]);
    gw.publish("hist.feed", "9");
    await until(() => r.events.length === 4, 2000, "live event");
    assert.deepEqual(r.data(), ["1", "2", "3", "9"]);
    assert.deepEqual(r.sub.position, { epoch: e2, offset: 9 });

    // Exactly at the edge of the window (oldest kept - 1) still recovers.
    await outage(gw, s, async () => {
      for (let i = 10; i <= 12; i++) gw.publish("hist.feed", String(i));
    });
    await until(() => r.events.length === 7, 2000, "replay at the window's edge");
    assert.deepEqual(r.data().slice(4), ["10", "11", "12"]);
    assert.equal(r.log.filter((l) => l[0] === "gap").length, 2);
    s.close();
  });

  test(`${backend}: RESYNC mid-stream: gap with the new position, then events from offset + 1`, async () => {
    const gw = new MockGateway();
    const s = await connect(opts(gw, backend));
    const r = await record(s, "hist.feed");
    const e1 = gw.stream("hist.feed").epoch;
    gw.publish("hist.feed", "1");
    gw.publish("hist.feed", "2");
    // Events 3..5 could not be delivered (say the node's state store link dropped).
    gw.resync("hist.feed", { epoch: e1, offset: 5 });
    gw.sendEventAt("hist.feed", 6, "6");
    await until(() => r.events.length === 3, 2000, "event after the RESYNC");
    assert.deepEqual(r.log, [
      ["event", 1, "1"],
      ["event", 2, "2"],
      ["gap", { channel: "hist.feed", reason: "resync", epoch: e1, offset: 5, previous: { epoch: e1, offset: 2 } }],
      ["event", 6, "6"],
    ]);
    // A new epoch announced to a connected subscriber.
    gw.stream("hist.feed").offset = 6;
    const e2 = gw.newEpoch("hist.feed", { announce: true });
    gw.publish("hist.feed", "new-1");
    await until(() => r.events.length === 4, 2000, "event in the new epoch");
    assert.deepEqual(r.log.slice(4), [
      ["gap", { channel: "hist.feed", reason: "resync", epoch: e2, offset: 0, previous: { epoch: e1, offset: 6 } }],
      ["event", 1, "new-1"],
    ]);
    assert.equal(r.events[3].epoch, e2);
    // A RESYNC at or before what was delivered loses nothing: no gap.
    gw.resync("hist.feed", { epoch: e2, offset: 1 });
    gw.publish("hist.feed", "new-2");
    await until(() => r.events.length === 5, 2000, "next event");
    assert.equal(r.log.filter((l) => l[0] === "gap").length, 2);
    assert.deepEqual(r.sub.position, { epoch: e2, offset: 2 });
    s.close();
  });

  test(`${backend}: a duplicate or old EVENT_AT is never delivered twice; a skipped offset is a gap`, async () => {
    const gw = new MockGateway();
    const s = await connect(opts(gw, backend));
    const r = await record(s, "hist.feed");
    const e = gw.stream("hist.feed").epoch;
    gw.publish("hist.feed", "1");
    gw.publish("hist.feed", "2");
    gw.sendEventAt("hist.feed", 2, "2 again");
    gw.sendEventAt("hist.feed", 1, "1 again");
    gw.publish("hist.feed", "3");
    gw.sendEventAt("hist.feed", 3, "3 again");
    // Skip ahead without a RESYNC: 4 and 5 never came.
    gw.sendEventAt("hist.feed", 6, "6");
    gw.sendEventAt("hist.feed", 5, "5 late");
    gw.sendEventAt("hist.feed", 7, "7");
    await until(() => r.events.length === 5, 2000, "events");
    await sleep(30);
    assert.deepEqual(r.log, [
      ["event", 1, "1"],
      ["event", 2, "2"],
      ["event", 3, "3"],
      ["gap", { channel: "hist.feed", reason: "skip", epoch: e, offset: 5, previous: { epoch: e, offset: 3 } }],
      ["event", 6, "6"],
      ["event", 7, "7"],
    ]);
    // An EVENT_AT without its offset is a protocol violation: 4400, reconnect.
    const keyInits = gw.keyInits;
    for (const c of gw.conns) c.sendFrame(0x24, 0, 0, "hist.feed", Buffer.from([0, 0, 0]));
    await until(() => gw.log.some((l) => l[0] === "client-close" && l[1] === 4400), 2000, "4400");
    await until(() => s.state === "open" && gw.keyInits > keyInits, 5000, "reconnected");
    s.close();
  });

  test(`${backend}: a sensitive history channel: EVENT_AT encrypted (offset too), replay after a reconnect`, async () => {
    const gw = new MockGateway();
    const frames = [];
    const s = await connect(opts(gw, backend, { onFrame: (dir, bytes, info) => frames.push({ dir, bytes, info }) }));
    await assert.rejects(s.subscribe("secret.hist.pay", () => {}), (err) => err.code === "encryption_required");
    const r = await record(s, "secret.hist.pay", { sensitive: true });
    const e = gw.stream("secret.hist.pay").epoch;
    gw.publish("secret.hist.pay", "card-marker-1");
    await until(() => r.events.length === 1, 2000, "event");
    await outage(gw, s, async () => {
      gw.publish("secret.hist.pay", "card-marker-2");
      gw.publish("secret.hist.pay", "card-marker-3");
    });
    await until(() => r.events.length === 3, 2000, "replay");
    assert.deepEqual(r.events, [
      { data: "card-marker-1", channel: "secret.hist.pay", encrypted: true, offset: 1, epoch: e },
      { data: "card-marker-2", channel: "secret.hist.pay", encrypted: true, offset: 2, epoch: e },
      { data: "card-marker-3", channel: "secret.hist.pay", encrypted: true, offset: 3, epoch: e },
    ]);
    assert.equal(r.log.filter((l) => l[0] === "recovered").length, 1);
    const eventAts = frames.filter((f) => f.info?.typeName === "EVENT_AT");
    assert.equal(eventAts.length, 3);
    assert.ok(eventAts.every((f) => f.dir === "in" && f.info.encrypted));
    const subs = frames.filter((f) => f.info?.typeName === "SUBSCRIBE");
    assert.equal(subs[0].info.encrypted, false, "the refused one");
    assert.ok(subs.length >= 3 && subs.slice(1).every((f) => f.info.encrypted), "the SUBSCRIBE with since is encrypted too");
    const wire = Buffer.concat(frames.map((f) => Buffer.from(f.bytes)));
    assert.ok(!wire.includes(Buffer.from("card-marker")), "no sensitive payload on the wire");
    assert.ok(!wire.includes(Buffer.from(e)), "nor the epoch (the SUBSCRIBE body is encrypted)");
    s.close();
  });

  test(`${backend}: subscribe(..., { since }) from a stored position (a new page load)`, async () => {
    const gw = new MockGateway();
    const first = await connect(opts(gw, backend));
    const r1 = await record(first, "hist.feed");
    gw.publish("hist.feed", "1");
    gw.publish("hist.feed", "2");
    await until(() => r1.events.length === 2, 2000, "events");
    const stored = JSON.parse(JSON.stringify(r1.sub.position)); // as sessionStorage would keep it
    first.close();
    gw.publish("hist.feed", "3");
    gw.publish("hist.feed", "4");

    const second = await connect(opts(gw, backend));
    const r2 = await record(second, "hist.feed", { since: stored });
    // The outcome is known before subscribe() resolves.
    assert.deepEqual(r2.log[0], ["recovered", { channel: "hist.feed", epoch: stored.epoch, offset: 4, since: stored, missed: 2 }]);
    await until(() => r2.events.length === 2, 2000, "replay");
    assert.deepEqual(r2.data(), ["3", "4"]);
    assert.deepEqual(r2.sub.position, { epoch: stored.epoch, offset: 4 });
    second.close();

    // A stored position the server cannot serve: onGap before subscribe() resolves.
    const third = await connect(opts(gw, backend));
    const r3 = await record(third, "hist.feed", { since: { epoch: "AAAAAAAAAAA", offset: 9 } });
    assert.deepEqual(r3.log, [["gap", { channel: "hist.feed", reason: "not_recovered", epoch: stored.epoch, offset: 4, previous: { epoch: "AAAAAAAAAAA", offset: 9 } }]]);
    assert.deepEqual(r3.sub.position, { epoch: stored.epoch, offset: 4 });
    // since: null is no position; a malformed one is refused locally.
    const r4 = await record(third, "hist.other", { since: null });
    assert.equal(r4.sub.position.offset, 0);
    for (const bad of [{ epoch: "x=", offset: 1 }, { epoch: "AA", offset: -1 }, { epoch: "AA", offset: 1.5 }, { offset: 1 }, "AA:1"]) {
      await assert.rejects(third.subscribe("hist.bad", () => {}, { since: bad }), (err) => err.code === "invalid_argument", JSON.stringify(bad));
    }
    await assert.rejects(third.subscribe("hist.bad", () => {}, { onGap: "no" }), (err) => err.code === "invalid_argument");
    third.close();
  });

  test(`${backend}: plain channels are unchanged: EVENT, no position, no gap; publish resolves with the position on history channels only`, async () => {
    const gw = new MockGateway();
    const frames = [];
    const s = await connect(opts(gw, backend, { onFrame: (dir, bytes, info) => frames.push({ dir, info }) }));
    const r = await record(s, "news", { since: { epoch: "AAAAAAAAAAA", offset: 3 } }); // since on a plain channel: a plain subscription
    assert.equal(r.sub.position, null);
    gw.publish("news", "one");
    await until(() => r.events.length === 1, 2000, "event");
    assert.deepEqual(r.events[0], { data: "one", channel: "news", encrypted: false }, "meta has no offset or epoch");
    await outage(gw, s, async () => gw.publish("news", "missed"));
    assert.deepEqual(gw.subscribeBodies.at(-1), ["news", ""], "plain channels resubscribe without since");
    gw.publish("news", "two");
    await until(() => r.events.length === 2, 2000, "event after the reconnect");
    assert.deepEqual(r.log.map((l) => l[0]), ["event", "event"]);
    const inbound = frames.filter((f) => f.dir === "in" && f.info?.name === "news");
    assert.deepEqual([...new Set(inbound.map((f) => f.info.typeName))], ["EVENT"]);

    // The client's own PUBLISH.
    const h = await record(s, "hist.feed");
    assert.equal(await s.publish("news", "p"), null);
    const e = gw.stream("hist.feed").epoch;
    assert.deepEqual(await s.publish("hist.feed", { n: 1 }), { epoch: e, offset: 1 });
    assert.deepEqual(await s.publish("hist.feed", "two"), { epoch: e, offset: 2 });
    await until(() => h.events.length === 2, 2000, "own events");
    assert.deepEqual(h.data(), ['{"n":1}', "two"]);
    await assert.rejects(s.publish("secret.hist.pay", "x"), (err) => err.code === "encryption_required");
    s.close();
  });

  test(`${backend}: one position per channel: a second handler joins it; unsubscribing forgets it`, async () => {
    const gw = new MockGateway();
    const s = await connect(opts(gw, backend));
    const a = await record(s, "hist.feed");
    gw.publish("hist.feed", "1");
    await until(() => a.events.length === 1, 2000, "event");
    const e = gw.stream("hist.feed").epoch;
    const before = gw.subscribeBodies.length;
    const b = await record(s, "hist.feed", { since: { epoch: "AAAAAAAAAAA", offset: 0 } });
    assert.equal(gw.subscribeBodies.length, before, "a joining handler that changes nothing sends no SUBSCRIBE: it takes the channel's position, not its own since");
    assert.deepEqual(b.sub.position, { epoch: e, offset: 1 });
    assert.deepEqual(b.log, [], "and is told nothing");
    gw.publish("hist.feed", "2");
    await until(() => a.events.length === 2 && b.events.length === 1, 2000, "both handlers");
    assert.deepEqual(b.sub.position, a.sub.position);
    // A third handler joins while event 3 is counted by the stream but still
    // on its way: replayed, delivered once, no news for anybody.
    const st = gw.stream("hist.feed");
    st.offset++;
    st.ring.push({ offset: 3, data: Buffer.from("3") });
    const c = await record(s, "hist.feed");
    gw.sendEventAt("hist.feed", 3, "3");
    await until(() => a.events.length === 3 && c.events.length === 1, 2000, "the event in flight");
    await sleep(30);
    assert.deepEqual([a.data(), b.data(), c.data()], [["1", "2", "3"], ["2", "3"], ["3"]]);
    assert.deepEqual([a.log.filter((l) => l[0] !== "event"), c.log.filter((l) => l[0] !== "event")], [[], []]);
    await c.sub();
    await outage(gw, s, async () => gw.publish("hist.feed", "4"));
    await until(() => a.events.length === 4 && b.events.length === 3, 2000, "replay to both");
    assert.equal(gw.subscribeBodies.filter(([ch]) => ch === "hist.feed").length, 2, "one SUBSCRIBE for the first handler, one per channel on reconnect");
    assert.equal(a.log.filter((l) => l[0] === "recovered").length, 1);
    assert.equal(b.log.filter((l) => l[0] === "recovered").length, 1);
    await a.sub();
    await b.sub();
    assert.equal(s._subs.size, 0, "no position kept for a channel nobody is subscribed to");
    s.close();
  });
}
