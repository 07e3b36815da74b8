// The eavesdropper of the wire test (test/e2e/eavesdropper.mjs) must be
// able to crack a recorded clear login — the committed capture of a real v1
// browser login, and synthetic ones with awkward TCP — or its finding
// nothing in a sealed login (docs/protocol.md §4) would prove nothing.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createHash, createHmac, pbkdf2Sync, randomBytes, createCipheriv } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { gzipSync } from "node:zlib";
import { x25519 } from "@noble/curves/ed25519.js";
import { seal } from "../src/crypto/hpke-noble.js";
import { crack, eavesdrop, httpExchanges, readWords, reassemble, scramMessages, tcpStreams, userNameHits } from "./e2e/eavesdropper.mjs";

const here = dirname(fileURLToPath(import.meta.url));
const FIXTURES = join(here, "fixtures");

// ---------------------------------------------------------------------------
// A pcap writer: Ethernet, IPv4, TCP.

function ipv4(s) {
  return Buffer.from(s.split(".").map(Number));
}

/** One captured frame. */
function frame({ src, dst, sport, dport, seq, ack = 0, flags, payload = Buffer.alloc(0) }) {
  const eth = Buffer.alloc(14);
  eth.writeUInt16BE(0x0800, 12);
  const ip = Buffer.alloc(20);
  ip[0] = 0x45;
  ip.writeUInt16BE(40 + payload.length, 2);
  ip[8] = 64;
  ip[9] = 6;
  ipv4(src).copy(ip, 12);
  ipv4(dst).copy(ip, 16);
  const tcp = Buffer.alloc(20);
  tcp.writeUInt16BE(sport, 0);
  tcp.writeUInt16BE(dport, 2);
  tcp.writeUInt32BE(seq >>> 0, 4);
  tcp.writeUInt32BE(ack >>> 0, 8);
  tcp[12] = 5 << 4;
  tcp[13] = flags;
  return Buffer.concat([eth, ip, tcp, payload]);
}

function pcapFile(frames) {
  const hdr = Buffer.alloc(24);
  hdr.writeUInt32LE(0xa1b2c3d4, 0);
  hdr.writeUInt16LE(2, 4);
  hdr.writeUInt16LE(4, 6);
  hdr.writeUInt32LE(262144, 16);
  hdr.writeUInt32LE(1, 20);
  const recs = frames.map((f, i) => {
    const r = Buffer.alloc(16);
    r.writeUInt32LE(1_700_000_000 + i, 0);
    r.writeUInt32LE(f.length, 8);
    r.writeUInt32LE(f.length, 12);
    return Buffer.concat([r, f]);
  });
  return Buffer.concat([hdr, ...recs]);
}

const SYN = 0x02;
const ACK = 0x10;
const PSH = 0x08;
const FIN = 0x01;

/**
 * The frames of one TCP connection carrying `turns` ([fromClient, bytes]),
 * cut into `mss`-byte segments; `mess` reorders and retransmits them.
 */
function connection(turns, { cport = 40000 + Math.floor(Math.random() * 20000), sport = 8080, mss = 100, cisn = randomBytes(4).readUInt32BE(), sisn = randomBytes(4).readUInt32BE(), mess = false } = {}) {
  const c = { src: "127.0.0.1", dst: "127.0.0.1", sport: cport, dport: sport };
  const s = { src: "127.0.0.1", dst: "127.0.0.1", sport, dport: cport };
  let cseq = (cisn + 1) >>> 0;
  let sseq = (sisn + 1) >>> 0;
  const frames = [frame({ ...c, seq: cisn, flags: SYN }), frame({ ...s, seq: sisn, ack: cseq, flags: SYN | ACK }), frame({ ...c, seq: cseq, ack: sseq, flags: ACK })];
  for (const [fromClient, bytes] of turns) {
    const segs = [];
    for (let o = 0; o < bytes.length; o += mss) {
      const payload = bytes.subarray(o, o + mss);
      if (fromClient) {
        segs.push(frame({ ...c, seq: cseq, ack: sseq, flags: ACK | PSH, payload }));
        cseq = (cseq + payload.length) >>> 0;
      } else {
        segs.push(frame({ ...s, seq: sseq, ack: cseq, flags: ACK | PSH, payload }));
        sseq = (sseq + payload.length) >>> 0;
      }
    }
    if (mess && segs.length >= 3) {
      // Out of order (the last segment first), and a retransmission of the
      // first two bytes-overlapping segments as one.
      segs.unshift(segs.pop());
      segs.push(segs[1]);
    }
    frames.push(...segs);
  }
  frames.push(frame({ ...c, seq: cseq, ack: sseq, flags: FIN | ACK }), frame({ ...s, seq: sseq, ack: cseq + 1, flags: FIN | ACK }));
  return frames;
}

