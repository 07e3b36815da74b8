// @ts-check
// The session: login, the WebSocket with key establishment, protected
// requests, subscriptions (with channel continuity, docs/protocol.md §6.5,
// and presence, §6.6), reconnection, logout.

import { fromUtf8, utf8 } from "./bytes.js";
import { selectBackend } from "./crypto/index.js";
import { FLAG_ENC, FLAG_ERR, MAX_NAME_LEN, T, TYPE_NAMES, decodeEnvelope, encodeEnvelope, openFrame, sealFrame } from "./envelope.js";
import { WsgateError, serverError } from "./errors.js";
import { deriveTrafficKeys, makeKeyInit, parseHello } from "./keyinit.js";
import { forgetCredentials, login, makeCredentials } from "./login.js";

/** @typedef {import("./crypto/index.js").Backend} Backend */
/** @typedef {import("./crypto/index.js").Aead} Aead */
/** @typedef {import("./login.js").LoginResult} LoginResult */

const EMPTY = new Uint8Array(0);

/* global __WSGATE_TEST_HOOKS__ */
// `testHooks` work only where `__WSGATE_TEST_HOOKS__` is undefined (the
// sources, as the unit tests run them) or true (`build.mjs --test-hooks`).
// The published bundle defines it as false, and the minifier then drops the
// code that hands out session secrets: the condition is written out at each
// use so that it folds to a constant.
const SUBPROTOCOL = "wsgate.v1";
const MAX_ID = 0xffffffff;

/**
 * @typedef {object} FrameInfo
 * @property {number} type
 * @property {string} typeName
 * @property {number} flags
 * @property {number} id
 * @property {string} name
 * @property {boolean} encrypted ENC flag set
 * @property {boolean} protected integrity-protected (everything after KEY_INIT / from KEY_ACK on)
 */

/**
 * @typedef {object} ConnectOptions
 * @property {string} username
 * @property {string} password
 * @property {string} [url] http(s) base URL of the gateway; default: the page's origin
 * @property {string | string[]} [pin] expected fingerprint(s) of the server key (b64u SHA-256)
 * @property {"auto" | "webcrypto" | "noble"} [crypto] crypto backend; "auto" uses Web Crypto when crypto.subtle exists
 * @property {(direction: "in" | "out", bytes: Uint8Array, info: FrameInfo | null) => void} [onFrame] sees every WebSocket message exactly as it crosses the wire
 * @property {boolean} [reconnect] reconnect after a connection loss (default true)
 * @property {number} [requestTimeout] ms, default 30000
 * @property {number} [handshakeTimeout] ms for HELLO / KEY_ACK, default 10000
 * @property {number} [httpTimeout] ms for each login HTTP request, default 30000
 * @property {number} [maxInFlight] concurrent requests on one connection, default 64
 * @property {number} [maxReconnectDelay] ms, default 10000
 * @property {number} [maxMessageSize] bytes; larger requests are refused locally with `too_large`
 *   instead of making the server close the connection (1009). Default 1 MiB, the gateway's default.
 * @property {boolean} [autoRelogin] when the server no longer knows the session (close 4401, e.g. a gateway
 *   restarted with an in-memory state store), log in again with the cached SCRAM SaltedPassword instead of
 *   ending with `session_expired` (default false). A session that was ended (4001: logout, revocation,
 *   expiry) is never renewed.
 * @property {typeof fetch} [fetch] fetch implementation (default globalThis.fetch)
 * @property {typeof WebSocket} [WebSocket] WebSocket implementation (default globalThis.WebSocket)
 * @property {boolean} [keepCredentials] keep SCRAM's SaltedPassword (never the password) in memory for the
 *   session's life, so that a changed IP or server key, or `autoRelogin`, logs in again without asking
 *   (default true). false: it is zeroed as soon as the login succeeds, and such a change ends the session.
 *   Either way it is zeroed when the session closes.
 * @property {{ onSecrets?: (s: { sessionId: string, sessionKey: Uint8Array, dynamicPassword: Uint8Array, c2sKey: Uint8Array, s2cKey: Uint8Array, helloNonce: Uint8Array }) => void }} [testHooks]
 *   For tests only, and only in a test build (`node build.mjs --test-hooks`) or the sources: exposes the
 *   session's secrets. The published bundle ignores it.
 */

/** @param {unknown} data @returns {Uint8Array} */
export function encodeData(data) {
  if (data === undefined) return EMPTY;
  if (data instanceof Uint8Array) return data;
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  if (typeof data === "string") return utf8(data);
  const json = JSON.stringify(data);
  if (json === undefined) throw new WsgateError("invalid_argument", "The request data cannot be encoded as JSON.");
  return utf8(json);
}

/**
 * The arguments of subscribe() (a Session's or a SharedSession's), checked;
 * returns the `since` position asked for, or null.
 * @param {string} channel @param {unknown} handler
 * @param {{ since?: unknown, onGap?: unknown, onRecovered?: unknown, presence?: unknown }} opts
 * @returns {Position | null}
 */
export function checkSubscribe(channel, handler, opts) {
  checkName(channel, "channel");
  if (typeof handler !== "function") throw new WsgateError("invalid_argument", "subscribe() needs a handler function.");
  let since = null;
  if (opts.since != null) {
    since = asPosition(opts.since);
    if (!since) throw new WsgateError("invalid_argument", "subscribe()'s since must be a position { epoch: <b64u string>, offset: <non-negative integer> }.");
  }
  for (const k of /** @type {const} */ (["onGap", "onRecovered", "presence"])) {
    if (opts[k] != null && typeof opts[k] !== "function") throw new WsgateError("invalid_argument", `subscribe()'s ${k} must be a function.`);
  }
  return since;
}

/** @param {string} name @param {string} what */
export function checkName(name, what) {
  if (typeof name !== "string" || name.length === 0) throw new WsgateError("invalid_argument", `The ${what} must be a non-empty string.`);
  if (utf8(name).length > MAX_NAME_LEN) throw new WsgateError("invalid_argument", `The ${what} is longer than ${MAX_NAME_LEN} bytes.`);
}

/** @param {string | undefined} url */
export function normalizeBase(url) {
  let u = url;
  if (u === undefined || u === "") {
    const loc = /** @type {any} */ (globalThis).location;
    if (!loc || !loc.origin || loc.origin === "null") throw new WsgateError("invalid_argument", "No url given and the page has no origin; pass { url: \"http://host:port\" }.");
    u = loc.origin;
  }
  let parsed;
  try {
    parsed = new URL(/** @type {string} */ (u));
  } catch {
    throw new WsgateError("invalid_argument", `Invalid url "${u}"; expected http(s)://host[:port][/path].`);
  }
  if (parsed.protocol !== "http:" && parsed.protocol !== "https:") throw new WsgateError("invalid_argument", `The url must be http:// or https://, not ${parsed.protocol}`);
  const base = `${parsed.origin}${parsed.pathname.replace(/\/+$/, "")}`;
  const ws = `${parsed.protocol === "https:" ? "wss:" : "ws:"}//${parsed.host}${parsed.pathname.replace(/\/+$/, "")}/ws`;
  return { base, ws };
}

