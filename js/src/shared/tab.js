// @ts-check
// The page's side of shared mode (README "Shared mode"): a SharedSession has
// the API of a Session, but the session itself (login, WebSocket, keys) runs
// in sm-worker.js, shared by every page of the origin. The page keeps no
// secret: the password goes to the worker once, for the login, and only
// results come back.
import { WsgateError } from "../errors.js";
import { SHARED, Session, asPresenceList, checkName, checkSubscribe, encodeData, normalizeBase, reportLater } from "../session.js";
import { WIRE_VERSION, WORKER_NAME, detailFromWire, fromWire } from "./wire.js";

/** Default heartbeat interval (ms): what lets the worker notice a page that vanished without a word. */
const HEARTBEAT_MS = 15_000;
/** Extra time a page waits past a call's own timeout before it gives up on the worker (ms). */
const WORKER_GRACE_MS = 5_000;
/** Options that are functions or objects of this page: they cannot cross to the worker. */
const PAGE_ONLY = ["onFrame", "fetch", "WebSocket", "testHooks"];

/** @typedef {import("./wire.js").SessionInfo} SessionInfo */

/** Thrown (internally) when this page cannot use a shared worker: connect() falls back to a session of its own. */
export class NoSharedWorker extends Error {}

let lockSeq = 0;
const PAGE_TAG = Math.random().toString(36).slice(2) + Date.now().toString(36);

/**
 * A session that runs in the shared worker: a Session (same members, same
 * events) whose every member asks the worker. Create it with
 * `connect({ shared: true })`.
 */
export class SharedSession extends Session {
  /**
   * @param {MessagePort} port @param {SessionInfo} info
   * @param {{ requestTimeout: number, heartbeat: number, release: () => void }} cfg
   */
  constructor(port, info, cfg) {
    super(/** @type {any} */ (SHARED));
    this._port = port;
    this._info = info;
    this._requestTimeout = cfg.requestTimeout;
    this._release = cfg.release;
    /** @type {WsgateError | null} */
    this._terminal = null;
    this._q = 1;
    /** @type {Map<number, { resolve: (v: any) => void, reject: (e: any) => void, timer: any }>} */
    this._calls = new Map();
    this._pageSubSeq = 1;
    /** @type {Map<number, { handler: Function, channel: string, onGap?: Function, onRecovered?: Function, presence?: Function, position: any }>} */
    this._pageSubs = new Map();
    this._heartbeat = cfg.heartbeat > 0 ? setInterval(() => this._post({ t: "ping" }), cfg.heartbeat) : undefined;
  }

  /** Mirrors of the worker's session: see Session. */
  get user() {
    return this._info.user;
  }
  get ip() {
    return this._info.ip;
  }
  get sessionId() {
    return this._info.sessionId;
  }
  get expiresAt() {
    return this._info.expiresAt;
  }
  get keyFingerprint() {
    return this._info.keyFingerprint;
  }
  get backend() {
    return this._info.backend;
  }
  get state() {
    return this._terminal ? "closed" : this._info.state;
  }
  /** true: this session runs in the shared worker, with every other page of the origin that joined it. */
  get shared() {
    return true;
  }

  /** @param {any} msg */
  _post(msg) {
    try {
      this._port.postMessage(msg);
    } catch {
      // closed
    }
  }

  _endedError() {
    const t = /** @type {WsgateError} */ (this._terminal);
    return new WsgateError(t.code, t.code === "closed" ? "The session is closed; log in again with connect()." : t.message);
  }