// ---------------------------------------------------------------------------
// SCRAM as a v1 client and server do it, with Node's crypto.

const hmac = (k, m) => createHmac("sha256", k).update(m).digest();

function clearLogin({ user, password, iterations = 4096 }) {
  const cnonce = randomBytes(24).toString("base64url");
  const snonce = randomBytes(18).toString("base64url");
  const salt = randomBytes(16);
  const gs2 = "p=wsgate-v1,,";
  const bare = `n=${user.replace(/=/g, "=3D").replace(/,/g, "=2C")},r=${cnonce}`;
  const serverFirst = `r=${cnonce}${snonce},s=${salt.toString("base64")},i=${iterations}`;
  const cbind = Buffer.from(`${gs2}ip=127.0.0.1;key=${randomBytes(32).toString("base64url")}`).toString("base64");
  const without = `c=${cbind},r=${cnonce}${snonce}`;
  const sp = pbkdf2Sync(Buffer.from(password.normalize("NFKC")), salt, iterations, 32, "sha256");
  const ck = hmac(sp, "Client Key");
  const sig = hmac(createHash("sha256").update(ck).digest(), `${bare},${serverFirst},${without}`);
  const proof = Buffer.from(ck.map((b, i) => b ^ sig[i])).toString("base64");
  return { clientFirst: gs2 + bare, serverFirst, clientFinal: `${without},p=${proof}` };
}

function request(method, target, body = "", extra = "") {
  const b = Buffer.from(body);
  return Buffer.concat([Buffer.from(`${method} ${target} HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nContent-Type: application/json\r\nContent-Length: ${b.length}\r\n${extra}\r\n`), b]);
}

function response(status, body, { chunked = false, gzip = false } = {}) {
  let b = Buffer.from(body);
  let head = `HTTP/1.1 ${status} X\r\ncontent-type: application/json\r\n`;
  if (gzip) {
    b = gzipSync(b);
    head += "content-encoding: gzip\r\n";
  }
  if (!chunked) return Buffer.concat([Buffer.from(`${head}content-length: ${b.length}\r\n\r\n`), b]);
  const parts = [];
  for (let o = 0; o < b.length; o += 7) {
    const c = b.subarray(o, o + 7);
    parts.push(Buffer.from(`${c.length.toString(16)}\r\n`), c, Buffer.from("\r\n"));
  }
  return Buffer.concat([Buffer.from(`${head}transfer-encoding: chunked\r\n\r\n`), ...parts, Buffer.from("0\r\n\r\n")]);
}

const WORDS = ["123456", "password", "letmein", "dragon", "qwerty", "monkey", "correct horse battery staple", "sunshine", "trustno1", "Tr0ub4dor&3"];

// ---------------------------------------------------------------------------

test("reassemble: out of order, retransmitted, overlapping, across the sequence wrap, without SYN", () => {
  const data = randomBytes(1000);
  const isn = 0xffffff00; // the stream crosses 2^32
  const segs = [];
  for (let o = 0; o < data.length; o += 90) segs.push({ seq: (isn + 1 + o) >>> 0, payload: data.subarray(o, o + 90) });
  const messy = [segs[3], segs[0], ...segs.slice(5), segs[1], segs[2], segs[4], segs[2]];
  // A retransmission that overlaps two segments.
  messy.push({ seq: (isn + 1 + 50) >>> 0, payload: data.subarray(50, 200) });
  const r = reassemble(messy, isn);
  assert.deepEqual(r.gaps, []);
  assert.ok(r.data.equals(data));
  // Without the SYN: from the lowest sequence number, and said so.
  const n = reassemble(messy, null);
  assert.ok(n.data.equals(data));
  assert.equal(n.gaps.length, 1);
  // A hole is reported, and the bytes after it kept.
  const holed = reassemble(messy.filter((s) => s !== segs[4]), isn);
  assert.deepEqual(holed.gaps.map((g) => [g.at, g.bytes]), [[360, 90]]);
  assert.equal(holed.data.length, 910);
});

