// An in-memory wsgate gateway for unit-testing the session logic of sm.js
// without the Rust binary: a fetch() for /auth/key and /auth/session (the
// sealed login of docs/protocol.md §4.1) and a WebSocket class, both wired to
// the same state. Its crypto is Node's own (OpenSSL) for SCRAM, HKDF and
// AES-GCM, and @hpke/core for opening the sealed request 1 (with its Export)
// and KEY_INIT, so it also cross-checks sm.js against independent
// implementations of every step.
//
// Channels named `hist.*` or `secret.hist.*` keep history (docs/protocol.md
// §6.5): a stream with an epoch and offsets, a ring of the last
// `historySize` events, EVENT_AT, SUBSCRIBE with `since` (replay or
// `recovered: false`), RESYNC; `secret.*` channels are sensitive.
//
// Channels named `room.*`, `secret.room.*`, `hist.room.*` (history too),
// `secret.hist.room.*` or `forbidden.room` have presence
// (docs/protocol.md §6.6): PRESENCE answers the users with a connection
// subscribed (this gateway's connections, grouped by their session's user,
// plus simulated users of other connections or nodes that tests add with
// `presenceJoin` / `presenceLeave`), cut at `maxPresenceList` with
// `truncated: true`; a SUBSCRIBE with `"presence_events": true` gets
// PRESENCE_EVENT `{"join"}` / `{"leave"}` whenever a user starts or stops
// being present (not its own connection's join). PRESENCE on another channel
// is `not_found`, on `forbidden.room` `forbidden`, on `secret.*` without ENC
// `encryption_required`.
import * as nc from "node:crypto";
import { x25519 } from "@noble/curves/ed25519.js";
import { Aes256Gcm, CipherSuite, DhkemX25519HkdfSha256, HkdfSha256 } from "@hpke/core";
import { webCryptoBackend } from "../src/crypto/webcrypto.js";

const loginSuite = new CipherSuite({ kem: new DhkemX25519HkdfSha256(), kdf: new HkdfSha256(), aead: new Aes256Gcm() });

const te = new TextEncoder();
const td = new TextDecoder();
const b64u = (b) => Buffer.from(b).toString("base64url");
const hmac = (k, m) => nc.createHmac("sha256", k).update(m).digest();
const sha = (m) => nc.createHash("sha256").update(m).digest();

function header(type, flags, id, name) {
  const n = Buffer.from(name, "utf8");
  const h = Buffer.alloc(8 + n.length);
  h[0] = type;
  h[1] = flags;
  h.writeUInt32BE(id, 2);
  h.writeUInt16BE(n.length, 6);
  n.copy(h, 8);
  return h;
}

/** Flips one bit in the middle of a b64u ciphertext. */
function flip(ctB64u) {
  const b = Buffer.from(ctB64u, "base64url");
  b[b.length >> 1] ^= 1;
  return b.toString("base64url");
}

function nonce(seq) {
  const n = Buffer.alloc(12);
  n.writeBigUInt64BE(BigInt(seq), 4);
  return n;
}

function gcmSeal(key, seq, aad, pt) {
  const c = nc.createCipheriv("aes-256-gcm", key, nonce(seq));
  c.setAAD(aad);
  return Buffer.concat([c.update(pt), c.final(), c.getAuthTag()]);
}

function gcmOpen(key, seq, aad, ct) {
  const d = nc.createDecipheriv("aes-256-gcm", key, nonce(seq));
  d.setAAD(aad);
  d.setAuthTag(ct.subarray(ct.length - 16));
  return Buffer.concat([d.update(ct.subarray(0, ct.length - 16)), d.final()]);
}

/** box(m, inner) of the sealed login: AES-256-GCM, nonce = 11 zero bytes || m, aad empty. */
function boxNonce(m) {
  const n = Buffer.alloc(12);
  n[11] = m;
  return n;
}
export function sealLoginBox(key, m, inner) {
  const c = nc.createCipheriv("aes-256-gcm", key, boxNonce(m));
  return Buffer.concat([c.update(Buffer.from(JSON.stringify(inner))), c.final(), c.getAuthTag()]).toString("base64url");
}
export function openLoginBox(key, m, ct) {
  const b = Buffer.from(ct, "base64url");
  if (b.length < 16) throw new Error("box too short");
  const d = nc.createDecipheriv("aes-256-gcm", key, boxNonce(m));
  d.setAuthTag(b.subarray(b.length - 16));
  return JSON.parse(Buffer.concat([d.update(b.subarray(0, b.length - 16)), d.final()]).toString("utf8"));
}