/**
 * A WsgateError that also says whether the session can go on.
 * @param {string} code @param {string} message @param {{ fatal?: boolean, relogin?: boolean }} [how]
 */
function connError(code, message, how = {}) {
  const e = new WsgateError(code, message);
  /** @type {any} */ (e).fatal = !!how.fatal;
  /** @type {any} */ (e).relogin = !!how.relogin;
  return e;
}

/** @param {number} code @param {string} reason */
function closeCodeError(code, reason) {
  const why = reason ? ` (${reason})` : "";
  switch (code) {
    case 4001:
      return connError("session_expired", `The session ended (logged out elsewhere, revoked or expired)${why}. Log in again.`, { fatal: true });
    case 4401: {
      const e = connError("session_expired", `The server no longer accepts this session${why}. Log in again.`, { fatal: true });
      /** @type {any} */ (e).unknownSession = true;
      return e;
    }
    case 4403:
      return connError("forbidden", `The server refused this connection${why}.`, { fatal: true });
    case 4429:
      return connError("rate_limited", `The server is rate limiting this client${why}; retrying later.`);
    case 4400:
      return connError("protocol_error", `The server closed the connection for a protocol violation${why}.`);
    case 4408:
      return connError("timeout", `The server closed the connection: key establishment took too long${why}.`);
    default:
      return connError("closed", `The connection closed (code ${code})${why}.`);
  }
}

/**
 * One WebSocket connection and its key establishment.
 */
class Connection {
  /**
   * @param {Session} s
   * @param {LoginResult} lr
   */
  constructor(s, lr) {
    this.s = s;
    this.lr = lr;
    /** @type {"hello" | "keyack" | "open" | "closed"} */
    this.phase = "hello";
    this.sendSeq = 0;
    this.recvSeq = 0;
    /** @type {Aead | null} */
    this.c2s = null;
    /** @type {Aead | null} */
    this.s2c = null;
    /** @type {Promise<unknown>} */
    this.sendChain = Promise.resolve();
    /** @type {Promise<unknown>} */
    this.recvChain = Promise.resolve();
    /** @type {WebSocket | null} */
    this.ws = null;
    /** @type {((v: void) => void) | null} */
    this._resolve = null;
    /** @type {((e: Error) => void) | null} */
    this._reject = null;
    /** @type {ReturnType<typeof setTimeout> | undefined} */
    this._timer = undefined;
  }

  /** Opens the socket; resolves once KEY_ACK verified. */
  start() {
    return new Promise((resolve, reject) => {
      this._resolve = resolve;
      this._reject = reject;
      const WS = this.s._WebSocket;
      let ws;
      try {
        ws = new WS(this.s._wsUrl, SUBPROTOCOL);
      } catch (e) {
        this._fail(connError("network_error", `Could not open the WebSocket to ${this.s._wsUrl}: ${e instanceof Error ? e.message : e}`));
        return;
      }
      this.ws = ws;
      ws.binaryType = "arraybuffer";
      this._timer = setTimeout(() => {
        this._fail(connError("timeout", `No key establishment with ${this.s._wsUrl} within ${this.s._handshakeTimeout / 1000} s.`), 4408);
      }, this.s._handshakeTimeout);
      ws.onopen = () => {
        if (ws.protocol !== SUBPROTOCOL) this._fail(connError("protocol_error", `The server did not accept the ${SUBPROTOCOL} subprotocol.`), 1002);
      };
      ws.onmessage = (ev) => {
        const data = ev.data;
        this.recvChain = this.recvChain.then(() => this._onMessage(data)).catch((e) => this._violation(e));
      };
      ws.onerror = () => {};
      ws.onclose = (ev) => {
        this.recvChain = this.recvChain.then(() => this._onClose(ev.code, ev.reason || ""));
      };
    });
  }

  /**
   * Ends the handshake with an error (or, once open, tears down).
   * @param {WsgateError} err @param {number} [code]
   */
  _fail(err, code = 1000) {
    clearTimeout(this._timer);
    const wasOpen = this.phase === "open";
    if (this.phase !== "closed") {
      this.phase = "closed";
      this._closeSocket(code, err.message);
      if (wasOpen) this.s._onConnectionLost(this, err);
      else if (this._reject) this._reject(err);
    }
  }

  /** @param {number} code @param {string} reason */
  _closeSocket(code, reason) {
    const ws = this.ws;
    if (!ws) return;
    try {
      // Reasons are limited to 123 bytes.
      ws.close(code, utf8(reason).length > 120 ? "" : reason);
    } catch {
      try {
        ws.close();
      } catch {
        /* already closed */
      }
    }
  }

  /** @param {unknown} e */
  _violation(e) {
    const err =
      e instanceof WsgateError
        ? e
        : connError("protocol_error", `The server sent an invalid frame (${e instanceof Error ? e.message : String(e)}); reconnecting.`);
    this._fail(err, /** @type {any} */ (err).relogin ? 1000 : 4400);
  }

  /** @param {number} code @param {string} reason */
  _onClose(code, reason) {
    if (this.phase === "closed") return;
    this._fail(closeCodeError(code, reason), 1000);
  }

  /** @param {unknown} data */
  async _onMessage(data) {
    if (this.phase === "closed") return;
    if (!(data instanceof ArrayBuffer)) {
      if (typeof data === "string") throw connError("protocol_error", "The server sent a text frame; wsgate uses binary frames only.");
      throw connError("protocol_error", "Unexpected WebSocket message type.");
    }
    const bytes = new Uint8Array(data);
    this.s._observe("in", bytes, this.phase !== "hello");
    if (this.phase === "hello") return this._onHello(bytes);
    const frame = await openFrame(/** @type {Aead} */ (this.s2c), this.recvSeq, bytes);
    this.recvSeq++;
    if (this.phase === "keyack") return this._onKeyAck(frame);
    this.s._onFrame(this, frame);
  }

  /** @param {Uint8Array} bytes */
  async _onHello(bytes) {
    const e = decodeEnvelope(bytes);
    if (e.type !== T.HELLO || e.flags !== 0 || e.id !== 0 || e.name !== "") throw connError("protocol_error", "The server's first frame is not a HELLO.");
    const hello = parseHello(e.body);
    const lr = this.lr;
    if (hello.ip !== lr.ip) {
      throw connError("ip_changed", `Your IP address changed (login from ${lr.ip}, now ${hello.ip}); logging in again.`, { relogin: true });
    }
    if (hello.keys.length > 0 && !hello.keys.includes(lr.kid)) {
      throw connError("server_key_changed", "The server no longer accepts the key this session was bound to; logging in again.", { relogin: true });
    }
    const backend = this.s._backend;
    const ki = await makeKeyInit(backend, { pk: lr.pk, kid: lr.kid, sessionId: lr.sessionId, sessionKey: lr.sessionKey, helloNonce: hello.nonce });
    const keys = await deriveTrafficKeys(backend, ki.dynamicPassword, hello.nonce);
    this.c2s = await backend.aesGcm(keys.c2s);
    this.s2c = await backend.aesGcm(keys.s2c);
    // @ts-ignore -- defined by the bundler, or not at all
    if (typeof __WSGATE_TEST_HOOKS__ === "undefined" || __WSGATE_TEST_HOOKS__ === true) {
      const hooks = this.s._testHooks;
      if (hooks && typeof hooks.onSecrets === "function") {
        hooks.onSecrets({ sessionId: lr.sessionId, sessionKey: lr.sessionKey, dynamicPassword: ki.dynamicPassword, c2sKey: keys.c2s, s2cKey: keys.s2c, helloNonce: hello.nonce });
      }
    }
    if (this.phase !== "hello") return;
    this.phase = "keyack";
    const msg = encodeEnvelope({ type: T.KEY_INIT, name: lr.sessionId, body: utf8(ki.body) });
    this.s._observe("out", msg, false);
    /** @type {WebSocket} */ (this.ws).send(msg);
  }