test("httpExchanges: keep-alive, Content-Length, chunked and gzip bodies, the switch to WebSocket", () => {
  const c2s = Buffer.concat([request("GET", "/auth/key"), request("PUT", "/auth/session", '{"a":1}'), request("GET", "/ws", "", "Connection: Upgrade\r\nUpgrade: websocket\r\n"), Buffer.from([0x82, 0x80, 1, 2, 3, 4])]);
  const s2c = Buffer.concat([response(200, '{"keys":[]}', { chunked: true }), response(401, '{"status":"x"}', { gzip: true, chunked: true }), Buffer.from("HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n"), Buffer.from([0x82, 0x01, 0x41])]);
  const h = httpExchanges(c2s, s2c);
  assert.deepEqual(h.errors, []);
  assert.deepEqual(h.exchanges.map((e) => [e.request.method, e.request.target, e.response?.status]), [["GET", "/auth/key", 200], ["PUT", "/auth/session", 401], ["GET", "/ws", 101]]);
  assert.equal(h.exchanges[0].response?.body.toString(), '{"keys":[]}');
  assert.equal(h.exchanges[1].request.body.toString(), '{"a":1}');
  assert.equal(h.exchanges[1].response?.body.toString(), '{"status":"x"}');
  assert.deepEqual([...(h.wsClient ?? [])], [0x82, 0x80, 1, 2, 3, 4]);
  assert.deepEqual([...(h.wsServer ?? [])], [0x82, 0x01, 0x41]);
});

test("scramMessages: the three messages in raw text, nothing in look-alikes", () => {
  const l = clearLogin({ user: "a,b=c", password: "x" });
  const found = scramMessages(`{"scram":"${l.clientFirst}"} ${l.serverFirst}&${l.clientFinal}`, "t");
  assert.deepEqual(found.map((m) => m.kind).sort(), ["client-final", "client-first", "server-first"]);
  assert.equal(found.find((m) => m.kind === "client-first")?.user, "a,b=c");
  assert.deepEqual(scramMessages(`{"kid":"abc","enc":"${randomBytes(32).toString("base64url")}","ct":"${randomBytes(200).toString("base64url")}"}`, "t"), []);
});

test("scramMessages: the gateway's own sm.js and demo page, which a capture may carry, are not taken for SCRAM messages", () => {
  for (const f of ["../crates/server/assets/sm.js", "../crates/server/assets/demo.html", "src/scram.js", "src/login.js"]) {
    const file = join(here, "..", f);
    assert.deepEqual(scramMessages(readFileSync(file, "utf8"), f), [], f);
  }
});