export function sealServerFrame(key, seq, type, flags, id, name, pt) {
  const h = header(type, flags, id, name);
  if (flags & 1) return Buffer.concat([h, gcmSeal(key, seq, h, pt)]);
  return Buffer.concat([h, pt, gcmSeal(key, seq, Buffer.concat([h, pt]), Buffer.alloc(0))]);
}

export function openClientFrame(key, seq, wire) {
  const b = Buffer.from(wire);
  const type = b[0];
  const flags = b[1];
  const id = b.readUInt32BE(2);
  const nlen = b.readUInt16BE(6);
  const h = b.subarray(0, 8 + nlen);
  const name = b.subarray(8, 8 + nlen).toString("utf8");
  const body = b.subarray(8 + nlen);
  let pt;
  if (flags & 1) pt = gcmOpen(key, seq, h, body);
  else {
    pt = body.subarray(0, body.length - 16);
    gcmOpen(key, seq, Buffer.concat([h, pt]), body.subarray(body.length - 16));
  }
  return { type, flags, id, name, pt };
}

export class MockGateway {
  constructor({ users = { demo: "wsgate-demo" }, iterations = 4096 } = {}) {
    this.sk = x25519.utils.randomSecretKey();
    this.pk = x25519.getPublicKey(this.sk);
    this.kid = b64u(sha(this.pk).subarray(0, 8));
    this.fp = b64u(sha(this.pk));
    this.ip = "127.0.0.1";
    this.users = new Map();
    for (const [name, pw] of Object.entries(users)) this.setUser(name, pw, iterations);
    this.exchanges = new Map();
    this.sessions = new Map();
    this.conns = new Set();
    this.down = false;
    this.log = [];
    this.maxInFlightSeen = 0;
    this.badServerSignature = false;
    this.rateLimited = false;
    this.sessionLifetime = 3600;
    this.tamperNextResponse = false;
    this.keyInits = 0;
    this.fault = null;
    this.faultTimes = 0;
    this.firstRequests = 0;
    this.loginBodies = [];
    /** Events each history channel keeps. */
    this.historySize = 5;
    /** channel → { epoch, offset, ring: [{ offset, data }] } */
    this.streams = new Map();
    /** Replays this many kept events before `since` too (a seam the client must dedupe). */
    this.replayOverlap = 0;
    /** [channel, SUBSCRIBE body as text] for every SUBSCRIBE received */
    this.subscribeBodies = [];
    /** presence channel → Map(user → connections) of simulated users (other connections, other nodes) */
    this.presenceOthers = new Map();
    /** Longest presence list answered; longer ones are cut and say `truncated: true`. */
    this.maxPresenceList = Infinity;
    /** When a string: the body of every PRESENCE answer instead of the list. */
    this.presenceReply = null;
  }

  isPresence(channel) {
    return /^(secret\.)?(hist\.)?room\./.test(channel) || channel === "forbidden.room";
  }

  /** channel → Map(user → connections subscribed), this gateway's and the simulated ones. */
  presenceUsers(channel) {
    const users = new Map(this.presenceOthers.get(channel) ?? []);
    for (const c of this.conns) if (c.session && c.subs.has(channel)) users.set(c.session.user, (users.get(c.session.user) ?? 0) + 1);
    return users;
  }