  /** @param {{ type: number, flags: number, id: number, name: string, plaintext: Uint8Array }} f */
  _onKeyAck(f) {
    if (f.type !== T.KEY_ACK || f.flags !== FLAG_ENC || f.id !== 0 || f.name !== "") throw connError("protocol_error", "The server's first protected frame is not a KEY_ACK.");
    let j;
    try {
      j = JSON.parse(fromUtf8(f.plaintext));
    } catch {
      throw connError("protocol_error", "The server's KEY_ACK is not valid JSON.");
    }
    if (!j || typeof j.user !== "string" || j.user !== this.lr.user) throw connError("protocol_error", "The server's KEY_ACK names another user.");
    const exp = Number(j.expires_in);
    if (Number.isFinite(exp) && exp >= 0) this.lr.expiresAt = Date.now() + exp * 1000;
    clearTimeout(this._timer);
    this.phase = "open";
    if (this._resolve) this._resolve();
  }

  /**
   * Seals and sends a protected frame; frames leave in call order.
   * @param {{ type: number, flags: number, id: number, name: string, plaintext: Uint8Array }} f
   */
  send(f) {
    const p = this.sendChain.then(async () => {
      if (this.phase !== "open") throw new WsgateError("closed", "The connection closed before the request could be sent.");
      const seq = this.sendSeq++;
      const wire = await sealFrame(/** @type {Aead} */ (this.c2s), seq, f);
      if (this.phase !== "open") throw new WsgateError("closed", "The connection closed before the request could be sent.");
      this.s._observe("out", wire, true);
      /** @type {WebSocket} */ (this.ws).send(wire);
    });
    this.sendChain = p.catch(() => {});
    return p;
  }

  /** Closes without reporting (used by the session itself). @param {number} code @param {string} reason */
  shutdown(code, reason) {
    clearTimeout(this._timer);
    if (this.phase !== "closed") {
      const wasOpen = this.phase === "open";
      this.phase = "closed";
      this._closeSocket(code, reason);
      if (!wasOpen && this._reject) this._reject(new WsgateError("closed", reason));
    }
  }
}

/**
 * @typedef {object} Pending
 * @property {number} type
 * @property {number} flags
 * @property {string} name
 * @property {Uint8Array} body
 * @property {(v: Uint8Array) => void} resolve
 * @property {(e: Error) => void} reject
 * @property {ReturnType<typeof setTimeout> | undefined} timer
 * @property {number} timeout
 * @property {number} id
 * @property {"queued" | "sent" | "done"} state
 * @property {((body: Uint8Array) => void) | undefined} onOk runs in frame order, before any later frame
 *   is handled (a SUBSCRIBE's replayed events follow its RESPONSE at once)
 */

/**
 * A position in a channel's stream (history channels, docs/protocol.md §6.5).
 * @typedef {object} Position
 * @property {string} epoch b64u
 * @property {number} offset the number of events published in this epoch (the first event is 1)
 */

/**
 * @typedef {object} EventMeta
 * @property {string} channel
 * @property {boolean} encrypted
 * @property {number} [offset] history channels: this event's offset
 * @property {string} [epoch] history channels: the stream's epoch
 */

/** @typedef {(data: Uint8Array, meta: EventMeta) => void} EventHandler */

/**
 * @typedef {object} GapDetail
 * @property {string} channel
 * @property {"not_recovered" | "resync" | "skip"} reason not_recovered: the server could not replay
 *   since the last position (another epoch, or out of its history); resync: the server said so (RESYNC);
 *   skip: an event arrived whose offset is past the next one
 * @property {string} epoch the position events continue from (the next one is offset + 1)
 * @property {number} offset
 * @property {Position | null} previous the last position delivered before the gap (null: none)
 */

/**
 * @typedef {object} RecoveredDetail
 * @property {string} channel
 * @property {string} epoch
 * @property {number} offset the stream's position when the subscription took effect
 * @property {Position} since the position the subscription resumed from
 * @property {number} missed events replayed (offsets since.offset + 1 … offset), delivered next
 */

/**
 * A user became present on a channel (`join`) or stopped being present
 * (`leave`), docs/protocol.md §6.6.
 * @typedef {{ join: string, leave?: undefined } | { leave: string, join?: undefined }} PresenceEvent
 */

/**
 * @typedef {object} PresenceMeta
 * @property {string} channel
 * @property {boolean} encrypted the PRESENCE_EVENT was encrypted on the wire (sensitive channel)
 */

/** @typedef {(d: PresenceEvent, meta: PresenceMeta) => void} PresenceHandler */

/**
 * @typedef {object} PresenceUser
 * @property {string} user
 * @property {number} connections that user's connections subscribed to the channel, fleet-wide
 */

/**
 * @typedef {object} PresenceList
 * @property {PresenceUser[]} users sorted by user, as the server sent them
 * @property {boolean} truncated the server cut the list at its limit
 */

/**
 * @typedef {object} SubListener
 * @property {((d: GapDetail) => void) | undefined} onGap
 * @property {((d: RecoveredDetail) => void) | undefined} onRecovered
 * @property {PresenceHandler | undefined} onPresence
 */

/**
 * One per channel, shared by the handlers subscribed to it. On a history
 * channel it holds the one position this session tracks for the channel.
 * @typedef {object} Subscription
 * @property {Set<EventHandler>} handlers
 * @property {Set<SubListener>} listeners
 * @property {boolean} sensitive
 * @property {string | null} epoch the stream's epoch; null: unknown (not confirmed yet, or no history)
 * @property {number | null} offset the last offset delivered (or the stream's offset when the subscription took effect)
 * @property {Position | null} since the app's stored position, used until the server confirmed one
 * @property {boolean} confirmed the server answered the last SUBSCRIBE sent for it
 * @property {boolean} askedPresence that SUBSCRIBE asked for presence events
 */

const B64U = /^[A-Za-z0-9_-]+$/;

/** @param {unknown} j @returns {Position | null} */
export function asPosition(j) {
  if (!j || typeof j !== "object") return null;
  const { epoch, offset } = /** @type {any} */ (j);
  if (typeof epoch !== "string" || !B64U.test(epoch) || !Number.isSafeInteger(offset) || offset < 0) return null;
  return { epoch, offset };
}