  /**
   * One call to the worker; rejects with `timeout` if the worker does not answer in time.
   * @param {any} msg @param {number} timeout
   * @returns {Promise<any>}
   */
  _call(msg, timeout) {
    if (this._terminal) return Promise.reject(this._endedError());
    const q = this._q++;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this._calls.delete(q);
        reject(new WsgateError("timeout", `The shared worker did not answer within ${timeout + WORKER_GRACE_MS} ms.`));
      }, timeout + WORKER_GRACE_MS);
      this._calls.set(q, { resolve, reject, timer });
      this._post({ ...msg, q });
    });
  }

  /** @param {any} msg */
  _onMessage(msg) {
    if (!msg || typeof msg !== "object") return;
    switch (msg.t) {
      case "res": {
        const c = this._calls.get(msg.q);
        if (!c) return;
        this._calls.delete(msg.q);
        clearTimeout(c.timer);
        if (msg.ok) c.resolve(msg.value);
        else c.reject(fromWire(msg.error));
        return;
      }
      case "ev": {
        const sub = this._pageSubs.get(msg.sub);
        if (!sub) return;
        sub.position = msg.pos ?? sub.position;
        try {
          sub.handler(msg.data, msg.meta);
        } catch (e) {
          reportLater(e);
        }
        return;
      }
      case "gap":
      case "recovered": {
        const sub = this._pageSubs.get(msg.sub);
        if (!sub) return;
        sub.position = msg.pos ?? sub.position;
        const fn = msg.t === "gap" ? sub.onGap : sub.onRecovered;
        try {
          if (fn) fn(msg.detail);
        } catch (e) {
          reportLater(e);
        }
        return;
      }
      case "pres": {
        const sub = this._pageSubs.get(msg.sub);
        if (!sub || !sub.presence) return;
        try {
          sub.presence(msg.detail, msg.meta);
        } catch (e) {
          reportLater(e);
        }
        return;
      }
      case "state": {
        if (msg.info) this._info = msg.info;
        const d = detailFromWire(msg.detail);
        if (d.state === "closed") {
          this._end(d.error instanceof WsgateError ? d.error : new WsgateError("closed", "The shared session closed."), false);
          this._emit("state", d);
          return;
        }
        if (!this._terminal) this._emit("state", d);
        return;
      }
      case "session":
        if (msg.info) this._info = msg.info;
        this._emit("session", msg.detail);
        return;
      case "error":
        this._emit("error", detailFromWire(msg.detail));
        return;
      case "detached": {
        const err = fromWire(msg.error);
        const previous = this.state;
        if (this._terminal) return;
        this._end(err, false);
        this._emit("state", { state: "closed", previous, error: err });
        return;
      }
      default:
        return;
    }
  }

  /**
   * Ends this page's session object: pending calls reject, the port and lock go.
   * @param {WsgateError} err @param {boolean} tell say "close" to the worker first
   */
  _end(err, tell) {
    if (this._terminal) return;
    this._terminal = err;
    this._info = { ...this._info, state: /** @type {const} */ ("closed") };
    clearInterval(this._heartbeat);
    if (tell) this._post({ t: "close" });
    for (const c of this._calls.values()) {
      clearTimeout(c.timer);
      c.reject(new WsgateError(err.code, err.code === "closed" ? "The session closed before the answer came." : err.message));
    }
    this._calls.clear();
    this._pageSubs.clear();
    try {
      this._port.close();
    } catch {
      // already closed
    }
    this._release();
  }

  /** @param {{ sensitive?: boolean, timeout?: number }} opts */
  _opts(opts) {
    return { sensitive: !!opts.sensitive, timeout: opts.timeout ?? this._requestTimeout };
  }

  /** See Session.request. @param {string} route @param {unknown} [data] @param {{ sensitive?: boolean, timeout?: number }} [opts] @returns {Promise<Uint8Array>} */
  async request(route, data, opts = {}) {
    if (this._terminal) throw this._endedError();
    checkName(route, "route");
    const o = this._opts(opts);
    return this._call({ t: "call", m: "request", name: route, body: encodeData(data), opts: o }, o.timeout);
  }

  /** See Session.publish. @param {string} channel @param {unknown} data @param {{ sensitive?: boolean, timeout?: number }} [opts] */
  async publish(channel, data, opts = {}) {
    if (this._terminal) throw this._endedError();
    checkName(channel, "channel");
    const o = this._opts(opts);
    return this._call({ t: "call", m: "publish", name: channel, body: encodeData(data), opts: o }, o.timeout);
  }

  /**
   * See Session.subscribe. The worker subscribes once per channel for every
   * page of the session and unsubscribes when the last handler goes.
   * @param {string} channel @param {(data: Uint8Array, meta: any) => void} handler
   * @param {{ sensitive?: boolean, timeout?: number, since?: any, onGap?: (d: any) => void, onRecovered?: (d: any) => void, presence?: ((d: any, meta: any) => void) | null }} [opts]
   */
  async subscribe(channel, handler, opts = {}) {
    if (this._terminal) throw this._endedError();
    const since = checkSubscribe(channel, handler, opts);
    const id = this._pageSubSeq++;
    const entry = { handler, channel, onGap: opts.onGap ?? undefined, onRecovered: opts.onRecovered ?? undefined, presence: opts.presence ?? undefined, position: since };
    this._pageSubs.set(id, entry);
    const o = this._opts(opts);
    let ack;
    try {
      ack = await this._call({ t: "sub", sub: id, channel, opts: { ...o, since, gap: !!entry.onGap, recovered: !!entry.onRecovered, presence: !!entry.presence } }, o.timeout);
    } catch (e) {
      this._pageSubs.delete(id);
      throw e;
    }
    if (ack && ack.position !== undefined) entry.position = ack.position ?? entry.position;
    let done = false;
    const off = async () => {
      if (done) return;
      done = true;
      this._pageSubs.delete(id);
      if (this._terminal) return;
      await this._call({ t: "unsub", sub: id }, this._requestTimeout);
    };
    return /** @type {typeof off & { readonly channel: string, readonly position: any }} */ (
      Object.defineProperties(off, {
        channel: { value: channel, enumerable: true },
        position: { get: () => entry.position, enumerable: true },
      })
    );
  }

  /** See Session.presence. @param {string} channel @param {{ sensitive?: boolean, timeout?: number }} [opts] */
  async presence(channel, opts = {}) {
    if (this._terminal) throw this._endedError();
    checkName(channel, "channel");
    const o = this._opts(opts);
    const list = asPresenceList(await this._call({ t: "call", m: "presence", name: channel, opts: o }, o.timeout));
    if (!list) throw new WsgateError("protocol_error", "The shared worker's presence answer is not a presence list.");
    return list;
  }

  /** Ends the session on the server: every page sharing it sees state "closed". @param {{ timeout?: number }} [opts] */
  async logout(opts = {}) {
    if (this._terminal) throw this._endedError();
    const timeout = opts.timeout ?? 10_000;
    try {
      await this._call({ t: "call", m: "logout", opts: { timeout } }, timeout);
    } catch (e) {
      // The worker's "closed" (broadcast as the session ends) can overtake
      // the logout's own answer: the session is over either way.
      if (!(e instanceof WsgateError && e.code === "closed")) throw e;
    } finally {
      if (!this._terminal) {
        const previous = this.state;
        const err = new WsgateError("closed", "The session was logged out.");
        this._end(err, true);
        this._emit("state", { state: "closed", previous, error: err });
      }
    }
  }

  /** Detaches this page (its subscriptions go; the session stays for the other pages). */
  close() {
    if (this._terminal) return;
    const previous = this.state;
    const err = new WsgateError("closed", "The session was closed by the page.");
    this._end(err, true);
    this._emit("state", { state: "closed", previous, error: err });
  }

  /** Skips the worker's current reconnect delay. */
  reconnectNow() {
    if (!this._terminal) this._post({ t: "reconnect" });
  }
}