  /** The PRESENCE answer: sorted by user, cut at maxPresenceList. */
  presenceList(channel) {
    const all = [...this.presenceUsers(channel)].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).map(([user, connections]) => ({ user, connections }));
    if (all.length <= this.maxPresenceList) return { users: all };
    return { users: all.slice(0, this.maxPresenceList), truncated: true };
  }

  /**
   * Runs `change`, then sends the joins and leaves it caused to the
   * connections subscribed with presence events (except `except`).
   */
  presenceChange(channel, change, except = null) {
    if (!this.isPresence(channel)) return change();
    const before = this.presenceUsers(channel);
    const result = change();
    const after = this.presenceUsers(channel);
    const events = [];
    for (const u of before.keys()) if (!after.has(u)) events.push({ leave: u });
    for (const u of after.keys()) if (!before.has(u)) events.push({ join: u });
    for (const e of events) this.sendPresenceEvent(channel, JSON.stringify(e), except);
    return result;
  }

  /** A PRESENCE_EVENT with any body to the connections subscribed to `channel` with presence events. */
  sendPresenceEvent(channel, body, except = null) {
    for (const c of this.conns) {
      if (c === except || !c.subs.has(channel) || !c.presenceEvents.has(channel)) continue;
      c.sendFrame(0x27, c.subs.get(channel) ? 1 : 0, 0, channel, Buffer.from(body));
    }
  }

  /** A simulated connection of `user` (elsewhere in the fleet) subscribes to `channel`. */
  presenceJoin(channel, user) {
    this.presenceChange(channel, () => {
      const m = this.presenceOthers.get(channel) ?? new Map();
      m.set(user, (m.get(user) ?? 0) + 1);
      this.presenceOthers.set(channel, m);
    });
  }

  /** One simulated connection of `user` leaves `channel`. */
  presenceLeave(channel, user) {
    this.presenceChange(channel, () => {
      const m = this.presenceOthers.get(channel);
      if (!m || !m.has(user)) return;
      if (m.get(user) > 1) m.set(user, m.get(user) - 1);
      else m.delete(user);
    });
  }

  isHistory(channel) {
    return /^(secret\.)?hist\./.test(channel);
  }

  stream(channel) {
    let st = this.streams.get(channel);
    if (!st) {
      st = { epoch: b64u(nc.randomBytes(8)), offset: 0, ring: [] };
      this.streams.set(channel, st);
    }
    return st;
  }

  /** Sends a frame to every connection subscribed to `channel` (ENC iff sensitive). */
  toSubscribers(channel, type, body) {
    for (const c of this.conns) if (c.subs.has(channel)) c.sendFrame(type, c.subs.get(channel) ? 1 : 0, 0, channel, body);
  }

  /** EVENT_AT with any offset (duplicates, skips): u64 BE offset || data. */
  sendEventAt(channel, offset, data) {
    this.toSubscribers(channel, 0x24, eventAtBody(offset, Buffer.from(data)));
  }

  /** RESYNC with the stream's position (or the one given). */
  resync(channel, pos) {
    const st = this.stream(channel);
    this.toSubscribers(channel, 0x25, Buffer.from(JSON.stringify(pos ?? { epoch: st.epoch, offset: st.offset })));
  }

  /** The stream's history is lost: a new epoch from offset 0; `announce` sends RESYNC to subscribers. */
  newEpoch(channel, { announce = false } = {}) {
    const st = this.stream(channel);
    st.epoch = b64u(nc.randomBytes(8));
    st.offset = 0;
    st.ring = [];
    if (announce) this.resync(channel);
    return st.epoch;
  }

  /**
   * Sealed-login fault injection, for the next `times` requests it applies
   * to. Request 1: "reply1" flips a bit of box 1; "badSeal" answers 400
   * bad_seal; "clearV1" answers in the old clear v1 shape. Request 2:
   * "reply2" flips a bit of box 3; "clearFailure2" refuses in clear with
   * e=invalid-proof; "boxedOtherError" refuses with box(3, e=other-error).
   * Boxes that open but have the wrong inner: "reply1NoIp" (no ip),
   * "reply2NoSession" (no session), "reply2Array" (a JSON array).
   * Either: "unavailable" answers 503.
   */
  inject(kind, times = 1) {
    this.fault = kind;
    this.faultTimes = times;
  }

  _takeFault(kinds) {
    if (this.faultTimes <= 0 || !kinds.includes(this.fault)) return null;
    this.faultTimes--;
    return this.fault;
  }

  /** A new server key; the old one is no longer accepted. */
  rotateKey() {
    this.sk = x25519.utils.randomSecretKey();
    this.pk = x25519.getPublicKey(this.sk);
    this.kid = b64u(sha(this.pk).subarray(0, 8));
    this.fp = b64u(sha(this.pk));
  }

  setUser(name, password, iterations = 4096) {
    const salt = nc.randomBytes(16);
    const salted = nc.pbkdf2Sync(Buffer.from(password.normalize("NFKC")), salt, iterations, 32, "sha256");
    const clientKey = hmac(salted, "Client Key");
    this.users.set(name, { salt, iterations, storedKey: sha(clientKey), serverKey: hmac(salted, "Server Key") });
  }

  /** fetch() implementation. */
  fetch = async (url, init = {}) => {
    if (this.down) throw new TypeError("fetch failed");
    const u = new URL(url);
    const json = (status, body, headers = {}) =>
      new Response(JSON.stringify(body), { status, headers: { "Content-Type": "application/json", ...headers } });
    if (u.pathname === "/auth/key" && (init.method ?? "GET") === "GET") {
      return json(200, { keys: [{ kid: this.kid, kem_id: 32, kdf_id: 1, aead_id: 2, pk: b64u(this.pk) }] });
    }
    if (u.pathname !== "/auth/session" || init.method !== "PUT") return json(404, { error: "not found" });
    if (this.rateLimited) return json(429, { status: "rate_limited" }, { "Retry-After": "42" });
    let body;
    try {
      body = JSON.parse(init.body);
    } catch {
      return json(400, { error: "bad json" });
    }
    const www = { "WWW-Authenticate": "wsgate-v1" };
    const fail = (e) => json(401, { status: "failed", scram: `e=${e}` }, www);
    this.loginBodies.push(init.body);
    if (this._takeFault(["unavailable"])) return json(503, { status: "unavailable", message: "state store down" }, { "Retry-After": "1" });
    if (!("sid" in body)) {
      this.firstRequests++;
      const fault = this._takeFault(["reply1", "badSeal", "clearV1", "reply1NoIp"]);
      if ("scram" in body && !("ct" in body)) return json(400, { status: "failed", error: "sealed_login_required" });
      const badSeal = () => json(400, { status: "failed", error: "bad_seal" });
      if (fault === "badSeal" || body.kid !== this.kid || typeof body.enc !== "string" || typeof body.ct !== "string") return badSeal();
      const enc = Buffer.from(body.enc, "base64url");
      if (enc.length !== 32 || enc.toString("base64url") !== body.enc) return badSeal();
      let inner;
      let loginKey;
      try {
        const recipientKey = await loginSuite.kem.importKey("raw", Uint8Array.from(this.sk).buffer, false);
        const ctx = await loginSuite.createRecipientContext({ recipientKey, enc: Uint8Array.from(enc).buffer, info: te.encode("wsgate-v1 login").buffer });
        const pt = Buffer.from(await ctx.open(Uint8Array.from(Buffer.from(body.ct, "base64url")).buffer));
        loginKey = Buffer.from(await ctx.export(te.encode("wsgate-v1 login key").buffer, 32));
        this.log.push(["request-1-plaintext-length", pt.length]);
        try {
          inner = JSON.parse(pt.toString("utf8"));
        } catch {
          return fail("invalid-encoding");
        }
      } catch {
        return badSeal();
      }
      const m = typeof inner?.scram === "string" ? /^p=wsgate-v1,,(n=([^,]*),r=([\x21-\x2b\x2d-\x7e]+))$/.exec(inner.scram) : null;
      if (!m) return fail("invalid-encoding");
      const user = m[2].replace(/=2C/g, ",").replace(/=3D/g, "=");
      const rec = this.users.get(user) ?? { salt: nc.randomBytes(16), iterations: 4096, storedKey: Buffer.alloc(32), serverKey: Buffer.alloc(32) };
      const snonce = m[3] + b64u(nc.randomBytes(18));
      const serverFirst = `r=${snonce},s=${rec.salt.toString("base64")},i=${rec.iterations}`;
      const sidRaw = nc.randomBytes(16);
      const sid = b64u(sidRaw);
      if (fault === "clearV1") return json(401, { status: "unauthenticated", sid, scram: serverFirst, ip: this.ip }, www);
      const exchangeKey = Buffer.from(nc.hkdfSync("sha256", loginKey, sidRaw, "wsgate-v1 login exchange", 32));
      this.exchanges.set(sid, { user, rec, bare: m[1], serverFirst, snonce, ip: this.ip, fp: this.fp, exchangeKey });
      let ct = sealLoginBox(exchangeKey, 1, fault === "reply1NoIp" ? { scram: serverFirst } : { scram: serverFirst, ip: this.ip });
      if (fault === "reply1") ct = flip(ct);
      return json(401, { status: "unauthenticated", sid, ct }, www);
    }
    const ex = typeof body.sid === "string" ? this.exchanges.get(body.sid) : undefined;
    if (ex) this.exchanges.delete(body.sid);
    if (!ex) return fail("other-error");
    const fault = this._takeFault(["reply2", "clearFailure2", "boxedOtherError", "reply2NoSession", "reply2Array"]);
    if (fault === "clearFailure2") return fail("invalid-proof");
    const boxed = (status, st, inner) => {
      let ct = sealLoginBox(ex.exchangeKey, 3, inner);
      if (fault === "reply2") ct = flip(ct);
      return json(status, { status: st, ct }, status === 401 ? www : {});
    };
    const sfail = (e) => boxed(401, "failed", { scram: `e=${e}` });
    if (fault === "boxedOtherError") return sfail("other-error");
    let inner;
    try {
      inner = openLoginBox(ex.exchangeKey, 2, body.ct);
    } catch {
      return sfail("invalid-encoding");
    }
    const m = typeof inner?.scram === "string" ? /^(c=([^,]*),r=([^,]*)),p=([^,]*)$/.exec(inner.scram) : null;
    if (!m) return sfail("invalid-encoding");
    if (m[3] !== ex.snonce) return sfail("other-error");
    const cb = Buffer.from(m[2], "base64").toString("utf8");
    if (cb !== `p=wsgate-v1,,ip=${ex.ip};key=${ex.fp}` || this.ip !== ex.ip) return sfail("channel-bindings-dont-match");
    const am = `${ex.bare},${ex.serverFirst},${m[1]}`;
    const proof = Buffer.from(m[4], "base64");
    const sig = hmac(ex.rec.storedKey, am);
    const clientKey = Buffer.alloc(32);
    for (let i = 0; i < 32; i++) clientKey[i] = proof[i] ^ sig[i];
    if (proof.length !== 32 || !nc.timingSafeEqual(sha(clientKey), ex.rec.storedKey)) return sfail("invalid-proof");
    const serverSig = hmac(ex.rec.serverKey, am);
    if (this.badServerSignature) serverSig[0] ^= 1;
    const session = b64u(nc.randomBytes(16));
    this.sessions.set(session, {
      user: ex.user,
      ip: ex.ip,
      sessionKey: hmac(clientKey, Buffer.concat([Buffer.from("wsgate-v1 session"), Buffer.from(am)])),
      expiresAt: Date.now() + this.sessionLifetime * 1000,
    });
    const ok = { scram: `v=${serverSig.toString("base64")}`, session, user: ex.user, expires_in: this.sessionLifetime };
    if (fault === "reply2NoSession") delete ok.session;
    return boxed(200, "authenticated", fault === "reply2Array" ? [ok] : ok);
  };

  /** The WebSocket class to hand to connect({ WebSocket }). */
  get WebSocket() {
    const gw = this;
    return class FakeWebSocket {
      constructor(url, protocol) {
        this.url = url;
        this.protocol = "";
        this.binaryType = "blob";
        this.readyState = 0;
        this.onopen = this.onmessage = this.onclose = this.onerror = null;
        this._peer = null;
        setTimeout(() => gw._accept(this, protocol), 0);
      }
      send(data) {
        if (this.readyState !== 1) return;
        const bytes = new Uint8Array(data).slice();
        setTimeout(() => this._peer && this._peer.onClientMessage(bytes), 0);
      }
      close(code = 1005, reason = "") {
        if (this.readyState >= 2) return;
        this.readyState = 2;
        setTimeout(() => {
          if (this._peer) this._peer.onClientClose(code, reason);
          this._closed(code, reason);
        }, 0);
      }
      _deliver(bytes) {
        if (this.readyState !== 1) return;
        const ab = new Uint8Array(bytes).slice().buffer;
        setTimeout(() => this.onmessage && this.onmessage({ data: ab }), 0);
      }
      _closed(code, reason) {
        if (this.readyState === 3) return;
        this.readyState = 3;
        this._peer = null;
        setTimeout(() => this.onclose && this.onclose({ code, reason, wasClean: code !== 1006 }), 0);
      }
    };
  }

  _accept(ws, protocol) {
    if (this.down) {
      ws._closed(1006, "");
      return;
    }
    if (protocol !== "wsgate.v1") {
      ws._closed(1002, "");
      return;
    }
    const conn = new MockConn(this, ws);
    ws._peer = conn;
    this.conns.add(conn);
    ws.protocol = "wsgate.v1";
    ws.readyState = 1;
    setTimeout(() => {
      ws.onopen && ws.onopen({});
      conn.hello();
    }, 0);
  }

  /** Drops every connection abnormally and refuses new ones. */
  kill({ forgetSessions = false } = {}) {
    this.down = true;
    for (const c of [...this.conns]) c.drop(1006, "", { quiet: true });
    if (forgetSessions) this.sessions.clear();
  }

  revive() {
    this.down = false;
  }

  /** Publishes (as /api/publish would); on a history channel returns the new position. */
  publish(channel, data) {
    if (!this.isHistory(channel)) {
      this.toSubscribers(channel, 0x23, Buffer.from(data));
      return null;
    }
    const st = this.stream(channel);
    st.offset++;
    st.ring.push({ offset: st.offset, data: Buffer.from(data) });
    while (st.ring.length > this.historySize) st.ring.shift();
    this.sendEventAt(channel, st.offset, data);
    return { epoch: st.epoch, offset: st.offset };
  }
}