/** @param {Uint8Array} bytes @returns {any} JSON, or undefined */
export function parseJson(bytes) {
  try {
    return JSON.parse(fromUtf8(bytes));
  } catch {
    return undefined;
  }
}

/** @param {Subscription} sub @returns {Position | null} */
function positionOf(sub) {
  return sub.epoch !== null && sub.offset !== null ? { epoch: sub.epoch, offset: sub.offset } : null;
}

/**
 * Moves a subscription to a position the server named; within the same
 * epoch never backwards (what was delivered stays delivered).
 * @param {Subscription} sub @param {Position} pos
 */
function advance(sub, pos) {
  if (sub.epoch === pos.epoch && sub.offset !== null) sub.offset = Math.max(sub.offset, pos.offset);
  else {
    sub.epoch = pos.epoch;
    sub.offset = pos.offset;
  }
}

/**
 * Whether any handler of the subscription asked for presence events: the
 * channel's one SUBSCRIBE asks for them then (docs/protocol.md §6.6).
 * @param {Subscription} sub
 */
function wantsPresence(sub) {
  for (const l of sub.listeners) if (l.onPresence) return true;
  return false;
}

/**
 * The SUBSCRIBE body: `{"since": position, "presence_events": true}` with
 * either member, or empty.
 * @param {Position | null} since @param {boolean} presence
 */
function subscribeBody(since, presence) {
  if (!since && !presence) return EMPTY;
  /** @type {{ since?: Position, presence_events?: true }} */
  const j = {};
  if (since) j.since = since;
  if (presence) j.presence_events = true;
  return utf8(JSON.stringify(j));
}

/** @param {unknown} j @returns {PresenceEvent | null} */
function asPresenceEvent(j) {
  if (!j || typeof j !== "object" || Array.isArray(j)) return null;
  const { join, leave } = /** @type {any} */ (j);
  if (typeof join === "string" && leave === undefined && join !== "") return { join };
  if (typeof leave === "string" && join === undefined && leave !== "") return { leave };
  return null;
}

/** @param {unknown} j @returns {PresenceList | null} */
export function asPresenceList(j) {
  if (!j || typeof j !== "object" || Array.isArray(j)) return null;
  const { users, truncated } = /** @type {any} */ (j);
  if (!Array.isArray(users) || (truncated !== undefined && typeof truncated !== "boolean")) return null;
  /** @type {PresenceUser[]} */
  const out = [];
  for (const u of users) {
    if (!u || typeof u !== "object" || typeof u.user !== "string" || !Number.isSafeInteger(u.connections) || u.connections < 0) return null;
    out.push({ user: u.user, connections: u.connections });
  }
  return { users: out, truncated: truncated === true };
}

/** What SharedSession passes to Session's constructor. */
export const SHARED = Symbol("wsgate shared session");
/** @type {ConnectOptions} */
const SHARED_SHELL = {
  username: "shared",
  password: "shared",
  url: "http://shared.invalid",
  crypto: "noble",
  keepCredentials: false,
  fetch: () => Promise.reject(new WsgateError("internal_error", "A shared session's shell made a request.")),
  WebSocket: /** @type {any} */ (function NoWebSocket() {}),
};

/** A logged-in wsgate session. Create it with `connect()`. */
export class Session extends EventTarget {
  /** @param {ConnectOptions} opts */
  constructor(opts) {
    super();
    // A SharedSession (shared/tab.js) is a Session whose state lives in the
    // shared worker: it overrides every public member, and what is set up
    // here for it is an inert shell that is never used.
    if (/** @type {unknown} */ (opts) === SHARED) opts = SHARED_SHELL;
    if (!opts || typeof opts !== "object") throw new WsgateError("invalid_argument", "connect() needs an options object { username, password }.");
    if (typeof opts.username !== "string" || opts.username === "") throw new WsgateError("invalid_argument", "connect() needs a non-empty username.");
    if (typeof opts.password !== "string" || opts.password === "") throw new WsgateError("invalid_argument", "connect() needs a non-empty password.");
    /** @type {Backend} */
    this._backend = selectBackend(opts.crypto);
    const { base, ws } = normalizeBase(opts.url);
    this._base = base;
    this._wsUrl = ws;
    this._pin = opts.pin;
    this._onFrameHook = typeof opts.onFrame === "function" ? opts.onFrame : null;
    // @ts-ignore -- defined by the bundler, or not at all
    this._testHooks = typeof __WSGATE_TEST_HOOKS__ === "undefined" || __WSGATE_TEST_HOOKS__ === true ? opts.testHooks : undefined;
    this._requestTimeout = opts.requestTimeout ?? 30_000;
    this._handshakeTimeout = opts.handshakeTimeout ?? 10_000;
    this._httpTimeout = opts.httpTimeout ?? 30_000;
    this._maxInFlight = Math.max(1, Math.min(opts.maxInFlight ?? 64, 4096));
    this._maxReconnectDelay = opts.maxReconnectDelay ?? 10_000;
    this._reconnectEnabled = opts.reconnect !== false;
    this._maxMessageSize = opts.maxMessageSize ?? 1024 * 1024;
    this._autoRelogin = opts.autoRelogin === true;
    this._keepCredentials = opts.keepCredentials !== false;
    const fetchImpl = opts.fetch ?? globalThis.fetch;
    this._WebSocket = /** @type {typeof WebSocket} */ (opts.WebSocket ?? globalThis.WebSocket);
    if (typeof fetchImpl !== "function") throw new WsgateError("unsupported", "This environment has no fetch(); pass { fetch }.");
    if (typeof this._WebSocket !== "function") throw new WsgateError("unsupported", "This environment has no WebSocket; pass { WebSocket }.");
    this._fetch = fetchImpl;
    this._credentials = makeCredentials(opts.username, opts.password);
    /** @type {LoginResult | null} */
    this._lr = null;
    /** @type {Connection | null} */
    this._conn = null;
    /** @type {"connecting" | "open" | "reconnecting" | "closed"} */
    this._state = "connecting";
    /** @type {WsgateError | null} */
    this._terminal = null;
    /** @type {Pending[]} */
    this._queue = [];
    /** @type {Map<number, Pending>} */
    this._pending = new Map();
    /** ids whose caller gave up but whose response has not come yet @type {Set<number>} */
    this._zombies = new Set();
    this._nextId = 1;
    /** @type {Map<string, Subscription>} */
    this._subs = new Map();
    this._loggingOut = false;
    /** @type {ReturnType<typeof setTimeout> | undefined} */
    this._reconnectTimer = undefined;
    /** @type {(() => void) | null} */
    this._wake = null;
  }

