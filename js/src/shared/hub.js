// @ts-check
// The shared worker's side of shared mode (README "Shared mode"): the
// sessions every page of the origin shares, and each page's attachment to
// one of them. A session here is an ordinary Session (session.js): one
// login, one WebSocket, one KEY_INIT; its secrets never leave this worker.
// Pages send calls and get results, events and state changes.
//
// What a page holds is counted per attachment, so that a page that goes
// away releases exactly what it held: its subscription handlers (the
// Session sends UNSUBSCRIBE when a channel's last handler goes) and, with
// the last attachment, the session itself (closed, not logged out).
// A page going away is noticed by whichever comes first: its `close`
// message, the port's `close` event (Chromium 122+), the release of the
// page's Web Lock (secure contexts), or its heartbeat falling silent.
import { WsgateError } from "../errors.js";
import { saslprep } from "../saslprep.js";
import { connectHere } from "../session.js";
import { WIRE_VERSION, detailToWire, infoOf, toWire } from "./wire.js";

/** Pages whose heartbeat is silent this many intervals are let go (background tabs' timers are throttled). */
const SILENT_INTERVALS = 8;
/** Shortest and longest heartbeat interval a page may ask for (ms). */
const HEARTBEAT_MIN = 20;
const HEARTBEAT_MAX = 10 * 60_000;
/** Subscriptions one page may hold in the worker. */
const MAX_SUBS_PER_PAGE = 10_000;

/** Session options a page may pass to the worker (functions cannot cross a MessagePort). */
const SESSION_OPTIONS = ["crypto", "pin", "reconnect", "requestTimeout", "handshakeTimeout", "httpTimeout", "maxInFlight", "maxReconnectDelay", "maxMessageSize", "autoRelogin", "keepCredentials"];

/**
 * @typedef {{ key: string, base: string, user: string, session: any, ready: Promise<any>, pages: Set<Page>, closed: boolean }} Entry
 * @typedef {{ port: MessagePort, entry: Entry | null, subs: Map<number, any>, pendingSubs: Set<number>, alive: boolean, lastSeen: number, timer: any }} Page
 */

/**
 * @param {{ fetch?: typeof fetch, WebSocket?: typeof WebSocket, now?: () => number, locks?: any, sessionOptions?: Record<string, unknown> }} [env]
 *   what the sessions use (defaults: the worker's globals); tests pass a mock gateway, and
 *   `sessionOptions` (e.g. `testHooks`) for every session
 */
