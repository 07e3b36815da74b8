// @ts-check
// What a page and sm-worker.js say to each other over a MessagePort (shared
// mode, README "Shared mode"). Each `connect({ shared: true })` opens its own
// port: one port is one page's attachment to one session in the worker.
//
// page → worker
//   { t: "connect", v, opts, lock, heartbeat }   first message, exactly once
//   { t: "call", q, m, name, body, opts }        m: "request" | "publish" | "presence" | "logout"
//   { t: "sub", q, sub, channel, opts }          opts: { sensitive, timeout, since, gap, recovered, presence }
//   { t: "unsub", q, sub }
//   { t: "ping" } | { t: "reconnect" } | { t: "close" }
// worker → page
//   { t: "ready", info, joined } | { t: "fail", error }
//   { t: "res", q, ok, value | error }
//   { t: "ev", sub, data, meta, pos } | { t: "gap" | "recovered", sub, detail, pos } | { t: "pres", sub, detail, meta }
//   { t: "state", detail, info } | { t: "session", detail, info } | { t: "error", detail }
//   { t: "detached", error }                     the worker let go of this page
import { WsgateError } from "../errors.js";

/** Version of these messages. A page and a worker that differ do not talk (the page falls back). */
export const WIRE_VERSION = 1;

/** The SharedWorker's name: one worker per origin, script URL and name. */
export const WORKER_NAME = "wsgate-sm";

/**
 * @typedef {{ code: string, message: string, status?: number, retryAfter?: number, serverMessage?: string }} WireError
 */

/** @param {unknown} e @returns {WireError} */
export function toWire(e) {
  if (e instanceof WsgateError) {
    /** @type {WireError} */
    const w = { code: e.code, message: e.message };
    if (e.status !== undefined) w.status = e.status;
    if (e.retryAfter !== undefined) w.retryAfter = e.retryAfter;
    if (e.serverMessage !== undefined) w.serverMessage = e.serverMessage;
    return w;
  }
  return { code: "internal_error", message: `Unexpected failure in the shared worker: ${e instanceof Error ? e.message : String(e)}` };
}

/** @param {any} w @returns {WsgateError} */
export function fromWire(w) {
  if (!w || typeof w.code !== "string" || typeof w.message !== "string") return new WsgateError("protocol_error", "The shared worker sent a malformed error.");
  /** @type {{ status?: number, retryAfter?: number, serverMessage?: string }} */
  const extra = {};
  if (typeof w.status === "number") extra.status = w.status;
  if (typeof w.retryAfter === "number") extra.retryAfter = w.retryAfter;
  if (typeof w.serverMessage === "string") extra.serverMessage = w.serverMessage;
  return new WsgateError(w.code, w.message, extra);
}

/**
 * The session's public facts, as a page mirrors them.
 * @typedef {{ user: string | null, ip: string | null, sessionId: string | null, expiresAt: number | null, keyFingerprint: string | null, backend: "webcrypto" | "noble", state: "connecting" | "open" | "reconnecting" | "closed" }} SessionInfo
 */

/** @param {any} s @returns {SessionInfo} */
export function infoOf(s) {
  return { user: s.user, ip: s.ip, sessionId: s.sessionId, expiresAt: s.expiresAt, keyFingerprint: s.keyFingerprint, backend: s.backend, state: s.state };
}

/** A detail object with its `error` (if any) made cloneable. @param {any} d */
export function detailToWire(d) {
  return d && d.error ? { ...d, error: toWire(d.error) } : d;
}

/** @param {any} d */
export function detailFromWire(d) {
  return d && d.error ? { ...d, error: fromWire(d.error) } : d;
}