  /** The user name as the server stores it. */
  get user() {
    return this._lr ? this._lr.user : null;
  }
  /** The IP address the server sees (the session is bound to it). */
  get ip() {
    return this._lr ? this._lr.ip : null;
  }
  /** The session id (not a secret by itself: using it needs the session key). */
  get sessionId() {
    return this._lr ? this._lr.sessionId : null;
  }
  /** When the session expires (ms since the epoch). */
  get expiresAt() {
    return this._lr ? this._lr.expiresAt : null;
  }
  /** Fingerprint (b64u SHA-256) of the server key the session is bound to. */
  get keyFingerprint() {
    return this._lr ? this._lr.fp : null;
  }
  /** "webcrypto" or "noble". */
  get backend() {
    return this._backend.name;
  }
  /** "connecting" | "open" | "reconnecting" | "closed" */
  get state() {
    return this._state;
  }
  /** false: this session runs in this page (see `connect({ shared: true })`). */
  get shared() {
    return false;
  }

  /**
   * Listens to "state" (detail: { state, previous, error? }), "session"
   * (detail: { sessionId, user, ip } after a transparent re-login) and
   * "error" (detail: { error, channel? }). Returns a function that removes
   * the listener.
   * @param {"state" | "session" | "error"} type
   * @param {(detail: any) => void} fn
   */
  on(type, fn) {
    /** @param {Event} ev */
    const l = (ev) => fn(/** @type {any} */ (ev).detail);
    this.addEventListener(type, l);
    return () => this.removeEventListener(type, l);
  }

  /** @param {string} type @param {any} detail */
  _emit(type, detail) {
    const ev = new Event(type);
    Object.defineProperty(ev, "detail", { value: detail });
    try {
      this.dispatchEvent(ev);
    } catch (e) {
      reportLater(e);
    }
  }

  /** @param {"connecting" | "open" | "reconnecting" | "closed"} state @param {Error} [error] */
  _setState(state, error) {
    if (this._state === state) return;
    const previous = this._state;
    this._state = state;
    this._emit("state", error ? { state, previous, error } : { state, previous });
  }

  /**
   * @param {"in" | "out"} dir @param {Uint8Array} bytes @param {boolean} isProtected
   */
  _observe(dir, bytes, isProtected) {
    const hook = this._onFrameHook;
    if (!hook) return;
    /** @type {FrameInfo | null} */
    let info = null;
    try {
      const e = decodeEnvelope(bytes);
      info = { type: e.type, typeName: TYPE_NAMES[e.type] ?? `0x${e.type.toString(16)}`, flags: e.flags, id: e.id, name: e.name, encrypted: (e.flags & FLAG_ENC) !== 0, protected: isProtected };
    } catch {
      info = null;
    }
    try {
      hook(dir, bytes.slice(), info);
    } catch (e) {
      reportLater(e);
    }
  }

  /** Logs in and establishes the first connection. */
  async _start() {
    this._setState("connecting");
    try {
      this._lr = await login({ backend: this._backend, base: this._base, credentials: this._credentials, pin: this._pin, timeoutMs: this._httpTimeout, fetch: this._fetch });
      // Nothing kept to log in again with: a changed IP or server key ends
      // the session instead (keepCredentials: false).
      if (!this._keepCredentials) forgetCredentials(this._credentials);
      await this._establish();
    } catch (e) {
      const err = e instanceof WsgateError ? e : new WsgateError("internal_error", `Unexpected failure: ${e instanceof Error ? e.message : e}`, { cause: e });
      this._terminate(err);
      throw err;
    }
    this._onOpen();
  }

  /** Opens a connection, logging in again once if the IP or server key changed. */
  async _establish() {
    for (let relogins = 0; ; relogins++) {
      if (this._terminal) throw this._terminal;
      const conn = new Connection(this, /** @type {LoginResult} */ (this._lr));
      this._conn = conn;
      try {
        await conn.start();
        if (this._terminal) {
          conn.shutdown(1000, "closed");
          throw this._terminal;
        }
        return;
      } catch (e) {
        if (this._conn === conn) this._conn = null;
        const why = /** @type {any} */ (e);
        const again = e instanceof WsgateError && (why.relogin || (why.unknownSession && this._autoRelogin));
        if (!again || relogins >= 1) throw e;
        await this._relogin();
      }
    }
  }

  async _relogin() {
    let lr;
    try {
      lr = await login({ backend: this._backend, base: this._base, credentials: this._credentials, pin: this._pin, timeoutMs: this._httpTimeout, fetch: this._fetch });
    } catch (e) {
      if (e instanceof WsgateError && (e.code === "network_error" || e.code === "timeout")) throw e;
      const err = e instanceof WsgateError ? e : new WsgateError("internal_error", String(e));
      /** @type {any} */ (err).fatal = true;
      throw err;
    }
    if (this._terminal) throw this._terminal;
    this._lr = lr;
    this._emit("session", { sessionId: lr.sessionId, user: lr.user, ip: lr.ip });
  }

  _onOpen() {
    // Restore subscriptions first, then send whatever waited. They are
    // queued before "open" is announced, so that what a "state" listener
    // sends (e.g. presence() to refresh a list) goes after them.
    const restore = [];
    for (const [channel, sub] of this._subs) {
      // History channels resume from the last position delivered; presence
      // events stay on while a handler wants them.
      const since = positionOf(sub) ?? sub.since;
      sub.confirmed = false;
      sub.askedPresence = wantsPresence(sub);
      restore.push(
        this._enqueue(T.SUBSCRIBE, sub.sensitive ? FLAG_ENC : 0, channel, subscribeBody(since, wantsPresence(sub)), this._requestTimeout, true, (body) => this._onSubscribed(channel, sub, since, body)).catch((error) => {
          if (this._subs.get(channel) === sub && error instanceof WsgateError && ["not_found", "forbidden", "encryption_required"].includes(error.code)) {
            this._subs.delete(channel);
          }
          if (!this._terminal) this._emit("error", { error, channel });
        }),
      );
    }
    this._setState("open");
    this._pump();
  }

  /**
   * Called by the current connection when it is lost after being open.
   * @param {Connection} conn @param {WsgateError} err
   */
  _onConnectionLost(conn, err) {
    if (conn !== this._conn) return;
    this._conn = null;
    this._failInFlight();
    if (this._terminal) return;
    if (this._loggingOut) {
      this._terminate(new WsgateError("closed", "The session was logged out."));
      return;
    }
    const e = /** @type {any} */ (err);
    if ((e.fatal && !(e.unknownSession && this._autoRelogin)) || !this._reconnectEnabled) {
      this._terminate(err);
      return;
    }
    this._reconnectLoop(err);
  }

  _failInFlight() {
    for (const p of this._pending.values()) {
      clearTimeout(p.timer);
      p.state = "done";
      p.reject(new WsgateError("closed", "The connection was lost before the answer arrived; the request may or may not have been processed."));
    }
    this._pending.clear();
    this._zombies.clear();
  }

