// The sealed login (docs/protocol.md §4.1) against the in-memory mock gateway,
// with both crypto backends: what crosses the wire, and that the client
// fails closed on every reply that does not open or has the wrong shape.
import { test } from "node:test";
import assert from "node:assert/strict";
import { MockGateway } from "./mock-gateway.js";
import { BACKENDS } from "./helpers.js";
import { login, makeCredentials, paddedFirstRequest } from "../src/login.js";
import { connect } from "../src/sm.js";

const BASE = "http://gw.test:8080";

function run(gw, backend, { username = "demo", password = "wsgate-demo", fetch = gw.fetch, pin } = {}) {
  return login({ backend, base: BASE, credentials: makeCredentials(username, password), timeoutMs: 5000, fetch, ...(pin ? { pin } : {}) });
}

/** A fetch that lets the mock answer, then replaces the answer to PUT number `n` (1-based) with `reply`. */
function replacing(gw, n, reply) {
  let puts = 0;
  return async (url, init = {}) => {
    const res = await gw.fetch(url, init);
    if (init.method === "PUT" && ++puts === n) return reply(res);
    return res;
  };
}

const jsonResponse = (status, body, headers = {}) => new Response(JSON.stringify(body), { status, headers: { "Content-Type": "application/json", ...headers } });

test("padding: the inner first request is a multiple of 64 bytes with the fewest spaces", () => {
  for (let n = 1; n < 200; n++) {
    for (const ch of ["a", "é", "😀", '"']) {
      const cf = `p=wsgate-v1,,n=${ch.repeat(n)},r=abcdefghijklmnopqrstuvwxyzAB`;
      const inner = paddedFirstRequest(cf);
      const len = Buffer.byteLength(inner, "utf8");
      assert.equal(len % 64, 0, inner);
      const parsed = JSON.parse(inner);
      assert.deepEqual(Object.keys(parsed), ["scram", "pad"]);
      assert.equal(parsed.scram, cf);
      assert.match(parsed.pad, /^ *$/);
      assert.ok(parsed.pad.length < 64, "fewest spaces");
    }
  }
});