test("a synthetic clear login over messy TCP is cracked: user name, password, the iteration count of its server-first", () => {
  const user = "alice,=x";
  const password = "correct horse battery staple";
  const l = clearLogin({ user, password, iterations: 4100 });
  const wrong = clearLogin({ user, password: "not in the list" });
  const sid = randomBytes(16).toString("base64url");
  // One keep-alive connection for the key and the failed login, another
  // for the good one, whose replies are chunked.
  const a = connection(
    [
      [true, request("GET", "/auth/key")],
      [false, response(200, '{"keys":[]}')],
      [true, request("PUT", "/auth/session", JSON.stringify({ scram: wrong.clientFirst }))],
      [false, response(401, JSON.stringify({ status: "unauthenticated", sid, scram: wrong.serverFirst, ip: "127.0.0.1" }))],
      [true, request("PUT", "/auth/session", JSON.stringify({ sid, scram: wrong.clientFinal }))],
      [false, response(401, '{"status":"failed","scram":"e=invalid-proof"}')],
    ],
    { mess: true, mss: 40 },
  );
  const b = connection(
    [
      [true, request("PUT", "/auth/session", JSON.stringify({ scram: l.clientFirst }))],
      [false, response(401, JSON.stringify({ status: "unauthenticated", sid, scram: l.serverFirst, ip: "127.0.0.1" }), { chunked: true })],
      [true, request("PUT", "/auth/session", JSON.stringify({ sid, scram: l.clientFinal }))],
      [false, response(200, JSON.stringify({ status: "authenticated", scram: "v=abc", user }), { chunked: true, gzip: true })],
    ],
    { mess: true, mss: 33, cisn: 0xfffffff0 },
  );
  const r = eavesdrop(pcapFile([...a, ...b]));
  assert.equal(r.connections.length, 2);
  for (const c of r.connections) {
    assert.deepEqual(c.gaps, []);
    assert.deepEqual(c.http.errors, []);
    assert.ok(c.login);
  }
  assert.equal(r.sealed.clearRequests, 4);
  assert.equal(r.sealed.first + r.sealed.second + r.sealed.replies, 0);
  assert.equal(r.transcripts.length, 2);
  assert.deepEqual(r.transcripts.map((t) => t.user), [user, user]);
  const cracked = crack(r.transcripts, [...WORDS, "not-this", password.toUpperCase()]);
  assert.equal(cracked.length, 1, "only the good login's password is in the list");
  assert.equal(cracked[0].user, user);
  assert.equal(cracked[0].password, password);
  assert.equal(cracked[0].iterations, 4100);
  assert.equal(crack(r.transcripts, ["not in the list"]).length, 1, "the failed login's proof is its own password's");
  assert.ok(r.connections.every((c) => userNameHits(c, user).some((h) => h.form === "saslname")));
});

test("SCRAM hidden in base64 or in a WebSocket message is still found", () => {
  const l = clearLogin({ user: "bob", password: "dragon" });
  const hidden = Buffer.from(JSON.stringify({ blob: Buffer.from(l.clientFirst).toString("base64") }));
  const text = Buffer.from(JSON.stringify({ x: [l.serverFirst] }));
  const key = randomBytes(4);
  const fin = Buffer.from(l.clientFinal);
  const masked = Buffer.concat([Buffer.from([0x81, 0x80 | 126, fin.length >> 8, fin.length & 0xff]), key, Buffer.from(fin.map((x, i) => x ^ key[i & 3]))]);
  const conn = connection([
    [true, request("POST", "/x", hidden.toString())],
    [false, response(200, text.toString())],
    [true, request("GET", "/ws", "", "Connection: Upgrade\r\nUpgrade: websocket\r\n")],
    [false, Buffer.from("HTTP/1.1 101 Switching Protocols\r\n\r\n")],
    [true, masked],
  ]);
  const r = eavesdrop(pcapFile(conn));
  assert.equal(r.transcripts.length, 1);
  assert.match(r.found.find((m) => m.kind === "client-first")?.where ?? "", /decoded from base64/);
  assert.match(r.found.find((m) => m.kind === "client-final")?.where ?? "", /WebSocket client message/);
  assert.equal(crack(r.transcripts, WORDS)[0]?.password, "dragon");
});