  /** @param {WsgateError} cause */
  async _reconnectLoop(cause) {
    this._setState("reconnecting", cause);
    let lastError = cause;
    for (let attempt = 0; !this._terminal; attempt++) {
      const lr = /** @type {LoginResult} */ (this._lr);
      if (Date.now() >= lr.expiresAt) {
        this._terminate(new WsgateError("session_expired", "The session expired while the connection was down. Log in again."));
        return;
      }
      const base = Math.min(this._maxReconnectDelay, 250 * 2 ** Math.min(attempt, 16));
      const delay = lastError.code === "rate_limited" ? this._maxReconnectDelay : base * (0.8 + 0.4 * Math.random());
      await new Promise((resolve) => {
        this._wake = () => resolve(undefined);
        this._reconnectTimer = setTimeout(resolve, delay);
      });
      this._wake = null;
      if (this._terminal) return;
      try {
        await this._establish();
        this._onOpen();
        return;
      } catch (e) {
        const err = e instanceof WsgateError ? e : new WsgateError("internal_error", String(e));
        if (this._terminal) return;
        if (/** @type {any} */ (err).fatal) {
          this._terminate(err);
          return;
        }
        lastError = err;
      }
    }
  }

  /**
   * Ends the session locally; every waiting call rejects with `err`.
   * @param {WsgateError} err
   */
  _terminate(err) {
    if (this._terminal) return;
    this._terminal = err;
    clearTimeout(this._reconnectTimer);
    if (this._wake) this._wake();
    const conn = this._conn;
    this._conn = null;
    if (conn) conn.shutdown(1000, err.code === "closed" ? "client closed" : err.code);
    for (const p of this._pending.values()) {
      clearTimeout(p.timer);
      p.state = "done";
      p.reject(err);
    }
    this._pending.clear();
    this._zombies.clear();
    for (const p of this._queue) {
      clearTimeout(p.timer);
      p.state = "done";
      p.reject(err);
    }
    this._queue = [];
    this._subs.clear();
    if (this._credentials) forgetCredentials(this._credentials);
    this._setState("closed", err);
  }

  /** The error for calls made after the session ended. */
  _endedError() {
    const t = /** @type {WsgateError} */ (this._terminal);
    return new WsgateError(t.code, t.code === "closed" ? "The session is closed; log in again with connect()." : t.message);
  }

  /**
   * @param {number} type @param {number} flags @param {string} name @param {Uint8Array} body @param {number} timeout
   * @param {boolean} [front] jump the queue (subscription restore)
   * @param {(body: Uint8Array) => void} [onOk] sees a successful answer before any later frame
   * @returns {Promise<Uint8Array>}
   */
  _enqueue(type, flags, name, body, timeout, front = false, onOk = undefined) {
    if (this._terminal) return Promise.reject(this._endedError());
    const size = 8 + utf8(name).length + body.length + 16;
    if (size > this._maxMessageSize) {
      return Promise.reject(new WsgateError("too_large", `The message would be ${size} bytes; the limit is ${this._maxMessageSize}. Send less data per request.`));
    }
    return new Promise((resolve, reject) => {
      /** @type {Pending} */
      const p = { type, flags, name, body, resolve, reject, timer: undefined, timeout, id: 0, state: "queued", onOk };
      p.timer = setTimeout(() => this._onTimeout(p), timeout);
      if (front) this._queue.unshift(p);
      else this._queue.push(p);
      this._pump();
    });
  }

  _allocId() {
    for (;;) {
      const id = this._nextId;
      this._nextId = id >= MAX_ID ? 1 : id + 1;
      if (!this._pending.has(id) && !this._zombies.has(id)) return id;
    }
  }

  _pump() {
    while (this._queue.length > 0 && this._state === "open" && this._conn && this._pending.size + this._zombies.size < this._maxInFlight) {
      const p = /** @type {Pending} */ (this._queue.shift());
      p.id = this._allocId();
      p.state = "sent";
      this._pending.set(p.id, p);
      const conn = this._conn;
      conn.send({ type: p.type, flags: p.flags, id: p.id, name: p.name, plaintext: p.body }).catch((e) => {
        if (p.state !== "sent") return;
        this._pending.delete(p.id);
        clearTimeout(p.timer);
        p.state = "done";
        p.reject(e instanceof WsgateError ? e : new WsgateError("closed", String(e)));
      });
    }
  }

  /** @param {Pending} p */
  _onTimeout(p) {
    if (p.state === "queued") {
      const i = this._queue.indexOf(p);
      if (i >= 0) this._queue.splice(i, 1);
      p.state = "done";
      p.reject(new WsgateError("timeout", `The request could not be sent within ${p.timeout / 1000} s (connection ${this._state}).`));
    } else if (p.state === "sent") {
      this._pending.delete(p.id);
      this._zombies.add(p.id); // the server still holds the id until it answers
      p.state = "done";
      p.reject(new WsgateError("timeout", `No answer from the server within ${p.timeout / 1000} s.`));
    }
  }

  /**
   * A verified frame from the open connection.
   * @param {Connection} conn
   * @param {{ type: number, flags: number, id: number, name: string, plaintext: Uint8Array }} f
   */
  _onFrame(conn, f) {
    if (conn !== this._conn) return;
    if (f.type === T.RESPONSE) {
      if (this._zombies.delete(f.id)) {
        this._pump();
        return;
      }
      const p = this._pending.get(f.id);
      if (!p) throw connError("protocol_error", `The server answered request ${f.id}, which is not in flight.`);
      this._pending.delete(f.id);
      clearTimeout(p.timer);
      p.state = "done";
      if ((p.flags & FLAG_ENC) !== (f.flags & FLAG_ENC)) {
        p.reject(new WsgateError("protocol_error", "The server answered a sensitive request without encryption (or the reverse); the answer was discarded."));
      } else if (f.flags & FLAG_ERR) {
        let code = "error";
        let message = "";
        try {
          const j = JSON.parse(fromUtf8(f.plaintext));
          if (j && typeof j.code === "string") code = j.code;
          if (j && typeof j.message === "string") message = j.message;
        } catch {
          /* keep defaults */
        }
        p.reject(serverError(code, message));
      } else {
        try {
          if (p.onOk) p.onOk(f.plaintext);
        } catch (e) {
          p.reject(/** @type {Error} */ (e));
          throw e;
        }
        p.resolve(f.plaintext);
      }
      this._pump();
      return;
    }
    if (f.type === T.EVENT) {
      const sub = this._subs.get(f.name);
      if (!sub) return; // raced with an unsubscribe
      this._deliver(sub, f.plaintext, { channel: f.name, encrypted: (f.flags & FLAG_ENC) !== 0 });
      return;
    }
    if (f.type === T.EVENT_AT) return this._onEventAt(f);
    if (f.type === T.PRESENCE_EVENT) {
      const d = asPresenceEvent(parseJson(f.plaintext));
      if (!d) throw connError("protocol_error", `The server sent a PRESENCE_EVENT for ${f.name} that is neither {"join": user} nor {"leave": user}.`);
      const sub = this._subs.get(f.name);
      if (!sub) return; // raced with an unsubscribe
      const meta = { channel: f.name, encrypted: (f.flags & FLAG_ENC) !== 0 };
      for (const l of [...sub.listeners]) {
        if (!l.onPresence) continue;
        try {
          l.onPresence(d.join !== undefined ? { join: d.join } : { leave: /** @type {string} */ (d.leave) }, { ...meta });
        } catch (e) {
          reportLater(e);
        }
      }
      return;
    }
    if (f.type === T.RESYNC) {
      const pos = asPosition(parseJson(f.plaintext));
      if (!pos) throw connError("protocol_error", `The server sent a RESYNC for ${f.name} that is not a position.`);
      const sub = this._subs.get(f.name);
      // Before the SUBSCRIBE answer the subscription has no position to lose.
      if (!sub || sub.epoch === null) return;
      const previous = positionOf(sub);
      const missed = !previous || previous.epoch !== pos.epoch || pos.offset > previous.offset;
      advance(sub, pos);
      if (missed) this._notify(sub, "onGap", { channel: f.name, reason: "resync", epoch: pos.epoch, offset: /** @type {number} */ (sub.offset), previous });
      return;
    }
    throw connError("protocol_error", `The server sent an unexpected frame type 0x${f.type.toString(16)}.`);
  }