for (const be of BACKENDS) {
  test(`${be.name}: a sealed login shows nothing of the SCRAM exchange on the wire`, async () => {
    const gw = new MockGateway({ users: { "alice-the-user": "pw-123456" } });
    const lr = await run(gw, be, { username: "alice-the-user", password: "pw-123456" });
    assert.equal(lr.user, "alice-the-user");
    assert.equal(lr.ip, "127.0.0.1");
    assert.equal(lr.fp, gw.fp);
    assert.equal(gw.sessions.size, 1);
    assert.equal(gw.loginBodies.length, 2);
    const [b1, b2] = gw.loginBodies.map((b) => JSON.parse(b));
    assert.deepEqual(Object.keys(b1), ["kid", "enc", "ct"]);
    assert.equal(b1.kid, gw.kid);
    assert.equal(Buffer.from(b1.enc, "base64url").length, 32);
    assert.deepEqual(Object.keys(b2), ["sid", "ct"]);
    const wire = gw.loginBodies.join("\n");
    for (const secret of ["alice", "p=wsgate-v1", "n=", "c=", "r=", "scram"]) assert.ok(!wire.includes(secret), `"${secret}" is not on the wire`);
    const ptLen = gw.log.find((l) => l[0] === "request-1-plaintext-length")[1];
    assert.equal(ptLen % 64, 0);
    assert.equal(Buffer.from(b1.ct, "base64url").length, ptLen + 16);
  });

  test(`${be.name}: the ciphertext length does not depend on the user name's length (within a 64-byte block)`, async () => {
    const lens = new Set();
    for (const name of ["a", "bob", "carol-xy", "dave-123456789"]) {
      const gw = new MockGateway({ users: { [name]: "pw" } });
      await run(gw, be, { username: name, password: "pw" });
      lens.add(JSON.parse(gw.loginBodies[0]).ct.length);
    }
    assert.equal(lens.size, 1, [...lens].join(","));
  });

  test(`${be.name}: a reply 1 whose box does not open is refused before any second request`, async () => {
    const gw = new MockGateway();
    gw.inject("reply1");
    await assert.rejects(run(gw, be), (e) => e.code === "protocol_error" && /sealed first login reply did not open/.test(e.message));
    assert.equal(gw.loginBodies.length, 1, "no request 2");
    assert.equal(gw.sessions.size, 0);
  });

  test(`${be.name}: a server answering the old clear v1 shape is refused, not trusted`, async () => {
    const gw = new MockGateway();
    gw.inject("clearV1");
    await assert.rejects(run(gw, be), (e) => e.code === "protocol_error" && /did not open \(no ct member\)/.test(e.message));
    assert.equal(gw.loginBodies.length, 1, "no request 2");
  });

  test(`${be.name}: a reply 2 with a tampered ct is refused (even though the server made a session)`, async () => {
    const gw = new MockGateway();
    gw.inject("reply2");
    await assert.rejects(run(gw, be), (e) => e.code === "protocol_error" && /sealed login answer did not open/.test(e.message));
    assert.equal(gw.sessions.size, 1);
    gw.inject("reply2");
    await assert.rejects(run(gw, be, { password: "wrong" }), (e) => e.code === "protocol_error" && /sealed login refusal did not open/.test(e.message));
  });

  test(`${be.name}: a 200 without a box, or with the clear v1 body, is refused`, async () => {
    const gw = new MockGateway();
    const v1 = jsonResponse(200, { status: "authenticated", scram: "v=AAAA", session: "A".repeat(22), user: "demo", expires_in: 3600 });
    await assert.rejects(run(gw, be, { fetch: replacing(gw, 2, () => v1) }), (e) => e.code === "protocol_error" && /did not open \(no ct member\)/.test(e.message));
    const notB64 = jsonResponse(200, { status: "authenticated", ct: "not base64url!" });
    await assert.rejects(run(gw, be, { fetch: replacing(gw, 2, () => notB64) }), (e) => e.code === "protocol_error" && /not base64url/.test(e.message));
  });

  test(`${be.name}: a box that opens but is not what the step expects is refused`, async () => {
    const gw = new MockGateway();
    gw.inject("reply1NoIp");
    await assert.rejects(run(gw, be), (e) => e.code === "protocol_error" && /sealed first login reply is malformed/.test(e.message));
    assert.equal(gw.loginBodies.length, 1, "no request 2");
    gw.inject("reply2NoSession");
    await assert.rejects(run(gw, be), (e) => e.code === "protocol_error" && /login answer is malformed/.test(e.message));
    gw.inject("reply2Array");
    await assert.rejects(run(gw, be), (e) => e.code === "protocol_error" && /not a JSON object/.test(e.message));
  });

  test(`${be.name}: a request 2 altered on the way gets e=invalid-encoding in box 3`, async () => {
    const gw = new MockGateway();
    let puts = 0;
    const fetch = (url, init = {}) => {
      if (init.method === "PUT" && ++puts === 2) {
        const b = JSON.parse(init.body);
        const ct = Buffer.from(b.ct, "base64url");
        ct[0] ^= 1;
        init = { ...init, body: JSON.stringify({ sid: b.sid, ct: ct.toString("base64url") }) };
      }
      return gw.fetch(url, init);
    };
    await assert.rejects(run(gw, be, { fetch }), (e) => e.code === "invalid-encoding" && e.status === 401);
  });

  test(`${be.name}: clear failures map to clear codes`, async () => {
    const gw = new MockGateway();
    // 400 bad_seal: retried once (the key may have rotated), then reported.
    gw.inject("badSeal", 2);
    await assert.rejects(run(gw, be), (e) => e.code === "bad_seal" && e.status === 400 && /could not open the sealed login/.test(e.message));
    assert.equal(gw.firstRequests, 2);
    gw.inject("badSeal", 1);
    const lr = await run(gw, be);
    assert.equal(lr.user, "demo", "one bad_seal, then a fresh request 1 succeeds");
    // A key rotated between GET /auth/key and request 1 is that case.
    let rotated = false;
    const rotating = async (url, init = {}) => {
      const res = await gw.fetch(url, init);
      if (!rotated && url.endsWith("/auth/key")) {
        rotated = true;
        gw.rotateKey();
      }
      return res;
    };
    assert.equal((await run(gw, be, { fetch: rotating })).fp, gw.fp);
    // 400 sealed_login_required.
    const slr = jsonResponse(400, { status: "failed", error: "sealed_login_required" });
    await assert.rejects(run(gw, be, { fetch: replacing(gw, 1, () => slr) }), (e) => e.code === "sealed_login_required" && e.status === 400);
    // 503 with Retry-After.
    gw.inject("unavailable");
    await assert.rejects(run(gw, be), (e) => e.code === "unavailable" && e.retryAfter === 1 && /in 1 s/.test(e.message));
    // 429.
    gw.rateLimited = true;
    await assert.rejects(run(gw, be), (e) => e.code === "rate_limited" && e.retryAfter === 42);
    gw.rateLimited = false;
    // A clear e= refusal of request 1 (client-first refused) is that code.
    const refused = jsonResponse(401, { status: "failed", scram: "e=invalid-username-encoding" }, { "WWW-Authenticate": "wsgate-v1" });
    await assert.rejects(run(gw, be, { fetch: replacing(gw, 1, () => refused) }), (e) => e.code === "invalid-username-encoding" && e.status === 401);
    // A 400 bad_request names the server's message.
    const bad = jsonResponse(400, { status: "bad_request", message: "body is not JSON" });
    await assert.rejects(run(gw, be, { fetch: replacing(gw, 1, () => bad) }), (e) => e.code === "protocol_error" && /body is not JSON/.test(e.message));
  });

  test(`${be.name}: request 2 refused in clear with anything but other-error is not trusted`, async () => {
    const gw = new MockGateway();
    gw.inject("clearFailure2");
    await assert.rejects(run(gw, be), (e) => e.code === "protocol_error" && /in clear \(e=invalid-proof\)/.test(e.message));
  });

  test(`${be.name}: other-error, clear or boxed, starts over once`, async () => {
    const gw = new MockGateway();
    gw.inject("boxedOtherError");
    assert.equal((await run(gw, be)).user, "demo");
    assert.equal(gw.firstRequests, 2);
    // A replayed (already used) sid: the clear other-error.
    let puts = 0;
    let firstSid;
    const replay = (url, init = {}) => {
      if (init.method === "PUT") {
        puts++;
        const b = JSON.parse(init.body);
        if (puts === 2) firstSid = b;
        if (puts === 4) init = { ...init, body: JSON.stringify(firstSid) };
      }
      return gw.fetch(url, init);
    };
    gw.firstRequests = 0;
    // puts: 1 = request 1, 2 = request 2 (succeeds), then a second login whose
    // request 2 (put 4) is replaced by the used one: clear other-error; retry.
    await run(gw, be, { fetch: replay });
    await run(gw, be, { fetch: replay });
    assert.equal(gw.firstRequests, 3);
    gw.inject("boxedOtherError", 2);
    await assert.rejects(run(gw, be), (e) => e.code === "other-error");
  });

  test(`${be.name}: the login key and exchange key are zeroed when the login ends`, async () => {
    const gw = new MockGateway();
    const kept = [];
    const spy = {
      ...be,
      async hpkeSealBaseExport(p) {
        const out = await be.hpkeSealBaseExport(p);
        kept.push(["login_key", out.exported]);
        return out;
      },
      async hkdfSha256(ikm, salt, info, length) {
        const out = await be.hkdfSha256(ikm, salt, info, length);
        if (new TextDecoder().decode(info) === "wsgate-v1 login exchange") kept.push(["exchange_key", out]);
        return out;
      },
    };
    await run(gw, spy);
    gw.inject("reply1");
    await assert.rejects(run(gw, spy));
    assert.deepEqual(kept.map((k) => k[0]), ["login_key", "exchange_key", "login_key", "exchange_key"]);
    for (const [what, k] of kept) assert.ok(k.length === 32 && k.every((x) => x === 0), `${what} zeroed`);
  });
}

test("connect(): the session logs in sealed on both backends", async () => {
  for (const crypto of ["webcrypto", "noble"]) {
    const gw = new MockGateway();
    const s = await connect({ username: "demo", password: "wsgate-demo", url: BASE, crypto, fetch: gw.fetch, WebSocket: gw.WebSocket });
    assert.equal(s.user, "demo");
    assert.ok(gw.loginBodies.every((b) => !b.includes("scram")));
    s.close();
  }
});