function eventAtBody(offset, data) {
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(BigInt(offset));
  return Buffer.concat([b, data]);
}

/**
 * A SUBSCRIBE body: empty → {}, `{"since": position, "presence_events": bool}`
 * (either member) → { since?, presence }, anything else → null.
 */
function parseSubscribeBody(pt) {
  if (pt.length === 0) return { presence: false };
  let j;
  try {
    j = JSON.parse(pt.toString("utf8"));
  } catch {
    return null;
  }
  if (!j || typeof j !== "object" || Array.isArray(j)) return null;
  if (j.presence_events != null && typeof j.presence_events !== "boolean") return null;
  const presence = j.presence_events === true;
  if (j.since == null) return { presence };
  const p = j.since;
  if (!p || typeof p.epoch !== "string" || !Number.isSafeInteger(p.offset) || p.offset < 0) return null;
  return { since: p, presence };
}

class MockConn {
  constructor(gw, ws) {
    this.gw = gw;
    this.ws = ws;
    this.phase = "hello";
    this.recvSeq = 0;
    this.sendSeq = 0;
    this.subs = new Map();
    /** channels this connection asked presence events for */
    this.presenceEvents = new Set();
    this.inFlight = new Set();
    this.held = new Map();
  }

  hello() {
    this.nonce = nc.randomBytes(32);
    const body = Buffer.from(JSON.stringify({ v: 1, nonce: b64u(this.nonce), ip: this.gw.ip, keys: [this.gw.kid] }));
    this.ws._deliver(Buffer.concat([header(1, 0, 0, ""), body]));
  }