  /**
   * An event with its offset (history channels): delivered once, in order;
   * an offset already delivered is dropped, one past the next is a gap.
   * @param {{ flags: number, name: string, plaintext: Uint8Array }} f
   */
  _onEventAt(f) {
    const pt = f.plaintext;
    if (pt.length < 8) throw connError("protocol_error", `The server sent an EVENT_AT for ${f.name} without its 8-byte offset.`);
    const v = new DataView(pt.buffer, pt.byteOffset, 8);
    const offset = v.getUint32(0) * 2 ** 32 + v.getUint32(4);
    if (offset < 1 || !Number.isSafeInteger(offset)) throw connError("protocol_error", `The server sent an EVENT_AT for ${f.name} with offset ${offset}.`);
    const sub = this._subs.get(f.name);
    // No position yet: the event belongs to an earlier subscription (the
    // server sends none of this one's before its SUBSCRIBE answer).
    if (!sub || sub.epoch === null || sub.offset === null) return;
    const epoch = sub.epoch;
    if (offset <= sub.offset) return; // delivered already (a replay overlapping live events, a duplicate)
    if (offset > sub.offset + 1) {
      this._notify(sub, "onGap", { channel: f.name, reason: "skip", epoch, offset: offset - 1, previous: positionOf(sub) });
    }
    sub.offset = offset;
    this._deliver(sub, pt.subarray(8), { channel: f.name, encrypted: (f.flags & FLAG_ENC) !== 0, offset, epoch });
  }

  /** @param {Subscription} sub @param {Uint8Array} data @param {EventMeta} meta */
  _deliver(sub, data, meta) {
    for (const h of [...sub.handlers]) {
      try {
        h(data, meta);
      } catch (e) {
        reportLater(e);
      }
    }
  }

  /**
   * @template {"onGap" | "onRecovered"} K
   * @param {Subscription} sub @param {K} kind @param {Parameters<NonNullable<SubListener[K]>>[0]} detail
   */
  _notify(sub, kind, detail) {
    for (const l of [...sub.listeners]) {
      const fn = /** @type {((d: any) => void) | undefined} */ (l[kind]);
      if (!fn) continue;
      try {
        fn(detail);
      } catch (e) {
        reportLater(e);
      }
    }
  }

  /**
   * The answer to a SUBSCRIBE that took effect: empty (no history), or the
   * stream's position and whether the events after `since` follow.
   * @param {string} channel @param {Subscription} sub @param {Position | null} since what the SUBSCRIBE asked for
   * @param {Uint8Array} body
   * @param {boolean} [join] another handler joining a live subscription: a recovery is no news
   */
  _onSubscribed(channel, sub, since, body, join = false) {
    if (this._subs.get(channel) !== sub) return;
    sub.confirmed = true;
    // The subscription goes on from where it is (the answer's offset may
    // count events still on their way to us).
    if (!since && sub.epoch !== null) return;
    sub.since = null;
    if (body.length === 0) {
      sub.epoch = sub.offset = null;
      return;
    }
    const j = parseJson(body);
    const pos = asPosition(j);
    if (!pos || typeof j.recovered !== "boolean") throw connError("protocol_error", `The server's answer to SUBSCRIBE ${channel} is not a stream position.`);
    if (since && j.recovered === true && since.epoch === pos.epoch && since.offset <= pos.offset) {
      // The events after since.offset follow; anything up to what was
      // delivered already is dropped when it comes again.
      if (sub.epoch !== pos.epoch || sub.offset === null) {
        sub.epoch = pos.epoch;
        sub.offset = since.offset;
      }
      if (!join) this._notify(sub, "onRecovered", { channel, epoch: pos.epoch, offset: pos.offset, since, missed: pos.offset - since.offset });
      return;
    }
    advance(sub, pos);
    // Without `since` there was nothing to recover; with it, the server
    // could not fill the gap: the app refetches.
    if (since) this._notify(sub, "onGap", { channel, reason: "not_recovered", epoch: pos.epoch, offset: /** @type {number} */ (sub.offset), previous: since });
  }

  /**
   * Sends a request to a route and resolves with the response body.
   * @param {string} route
   * @param {unknown} [data] Uint8Array/ArrayBuffer as is, string as UTF-8, anything else as UTF-8 JSON
   * @param {{ sensitive?: boolean, timeout?: number }} [opts]
   * @returns {Promise<Uint8Array>}
   */
  async request(route, data, opts = {}) {
    if (this._terminal) throw this._endedError();
    checkName(route, "route");
    const body = encodeData(data);
    return this._enqueue(T.REQUEST, opts.sensitive ? FLAG_ENC : 0, route, body, opts.timeout ?? this._requestTimeout);
  }

  /**
   * Like request(), parsing the response as UTF-8 JSON (empty response: null).
   * @param {string} route @param {unknown} [data] @param {{ sensitive?: boolean, timeout?: number }} [opts]
   */
  async requestJson(route, data, opts) {
    const bytes = await this.request(route, data, opts);
    if (bytes.length === 0) return null;
    try {
      return JSON.parse(fromUtf8(bytes));
    } catch {
      throw new WsgateError("invalid_json", `The response from ${route} is not valid UTF-8 JSON.`);
    }
  }

  /**
   * Publishes to a channel (where the channel allows clients to publish).
   * Resolves with the new event's position on a history channel, else null.
   * @param {string} channel @param {unknown} data @param {{ sensitive?: boolean, timeout?: number }} [opts]
   * @returns {Promise<Position | null>}
   */
  async publish(channel, data, opts = {}) {
    if (this._terminal) throw this._endedError();
    checkName(channel, "channel");
    const body = await this._enqueue(T.PUBLISH, opts.sensitive ? FLAG_ENC : 0, channel, encodeData(data), opts.timeout ?? this._requestTimeout);
    if (body.length === 0) return null;
    const pos = asPosition(parseJson(body));
    if (!pos) throw new WsgateError("protocol_error", `The server's answer to PUBLISH ${channel} is neither empty nor a stream position.`);
    return pos;
  }