/** The worker script's default URL: next to this module (a bundler may put it elsewhere: pass `workerUrl`). */
function defaultWorkerUrl() {
  try {
    return new URL("./sm-worker.js", import.meta.url).href;
  } catch {
    return "/sm-worker.js";
  }
}

/**
 * Holds a Web Lock for as long as the session lives in this page, so the
 * worker learns when the page is gone. null where there are no Web Locks
 * (insecure contexts): the heartbeat and the port's close event do it.
 * @returns {Promise<{ name: string | null, release: () => void }>}
 */
async function holdLock() {
  const locks = /** @type {any} */ (globalThis).navigator?.locks;
  if (!locks || typeof locks.request !== "function") return { name: null, release: () => {} };
  const name = `wsgate-sm-page-${PAGE_TAG}-${++lockSeq}`;
  /** @type {() => void} */
  let release = () => {};
  const held = new Promise((r) => (release = () => r(undefined)));
  await new Promise((granted, failed) => {
    Promise.resolve(
      locks.request(name, () => {
        granted(undefined);
        return held;
      }),
    ).catch(failed);
  });
  return { name, release };
}

/**
 * connect({ shared: true }): attaches to (or starts) the session in the
 * shared worker. Throws NoSharedWorker where this page cannot have one.
 * @param {any} opts
 * @returns {Promise<SharedSession>}
 */