test("a synthetic sealed login gives the eavesdropper nothing", () => {
  // The sealed exchange of docs/protocol.md §4: request 1 sealed to the
  // server key with HPKE, the rest boxed under a key the eavesdropper lacks.
  const user = "sealed-user";
  const password = "trustno1";
  const l = clearLogin({ user, password });
  const pk = x25519.getPublicKey(x25519.utils.randomSecretKey());
  const pad = (o) => {
    const s = JSON.stringify(o);
    return JSON.stringify({ ...o, pad: " ".repeat((64 - ((s.length + 10) % 64)) % 64) });
  };
  const inner1 = Buffer.from(pad({ scram: l.clientFirst }));
  const s1 = seal({ pkR: pk, info: Buffer.from("wsgate-v1 login"), aad: new Uint8Array(0), pt: inner1 });
  const exchangeKey = randomBytes(32);
  const box = (m, inner) => {
    const nonce = Buffer.alloc(12);
    nonce[11] = m;
    const c = createCipheriv("aes-256-gcm", exchangeKey, nonce);
    const ct = Buffer.concat([c.update(JSON.stringify(inner)), c.final(), c.getAuthTag()]);
    return ct.toString("base64url");
  };
  const sid = randomBytes(16).toString("base64url");
  const kid = randomBytes(8).toString("base64url");
  const conn = connection(
    [
      [true, request("PUT", "/auth/session", JSON.stringify({ kid, enc: Buffer.from(s1.enc).toString("base64url"), ct: Buffer.from(s1.ct).toString("base64url") }))],
      [false, response(401, JSON.stringify({ status: "unauthenticated", sid, ct: box(1, { scram: l.serverFirst, ip: "127.0.0.1" }) }))],
      [true, request("PUT", "/auth/session", JSON.stringify({ sid, ct: box(2, { scram: l.clientFinal }) }))],
      [false, response(200, JSON.stringify({ status: "authenticated", ct: box(3, { scram: "v=abc", session: sid, user, expires_in: 60 }) }), { chunked: true })],
    ],
    { mess: true },
  );
  const r = eavesdrop(pcapFile(conn));
  assert.equal(r.connections.length, 1);
  assert.deepEqual(r.connections[0].http.errors, []);
  assert.deepEqual({ first: r.sealed.first, second: r.sealed.second, replies: r.sealed.replies, clear: r.sealed.clearRequests + r.sealed.clearReplies }, { first: 1, second: 1, replies: 2, clear: 0 });
  assert.deepEqual(r.found, []);
  assert.deepEqual(r.transcripts, []);
  assert.deepEqual(crack(r.transcripts, [...WORDS, password]), []);
  assert.deepEqual(userNameHits(r.connections[0], user), []);
});

// ---------------------------------------------------------------------------
// The committed capture of a real clear v1 login (see fixtures/README.md).

const FIXTURE = join(FIXTURES, "v1-clear-login.pcap");
const FIXTURE_WORDS = join(FIXTURES, "v1-clear-login.words");
const FIXTURE_USER = "fixture-user";
const FIXTURE_PASSWORD = "Tr0ub4dor&3";

test("the recorded clear v1 browser login is cracked", () => {
  assert.ok(existsSync(FIXTURE), `${FIXTURE} is missing`);
  const r = eavesdrop(readFileSync(FIXTURE));
  for (const c of r.connections) assert.deepEqual(c.http.errors, [], c.label);
  const login = r.connections.filter((c) => c.login);
  assert.ok(login.length >= 1, "the fixture holds a login connection");
  assert.ok(r.sealed.clearRequests >= 2, `clear PUT /auth/session requests: ${r.sealed.clearRequests}`);
  assert.equal(r.sealed.first + r.sealed.second, 0, "the fixture is a clear (pre-sealing) login");
  for (const kind of ["client-first", "server-first", "client-final"]) assert.ok(r.found.some((m) => m.kind === kind), `a ${kind} message is found in the fixture`);
  assert.ok(r.transcripts.length >= 1);
  assert.ok(r.transcripts.every((t) => t.user === FIXTURE_USER));
  assert.ok(r.transcripts.every((t) => t.iterations === 4096), "the fixture's user was made with --iterations 4096");
  const words = readWords(FIXTURE_WORDS);
  assert.ok(words.length >= 50 && words.length <= 200, `the word list has ${words.length} words`);
  assert.ok(words.includes(FIXTURE_PASSWORD));
  const cracked = crack(r.transcripts, words);
  assert.ok(cracked.length >= 1, "the dictionary attack recovers the password");
  for (const x of cracked) {
    assert.equal(x.user, FIXTURE_USER);
    assert.equal(x.password, FIXTURE_PASSWORD);
  }
  assert.ok(login.some((c) => userNameHits(c, FIXTURE_USER).length > 0), "the user name is seen in a login connection");
  // Without the password in the list, nothing.
  assert.deepEqual(crack(r.transcripts, words.filter((w) => w !== FIXTURE_PASSWORD)), []);
});