  drop(code, reason = "", { quiet = false } = {}) {
    this.leave(quiet);
    this.ws._closed(code, reason);
  }

  onClientClose(code, reason) {
    this.gw.log.push(["client-close", code, reason]);
    this.leave(false);
  }

  /** The connection is gone: its users' presence goes with it (announced unless `quiet`). */
  leave(quiet) {
    if (!this.gw.conns.has(this)) return;
    if (!quiet) {
      // One change per channel: take the connection out of each in turn.
      for (const ch of [...this.subs.keys()]) if (this.gw.isPresence(ch)) this.gw.presenceChange(ch, () => this.subs.delete(ch));
    }
    this.gw.conns.delete(this);
  }

  sendFrame(type, flags, id, name, pt) {
    const wire = sealServerFrame(this.s2c, this.sendSeq++, type, flags, id, name, pt);
    if (type === 0x11 && this.gw.tamperNextResponse) {
      this.gw.tamperNextResponse = false;
      wire[wire.length - 1] ^= 1;
    }
    this.ws._deliver(wire);
  }

  respond(req, pt, err) {
    this.inFlight.delete(req.id);
    const flags = (req.flags & 1) | (err ? 2 : 0);
    this.sendFrame(0x11, flags, req.id, "", err ? Buffer.from(JSON.stringify(err)) : pt);
  }