export async function connectShared(opts) {
  // Checked before SharedWorker is looked for, so that an app fails the
  // same way in every browser, not only in those that have one.
  for (const k of PAGE_ONLY) {
    if (opts[k] !== undefined) throw new WsgateError("invalid_argument", `connect({ shared: true }) cannot take ${k}: the connection lives in the shared worker, and functions cannot reach it. Leave shared out to use ${k}.`);
  }
  const SW = /** @type {any} */ (globalThis).SharedWorker;
  if (typeof SW !== "function") throw new NoSharedWorker("no SharedWorker");
  if (typeof opts.username !== "string" || opts.username === "") throw new WsgateError("invalid_argument", "connect() needs a non-empty username.");
  if (opts.password !== undefined && typeof opts.password !== "string") throw new WsgateError("invalid_argument", "connect()'s password must be a string.");
  const { base } = normalizeBase(opts.url);
  const workerUrl = String(opts.workerUrl ?? defaultWorkerUrl());
  const loc = /** @type {any} */ (globalThis).location;
  if (loc && loc.origin && new URL(workerUrl, loc.href).origin !== loc.origin) {
    throw new WsgateError("invalid_argument", `The shared worker script ${workerUrl} is not on this page's origin (${loc.origin}); a SharedWorker must be. Host sm-worker.js on ${loc.origin} and pass its URL as workerUrl.`);
  }
  const heartbeat = opts.heartbeatInterval ?? HEARTBEAT_MS;
  const requestTimeout = opts.requestTimeout ?? 30_000;
  const handshake = (opts.httpTimeout ?? 30_000) * 2 + (opts.handshakeTimeout ?? 10_000) + WORKER_GRACE_MS;
  /** @type {any} */
  let worker;
  try {
    worker = new SW(workerUrl, { name: WORKER_NAME });
  } catch (e) {
    throw new WsgateError("unsupported", `The shared worker ${workerUrl} could not start: ${e instanceof Error ? e.message : e}`, { cause: e });
  }
  const lock = await holdLock();
  const port = /** @type {MessagePort} */ (worker.port);
  /** @type {Record<string, unknown>} */
  const wopts = { url: base };
  for (const k of ["username", "password", "crypto", "pin", "reconnect", "requestTimeout", "handshakeTimeout", "httpTimeout", "maxInFlight", "maxReconnectDelay", "maxMessageSize", "autoRelogin", "keepCredentials"]) {
    if (opts[k] !== undefined) wopts[k] = opts[k];
  }
  /** @type {SharedSession | null} */
  let session = null;
  /** @type {Promise<any>} */
  const first = new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new WsgateError("timeout", `The shared worker ${workerUrl} did not answer within ${handshake} ms.`)), handshake);
    worker.addEventListener("error", () => {
      clearTimeout(timer);
      reject(new WsgateError("network_error", `The shared worker script ${workerUrl} failed to load or run: serve sm-worker.js there (the gateway serves it at /sm-worker.js), or pass workerUrl.`));
    });
    port.addEventListener("message", (ev) => {
      const msg = /** @type {any} */ (ev).data;
      if (session) return session._onMessage(msg);
      if (!msg || (msg.t !== "ready" && msg.t !== "fail")) return;
      clearTimeout(timer);
      resolve(msg);
    });
    port.addEventListener("close", () => {
      clearTimeout(timer);
      if (session) session._onMessage({ t: "detached", error: { code: "closed", message: "The shared worker went away." } });
      else reject(new WsgateError("closed", "The shared worker went away during connect()."));
    });
  });
  port.start();
  port.postMessage({ t: "connect", v: WIRE_VERSION, opts: wopts, lock: lock.name, heartbeat });
  let msg;
  try {
    msg = await first;
  } catch (e) {
    lock.release();
    port.close();
    throw e;
  }
  if (msg.t === "fail") {
    lock.release();
    port.close();
    if (msg.version !== undefined && msg.version !== WIRE_VERSION) throw new NoSharedWorker(msg.error && msg.error.message);
    throw fromWire(msg.error);
  }
  session = new SharedSession(port, msg.info, { requestTimeout, heartbeat, release: lock.release });
  const g = /** @type {any} */ (globalThis);
  if (typeof g.addEventListener === "function") {
    const s = session;
    const online = () => s.reconnectNow();
    // The page is going away for good (not into the back/forward cache):
    // say so at once. Without Web Locks (insecure pages) this is what lets
    // the worker release the page's subscriptions without waiting for its
    // heartbeat to fall silent.
    const hide = (/** @type {any} */ ev) => {
      if (!ev.persisted) s._post({ t: "close" });
    };
    g.addEventListener("online", online);
    g.addEventListener("pagehide", hide);
    s.on("state", (d) => {
      if (d.state !== "closed") return;
      g.removeEventListener("online", online);
      g.removeEventListener("pagehide", hide);
    });
  }
  return session;
}