export function createHub(env = {}) {
  /** @type {Map<string, Entry>} */
  const sessions = new Map();
  const now = env.now ?? (() => Date.now());
  const g = /** @type {any} */ (globalThis);
  const locks = env.locks !== undefined ? env.locks : g.navigator && g.navigator.locks;

  /** @param {Page} page @param {any} msg */
  function post(page, msg) {
    if (!page.alive) return;
    try {
      page.port.postMessage(msg);
    } catch {
      // A clone failure (never for what the hub sends) or a closed port.
    }
  }

  /** @param {Entry} entry @param {any} msg */
  function broadcast(entry, msg) {
    for (const p of entry.pages) post(p, msg);
  }

  /**
   * Lets go of a page: its subscriptions go, and with the last page the session closes.
   * @param {Page} page @param {WsgateError} [why] sent to the page when it may still be there
   */
  function detach(page, why) {
    if (!page.alive) return;
    if (why) post(page, { t: "detached", error: toWire(why) });
    page.alive = false;
    clearInterval(page.timer);
    for (const off of page.subs.values()) off().catch(() => {});
    page.subs.clear();
    try {
      page.port.close();
    } catch {
      // already closed
    }
    const entry = page.entry;
    page.entry = null;
    if (!entry) return;
    entry.pages.delete(page);
    if (entry.pages.size === 0 && !entry.closed) {
      // Nobody left to use it: close (the session stays valid on the server
      // until it expires, as with close() in a page).
      entry.closed = true;
      sessions.delete(entry.key);
      entry.ready.then((s) => s.close()).catch(() => {});
    }
  }

  /** @param {Entry} entry */
  function wireSession(entry) {
    const s = entry.session;
    s.on("state", (/** @type {any} */ d) => {
      if (d.state === "closed") {
        entry.closed = true;
        if (sessions.get(entry.key) === entry) sessions.delete(entry.key);
      }
      broadcast(entry, { t: "state", detail: detailToWire(d), info: infoOf(s) });
    });
    s.on("session", (/** @type {any} */ d) => broadcast(entry, { t: "session", detail: d, info: infoOf(s) }));
    s.on("error", (/** @type {any} */ d) => broadcast(entry, { t: "error", detail: detailToWire(d) }));
  }

  /** @param {Page} page @param {any} msg */
  async function onConnect(page, msg) {
    if (msg.v !== WIRE_VERSION) {
      post(page, { t: "fail", error: { code: "unsupported", message: `sm-worker.js speaks shared-mode version ${WIRE_VERSION}, this page ${String(msg.v)}: a page and the worker come from different sm.js releases.` }, version: WIRE_VERSION });
      detach(page);
      return;
    }
    const o = msg.opts ?? {};
    if (typeof o.url !== "string" || typeof o.username !== "string" || o.username === "") {
      post(page, { t: "fail", error: toWire(new WsgateError("invalid_argument", "connect() needs a non-empty username.")) });
      detach(page);
      return;
    }
    let user = o.username;
    try {
      user = saslprep(o.username);
    } catch {
      // The login refuses it with a clear error.
    }
    const key = `${o.url}\n${user}`;
    let entry = sessions.get(key);
    let joined = true;
    if (!entry || entry.closed) {
      joined = false;
      if (typeof o.password !== "string" || o.password === "") {
        post(page, { t: "fail", error: toWire(new WsgateError("invalid_password", `No session of ${user} at ${o.url} is open in the shared worker to join: connect() needs the password.`)) });
        detach(page);
        return;
      }
      /** @type {Record<string, unknown>} */
      const sopts = { url: o.url, username: o.username, password: o.password };
      for (const k of SESSION_OPTIONS) if (o[k] !== undefined) sopts[k] = o[k];
      if (env.fetch) sopts.fetch = env.fetch;
      if (env.WebSocket) sopts.WebSocket = env.WebSocket;
      if (env.sessionOptions) Object.assign(sopts, env.sessionOptions);
      /** @type {Entry} */
      const e = { key, base: o.url, user, session: null, ready: Promise.resolve(null), pages: new Set(), closed: false };
      e.ready = connectHere(/** @type {any} */ (sopts)).then((s) => {
        e.session = s;
        wireSession(e);
        if (e.closed) s.close();
        return s;
      });
      e.ready.catch(() => {
        e.closed = true;
        if (sessions.get(key) === e) sessions.delete(key);
      });
      sessions.set(key, e);
      entry = e;
    }
    page.entry = entry;
    entry.pages.add(page);
    let s;
    try {
      s = await entry.ready;
    } catch (e) {
      post(page, { t: "fail", error: toWire(e) });
      detach(page);
      return;
    }
    if (!page.alive) return;
    if (joined && o.pin !== undefined) {
      const pins = Array.isArray(o.pin) ? o.pin : [o.pin];
      if (!pins.includes(s.keyFingerprint)) {
        post(page, { t: "fail", error: toWire(new WsgateError("server_key_mismatch", `The shared session of ${user} is bound to server key ${s.keyFingerprint}, which is not among the pinned keys.`)) });
        detach(page);
        return;
      }
    }
    if (s.state === "closed") {
      post(page, { t: "fail", error: toWire(new WsgateError("closed", "The shared session closed while this page was joining it; connect again.")) });
      detach(page);
      return;
    }
    post(page, { t: "ready", info: infoOf(s), joined });
  }

  /** @param {Page} page @param {any} msg */
  async function onCall(page, msg) {
    const entry = page.entry;
    const s = entry && entry.session;
    const reply = (/** @type {boolean} */ ok, /** @type {any} */ v) => post(page, ok ? { t: "res", q: msg.q, ok, value: v } : { t: "res", q: msg.q, ok, error: toWire(v) });
    if (!s) return reply(false, new WsgateError("closed", "This page is not attached to a session."));
    const o = { sensitive: !!(msg.opts && msg.opts.sensitive), timeout: msg.opts && msg.opts.timeout };
    try {
      switch (msg.m) {
        case "request": {
          const body = await s.request(msg.name, msg.body, o);
          if (!page.alive) return;
          const transfer = body.byteOffset === 0 && body.byteLength === body.buffer.byteLength ? [body.buffer] : [];
          try {
            page.port.postMessage({ t: "res", q: msg.q, ok: true, value: body }, transfer);
          } catch {
            // the page went away
          }
          return;
        }
        case "publish":
          return reply(true, await s.publish(msg.name, msg.body, o));
        case "presence":
          return reply(true, await s.presence(msg.name, o));
        case "logout":
          return reply(true, await s.logout({ timeout: o.timeout }));
        default:
          return reply(false, new WsgateError("invalid_argument", `Unknown shared-mode call ${String(msg.m)}.`));
      }
    } catch (e) {
      reply(false, e);
    }
  }

  /** @param {Page} page @param {any} msg */
  async function onSub(page, msg) {
    const s = page.entry && page.entry.session;
    const reply = (/** @type {boolean} */ ok, /** @type {any} */ v) => post(page, ok ? { t: "res", q: msg.q, ok, value: v } : { t: "res", q: msg.q, ok, error: toWire(v) });
    if (!s) return reply(false, new WsgateError("closed", "This page is not attached to a session."));
    const id = msg.sub;
    if (typeof id !== "number" || page.subs.has(id) || page.pendingSubs.has(id)) return reply(false, new WsgateError("invalid_argument", "Duplicate subscription id."));
    if (page.subs.size + page.pendingSubs.size >= MAX_SUBS_PER_PAGE) return reply(false, new WsgateError("too_large", `A page may hold at most ${MAX_SUBS_PER_PAGE} subscriptions in the shared worker.`));
    const o = msg.opts ?? {};
    /** @type {any} */
    let off = null;
    const pos = () => (off ? off.position : null);
    /** @type {Record<string, unknown>} */
    const sopts = { sensitive: !!o.sensitive, timeout: o.timeout, since: o.since ?? null };
    if (o.gap) sopts.onGap = (/** @type {any} */ d) => post(page, { t: "gap", sub: id, detail: d, pos: pos() });
    if (o.recovered) sopts.onRecovered = (/** @type {any} */ d) => post(page, { t: "recovered", sub: id, detail: d, pos: pos() });
    if (o.presence) sopts.presence = (/** @type {any} */ d, /** @type {any} */ meta) => post(page, { t: "pres", sub: id, detail: d, meta });
    page.pendingSubs.add(id);
    try {
      off = await s.subscribe(
        msg.channel,
        (/** @type {Uint8Array} */ data, /** @type {any} */ meta) => post(page, { t: "ev", sub: id, data, meta, pos: pos() }),
        sopts,
      );
    } catch (e) {
      page.pendingSubs.delete(id);
      return reply(false, e);
    }
    page.pendingSubs.delete(id);
    if (!page.alive) {
      off().catch(() => {});
      return;
    }
    page.subs.set(id, off);
    reply(true, { position: off.position });
  }

  /** @param {Page} page @param {any} msg */
  async function onUnsub(page, msg) {
    const off = page.subs.get(msg.sub);
    page.subs.delete(msg.sub);
    try {
      if (off) await off();
      post(page, { t: "res", q: msg.q, ok: true, value: null });
    } catch (e) {
      post(page, { t: "res", q: msg.q, ok: false, error: toWire(e) });
    }
  }

  /** @param {Page} page @param {any} msg */
  function watch(page, msg) {
    const hb = Number(msg.heartbeat);
    if (Number.isFinite(hb) && hb > 0) {
      const interval = Math.min(Math.max(hb, HEARTBEAT_MIN), HEARTBEAT_MAX);
      const limit = interval * SILENT_INTERVALS;
      page.timer = setInterval(() => {
        if (now() - page.lastSeen > limit) detach(page, new WsgateError("closed", `This page sent no heartbeat for ${Math.round(limit / 1000)} s; the shared worker let go of it. Connect again.`));
      }, interval);
    }
    if (typeof msg.lock === "string" && locks && typeof locks.request === "function") {
      // Granted once the page's lock is released: the page closed.
      Promise.resolve(locks.request(msg.lock, () => detach(page))).catch(() => {});
    }
  }

  /**
   * Takes one page's port (a SharedWorker `connect` event's port).
   * @param {MessagePort} port
   */
  function attach(port) {
    /** @type {Page} */
    const page = { port, entry: null, subs: new Map(), pendingSubs: new Set(), alive: true, lastSeen: now(), timer: undefined };
    let started = false;
    port.addEventListener("message", (ev) => {
      const msg = /** @type {any} */ (ev).data;
      if (!page.alive || !msg || typeof msg !== "object") return;
      page.lastSeen = now();
      if (!started) {
        if (msg.t !== "connect") return;
        started = true;
        watch(page, msg);
        onConnect(page, msg).catch((e) => {
          post(page, { t: "fail", error: toWire(e) });
          detach(page);
        });
        return;
      }
      switch (msg.t) {
        case "call":
          onCall(page, msg);
          break;
        case "sub":
          onSub(page, msg);
          break;
        case "unsub":
          onUnsub(page, msg);
          break;
        case "reconnect":
          if (page.entry && page.entry.session) page.entry.session.reconnectNow();
          break;
        case "close":
          detach(page);
          break;
        default:
          // "ping", or something newer this worker does not know: the page is alive.
          break;
      }
    });
    port.addEventListener("close", () => detach(page));
    port.start();
  }

  return { attach, sessions };
}