  async onClientMessage(bytes) {
    try {
      if (this.phase === "hello") return await this.onKeyInit(Buffer.from(bytes));
      if (this.phase !== "open") return;
      const f = openClientFrame(this.c2s, this.recvSeq++, bytes);
      this.gw.log.push(["frame", f.type, f.flags, f.id, f.name]);
      if (this.inFlight.has(f.id)) return this.drop(4400, "id in flight");
      this.inFlight.add(f.id);
      this.gw.maxInFlightSeen = Math.max(this.gw.maxInFlightSeen, this.inFlight.size);
      this.handle(f);
    } catch (e) {
      this.gw.log.push(["violation", String(e)]);
      this.drop(4400, "verification failed");
    }
  }

  async onKeyInit(b) {
    this.phase = "keyinit";
    const nlen = b.readUInt16BE(6);
    const sid = b.subarray(8, 8 + nlen).toString("utf8");
    if (b[0] !== 2 || b[1] !== 0 || b.readUInt32BE(2) !== 0) return this.drop(4400, "expected KEY_INIT");
    const j = JSON.parse(b.subarray(8 + nlen).toString("utf8"));
    const s = this.gw.sessions.get(sid);
    if (!s || s.expiresAt < Date.now()) return this.drop(4401, "unknown session");
    if (s.ip !== this.gw.ip) return this.drop(4401, "ip mismatch");
    if (j.kid !== this.gw.kid) return this.drop(4401, "kid");
    let dp;
    try {
      dp = await webCryptoBackend.hpkeOpen({
        skR: this.gw.sk,
        enc: Buffer.from(j.enc, "base64url"),
        ct: Buffer.from(j.ct, "base64url"),
        info: Buffer.concat([Buffer.from("wsgate-v1 key"), Buffer.from([0]), this.nonce]),
        aad: new Uint8Array(0),
        psk: s.sessionKey,
        pskId: te.encode(sid),
      });
    } catch {
      return this.drop(4401, "open failed");
    }
    this.gw.keyInits++;
    this.sid = sid;
    this.session = s;
    this.dp = Buffer.from(dp);
    this.c2s = Buffer.from(nc.hkdfSync("sha256", dp, this.nonce, "wsgate-v1 c2s", 32));
    this.s2c = Buffer.from(nc.hkdfSync("sha256", dp, this.nonce, "wsgate-v1 s2c", 32));
    this.phase = "open";
    this.sendFrame(0x03, 1, 0, "", Buffer.from(JSON.stringify({ user: s.user, expires_in: Math.floor((s.expiresAt - Date.now()) / 1000) })));
  }