  /**
   * Subscribes to a channel. Resolves once the server confirmed (from then on
   * every publish reaches the handler) with a function that unsubscribes,
   * which also has `channel` and `position` (history channels: the last
   * position delivered, or null).
   * Subscriptions are restored after a reconnect; on history channels from
   * the last position delivered, so the handler sees every event once, in
   * order, or `onGap` says that some may be missing.
   * @param {string} channel
   * @param {EventHandler} handler
   * On a channel with presence, `presence` receives `{join: user}` and
   * `{leave: user}` (docs/protocol.md §6.6); the channel's SUBSCRIBE asks for
   * them while any of its handlers has `presence`, across reconnects too.
   * @param {{ sensitive?: boolean, timeout?: number, since?: Position | null, onGap?: (d: GapDetail) => void, onRecovered?: (d: RecoveredDetail) => void, presence?: PresenceHandler | null }} [opts]
   *   sensitive: send SUBSCRIBE encrypted (required by sensitive channels); since: resume from a stored
   *   position (used when this session tracks none for the channel yet)
   * @returns {Promise<(() => Promise<void>) & { readonly channel: string, readonly position: Position | null }>}
   */
  async subscribe(channel, handler, opts = {}) {
    if (this._terminal) throw this._endedError();
    const since = checkSubscribe(channel, handler, opts);
    /** @type {SubListener} */
    const listener = { onGap: opts.onGap ?? undefined, onRecovered: opts.onRecovered ?? undefined, onPresence: opts.presence ?? undefined };
    let sub = this._subs.get(channel);
    /** @type {Position | null} */
    let asked = null;
    let join = false;
    if (sub) {
      // One position per channel: another handler joins it as it is.
      sub.handlers.add(handler);
      sub.listeners.add(listener);
      if (sub.confirmed && (!opts.sensitive || sub.sensitive) && wantsPresence(sub) === sub.askedPresence) {
        // The server already sends this channel as the new handler wants it
        // (many pages of a shared worker subscribing to one channel): no
        // SUBSCRIBE.
        return this._subscription(channel, sub, handler, listener);
      }
      // Else a SUBSCRIBE that changes what the server sends (presence events,
      // ENC). The server takes it as a new start, so it resumes from the
      // channel's position (else events on their way could be lost).
      if (opts.sensitive) sub.sensitive = true;
      asked = positionOf(sub);
      join = true;
    } else {
      sub = { handlers: new Set([handler]), listeners: new Set([listener]), sensitive: !!opts.sensitive, epoch: null, offset: null, since, confirmed: false, askedPresence: false };
      this._subs.set(channel, sub);
      asked = since;
    }
    const mine = sub;
    mine.confirmed = false;
    mine.askedPresence = wantsPresence(mine);
    try {
      await this._enqueue(T.SUBSCRIBE, mine.sensitive ? FLAG_ENC : 0, channel, subscribeBody(asked, wantsPresence(mine)), opts.timeout ?? this._requestTimeout, false, (body) =>
        this._onSubscribed(channel, mine, asked, body, join),
      );
    } catch (e) {
      mine.handlers.delete(handler);
      mine.listeners.delete(listener);
      if (mine.handlers.size === 0 && this._subs.get(channel) === mine) this._subs.delete(channel);
      throw e;
    }
    return this._subscription(channel, mine, handler, listener);
  }

  /**
   * What subscribe() resolves with: unsubscribes one handler, and the channel when it was the last.
   * @param {string} channel @param {Subscription} mine @param {EventHandler} handler @param {SubListener} listener
   * @returns {(() => Promise<void>) & { readonly channel: string, readonly position: Position | null }}
   */
  _subscription(channel, mine, handler, listener) {
    let done = false;
    const off = async () => {
      if (done) return;
      done = true;
      mine.handlers.delete(handler);
      mine.listeners.delete(listener);
      // Other handlers stay: no new SUBSCRIBE. If this was the last one that
      // wanted presence events, those still coming are dropped, and the next
      // SUBSCRIBE of the channel (a reconnect, a new handler) no longer asks.
      if (mine.handlers.size > 0 || this._subs.get(channel) !== mine) return;
      this._subs.delete(channel);
      if (this._terminal) return;
      await this._enqueue(T.UNSUBSCRIBE, mine.sensitive ? FLAG_ENC : 0, channel, EMPTY, this._requestTimeout);
    };
    return /** @type {typeof off & { readonly channel: string, readonly position: Position | null }} */ (
      Object.defineProperties(off, {
        channel: { value: channel, enumerable: true },
        // Still readable after off() or close(): what to store for `since`.
        position: { get: () => positionOf(mine), enumerable: true },
      })
    );
  }

  /**
   * Who is present on a channel with presence (docs/protocol.md §6.6): the
   * users with at least one connection subscribed to it, fleet-wide, sorted
   * by user. Allowed to whoever may subscribe to the channel (subscribed or
   * not). A channel without presence rejects with `not_found`.
   * @param {string} channel @param {{ sensitive?: boolean, timeout?: number }} [opts]
   *   sensitive: send it encrypted (required by sensitive channels)
   * @returns {Promise<PresenceList>}
   */
  async presence(channel, opts = {}) {
    if (this._terminal) throw this._endedError();
    checkName(channel, "channel");
    const body = await this._enqueue(T.PRESENCE, opts.sensitive ? FLAG_ENC : 0, channel, EMPTY, opts.timeout ?? this._requestTimeout);
    const list = asPresenceList(parseJson(body));
    if (!list) throw new WsgateError("protocol_error", `The server's answer to PRESENCE ${channel} is not a presence list {"users":[{"user","connections"}…]}.`);
    return list;
  }

  /**
   * Ends the session on the server (every connection of it closes), then
   * closes this object. Later calls reject with `closed`.
   * @param {{ timeout?: number }} [opts]
   */
  async logout(opts = {}) {
    if (this._terminal) throw this._endedError();
    this._loggingOut = true;
    try {
      await this._enqueue(T.LOGOUT, 0, "", EMPTY, opts.timeout ?? 10_000);
    } finally {
      this._terminate(new WsgateError("closed", "The session was logged out."));
    }
  }

  /**
   * Closes the connection without logging out (the session stays valid on
   * the server until it expires). Later calls reject with `closed`.
   */
  close() {
    this._terminate(new WsgateError("closed", "The session was closed by the page."));
  }

  /** Skips the current reconnect delay (e.g. when the browser comes back online). */
  reconnectNow() {
    if (this._wake) this._wake();
  }
}

/** @param {unknown} e */
export function reportLater(e) {
  const g = /** @type {any} */ (globalThis);
  if (typeof g.reportError === "function") g.reportError(e);
  else setTimeout(() => {
    throw e;
  });
}

/**
 * Logs in and opens a key-established, mutually authenticated session in
 * this page (`connect()` without `shared`, or its fallback).
 * @param {ConnectOptions} opts
 * @returns {Promise<Session>}
 */
export async function connectHere(opts) {
  const s = new Session(opts);
  await s._start();
  const g = /** @type {any} */ (globalThis);
  if (typeof g.addEventListener === "function" && typeof g.removeEventListener === "function") {
    const online = () => s.reconnectNow();
    g.addEventListener("online", online);
    s.on("state", (d) => {
      if (d.state === "closed") g.removeEventListener("online", online);
    });
  }
  return s;
}