  handle(f) {
    const enc = (f.flags & 1) !== 0;
    switch (f.type) {
      case 0x10: {
        if (f.name === "sys.echo") return this.respond(f, f.pt);
        if (f.name === "sys.whoami") {
          return this.respond(f, Buffer.from(JSON.stringify({ user: this.session.user, ip: this.gw.ip, session_expires_in: 3000 })));
        }
        if (f.name === "secret.echo") return enc ? this.respond(f, f.pt) : this.respond(f, null, { code: "encryption_required", message: "route secret.echo is sensitive" });
        if (f.name === "slow") {
          const ms = Number(td.decode(f.pt)) || 60_000;
          setTimeout(() => this.gw.conns.has(this) && this.respond(f, Buffer.from("late")), ms);
          return;
        }
        if (f.name === "hold") {
          this.held.set(f.id, f);
          return;
        }
        return this.respond(f, null, { code: "not_found", message: `no route ${f.name}` });
      }
      case 0x20: {
        if (f.name.startsWith("secret.") && !enc) return this.respond(f, null, { code: "encryption_required", message: "sensitive channel" });
        if (f.name === "forbidden" || f.name === "forbidden.room") return this.respond(f, null, { code: "forbidden", message: "no" });
        this.gw.subscribeBodies.push([f.name, f.pt.toString("utf8")]);
        const req = parseSubscribeBody(f.pt);
        if (!req) return this.respond(f, null, { code: "bad_request", message: "bad SUBSCRIBE body" });
        if (req.presence) this.presenceEvents.add(f.name);
        else this.presenceEvents.delete(f.name);
        // The answer (and a replay) first, then the others hear of the join.
        const was = this.subs.has(f.name);
        const join = () => {
          if (!was) this.gw.presenceChange(f.name, () => this.subs.set(f.name, f.name.startsWith("secret.")), this);
        };
        if (!this.gw.isHistory(f.name)) {
          this.respond(f, Buffer.alloc(0));
          return join();
        }
        // (Subscribed before the answer, as far as other events go; the
        // others hear of the join after the replay.)
        const others = was ? null : this.gw.presenceUsers(f.name);
        this.subs.set(f.name, f.name.startsWith("secret."));
        // docs/protocol.md §6.5: replay iff `since` is in this epoch and
        // every event after it is still kept.
        const st = this.gw.stream(f.name);
        const since = req.since;
        const oldest = st.ring.length > 0 ? st.ring[0].offset : st.offset + 1;
        const recovered = !!since && since.epoch === st.epoch && since.offset <= st.offset && since.offset >= oldest - 1;
        this.respond(f, Buffer.from(JSON.stringify({ epoch: st.epoch, offset: st.offset, recovered })));
        if (recovered) {
          const from = since.offset - this.gw.replayOverlap;
          for (const e of st.ring) if (e.offset > from) this.sendFrame(0x24, enc ? 1 : 0, 0, f.name, eventAtBody(e.offset, e.data));
        }
        if (others && this.gw.isPresence(f.name) && !others.has(this.session.user)) this.gw.sendPresenceEvent(f.name, JSON.stringify({ join: this.session.user }), this);
        return;
      }
      case 0x22: {
        if (f.name.startsWith("secret.") && !enc) return this.respond(f, null, { code: "encryption_required", message: "sensitive channel" });
        if (f.name === "forbidden") return this.respond(f, null, { code: "forbidden", message: "no" });
        const pos = this.gw.publish(f.name, f.pt);
        return this.respond(f, pos ? Buffer.from(JSON.stringify(pos)) : Buffer.alloc(0));
      }
      case 0x21:
        this.presenceEvents.delete(f.name);
        this.gw.presenceChange(f.name, () => this.subs.delete(f.name));
        return this.respond(f, Buffer.alloc(0));
      case 0x26: {
        if (!this.gw.isPresence(f.name)) return this.respond(f, null, { code: "not_found", message: `channel ${f.name} has no presence` });
        if (f.name.startsWith("secret.") && !enc) return this.respond(f, null, { code: "encryption_required", message: "sensitive channel" });
        if (f.name.startsWith("forbidden")) return this.respond(f, null, { code: "forbidden", message: "no" });
        if (this.gw.presenceReply !== null) return this.respond(f, Buffer.from(this.gw.presenceReply));
        return this.respond(f, Buffer.from(JSON.stringify(this.gw.presenceList(f.name))));
      }
      case 0x31: {
        this.respond(f, Buffer.alloc(0));
        this.gw.sessions.delete(this.sid);
        for (const c of [...this.gw.conns]) if (c.sid === this.sid) c.drop(4001, "logged out");
        return;
      }
      default:
        return this.drop(4400, "unexpected type");
    }
  }

  releaseHeld() {
    for (const f of this.held.values()) this.respond(f, Buffer.from("released"));
    this.held.clear();
  }
}
