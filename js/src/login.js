// @ts-check
// The HTTP half: GET /auth/key and the two PUT /auth/session requests
// (DESIGN §3, §4).

import { b64u, fromB64u, fromB64uOrNull, randomBytes } from "./bytes.js";
import { WsgateError, serverError } from "./errors.js";
import { clientFinal, clientFirst, cbindData, keyFingerprint, keyId, parseServerFirst, preparePassword, saltedPassword, verifyServerFinal } from "./scram.js";

/** @typedef {import("./crypto/index.js").Backend} Backend */

/**
 * What sm.js keeps to log in again without the password: SCRAM's
 * SaltedPassword per (salt, iterations), which RFC 5802 allows a client to
 * cache. The password itself is dropped after the first login.
 * @typedef {object} Credentials
 * @property {string} username
 * @property {Uint8Array | null} password SASLprep'd UTF-8, until the first login succeeds
 * @property {Map<string, Uint8Array>} salted
 */

/**
 * @typedef {object} LoginResult
 * @property {string} sessionId
 * @property {Uint8Array} sessionKey
 * @property {string} user stored user name
 * @property {string} ip IP the server observed (the login is bound to it)
 * @property {number} expiresAt ms since the epoch
 * @property {Uint8Array} pk current server public key
 * @property {string} kid
 * @property {string} fp
 */

/**
 * @param {string} username @param {string} password
 * @returns {Credentials}
 */
export function makeCredentials(username, password) {
  return { username, password: preparePassword(password), salted: new Map() };
}

/**
 * fetch with a timeout; maps failures to WsgateError.
 * @param {typeof fetch} fetchImpl @param {string} url @param {RequestInit} init @param {number} timeoutMs
 */
async function fetchJson(fetchImpl, url, init, timeoutMs) {
  const ac = new AbortController();
  const timer = setTimeout(() => ac.abort(), timeoutMs);
  let res;
  let text;
  try {
    res = await fetchImpl(url, { ...init, signal: ac.signal, credentials: "omit", cache: "no-store", redirect: "follow" });
    text = await res.text();
  } catch (e) {
    if (ac.signal.aborted) throw new WsgateError("timeout", `The server at ${url} did not answer within ${Math.round(timeoutMs / 1000)} s.`);
    throw new WsgateError("network_error", `Could not reach the wsgate server at ${url}: ${e instanceof Error ? e.message : String(e)}. Check the URL and your connection.`, { cause: e });
  } finally {
    clearTimeout(timer);
  }
  let json = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    json = null;
  }
  return { res, json };
}

/** @param {Response} res @param {any} json @param {string} url */
function httpFailure(res, json, url) {
  if (res.status === 429 || (json && json.status === "rate_limited")) {
    const ra = Number(res.headers.get("Retry-After"));
    const retryAfter = Number.isFinite(ra) && ra >= 0 ? ra : undefined;
    return new WsgateError(
      "rate_limited",
      `Too many failed logins for this user or address; try again${retryAfter !== undefined ? ` in ${retryAfter} s` : " later"}.`,
      { status: res.status, retryAfter },
    );
  }
  if (res.status === 401 && json && json.status === "failed" && typeof json.scram === "string" && json.scram.startsWith("e=")) {
    const err = serverError(json.scram.slice(2));
    /** @type {any} */ (err).status = 401;
    return err;
  }
  if (res.status === 404) {
    return new WsgateError("not_found", `${url} answered 404: this server does not host the wsgate authentication module (or the URL is wrong).`, { status: 404 });
  }
  return new WsgateError("protocol_error", `${url} answered HTTP ${res.status} unexpectedly.`, { status: res.status });
}

/**
 * GET /auth/key: the current server key (the first entry).
 * @param {Backend} backend @param {string} base @param {number} timeoutMs @param {typeof fetch} fetchImpl
 */
export async function fetchServerKey(backend, base, timeoutMs, fetchImpl) {
  const url = `${base}/auth/key`;
  const { res, json } = await fetchJson(fetchImpl, url, { method: "GET" }, timeoutMs);
  if (res.status !== 200) throw httpFailure(res, json, url);
  const k = json && Array.isArray(json.keys) ? json.keys[0] : null;
  if (!k || typeof k !== "object") throw new WsgateError("protocol_error", `${url} returned no key.`);
  if (k.kem_id !== 32 || k.kdf_id !== 1 || k.aead_id !== 2) {
    throw new WsgateError("protocol_error", `The server key uses an HPKE suite this client does not support (kem ${k.kem_id}, kdf ${k.kdf_id}, aead ${k.aead_id}).`);
  }
  const pk = fromB64u(k.pk, "public key", 32);
  const kid = await keyId(backend, pk);
  if (k.kid !== kid) throw new WsgateError("protocol_error", "The server key's kid does not match its public key.");
  const fp = await keyFingerprint(backend, pk);
  return { pk, kid, fp };
}

/**
 * Logs in: key, first and second SCRAM requests, mutual authentication.
 * @param {{ backend: Backend, base: string, credentials: Credentials, pin?: string | string[], timeoutMs: number, fetch: typeof fetch }} p
 * @returns {Promise<LoginResult>}
 */
export async function login(p) {
  for (let attempt = 0; ; attempt++) {
    try {
      return await loginOnce(p);
    } catch (e) {
      // A second request replayed by an intermediary, or an exchange that
      // expired while PBKDF2 ran: start over once.
      if (attempt === 0 && e instanceof WsgateError && e.code === "other-error") continue;
      throw e;
    }
  }
}

/** @param {{ backend: Backend, base: string, credentials: Credentials, pin?: string | string[], timeoutMs: number, fetch: typeof fetch }} p */
async function loginOnce({ backend, base, credentials, pin, timeoutMs, fetch: fetchImpl }) {
  const key = await fetchServerKey(backend, base, timeoutMs, fetchImpl);
  if (pin !== undefined) {
    const pins = Array.isArray(pin) ? pin : [pin];
    if (!pins.includes(key.fp)) {
      throw new WsgateError(
        "server_key_mismatch",
        `The server's public key (fingerprint ${key.fp}) is not the pinned one; refusing to log in. If the server key was rotated on purpose, update the pin.`,
      );
    }
  }
  const url = `${base}/auth/session`;
  const cnonce = b64u(randomBytes(24));
  const first = clientFirst(credentials.username, cnonce);
  const headers = { "Content-Type": "application/json" };
  const r1 = await fetchJson(fetchImpl, url, { method: "PUT", headers, body: JSON.stringify({ scram: first.clientFirst }) }, timeoutMs);
  const j1 = r1.json;
  if (r1.res.status !== 401 || !j1 || j1.status !== "unauthenticated") throw httpFailure(r1.res, j1, url);
  if (typeof j1.sid !== "string" || !fromB64uOrNull(j1.sid) || typeof j1.ip !== "string" || j1.ip === "" || /[;,]/.test(j1.ip)) {
    throw new WsgateError("protocol_error", "The server's first login reply is malformed.");
  }
  const sf = parseServerFirst(j1.scram, cnonce);
  const cacheKey = `${sf.iterations}:${b64u(sf.salt)}`;
  let salted = credentials.salted.get(cacheKey);
  if (!salted) {
    if (!credentials.password) {
      throw new WsgateError("session_expired", "The server now uses a different salt for this user (password changed?); log in again with the password.");
    }
    salted = await saltedPassword(backend, credentials.password, sf.salt, sf.iterations);
    // Kept even before the proof is checked, so that a retry after
    // e=other-error does not pay for PBKDF2 twice.
    credentials.salted.set(cacheKey, salted);
  }
  const fin = await clientFinal(backend, {
    clientFirstBare: first.clientFirstBare,
    serverFirst: j1.scram,
    nonce: sf.nonce,
    cbindData: cbindData(j1.ip, key.fp),
    saltedPassword: salted,
  });
  const r2 = await fetchJson(fetchImpl, url, { method: "PUT", headers, body: JSON.stringify({ sid: j1.sid, scram: fin.clientFinal }) }, timeoutMs);
  const j2 = r2.json;
  if (r2.res.status !== 200 || !j2 || j2.status !== "authenticated") throw httpFailure(r2.res, j2, url);
  verifyServerFinal(j2.scram, fin.serverSignature);
  const sid = j2.session;
  if (typeof sid !== "string" || sid.length !== 22 || !fromB64uOrNull(sid) || typeof j2.user !== "string" || !(Number(j2.expires_in) >= 1)) {
    throw new WsgateError("protocol_error", "The server's login answer is malformed.");
  }
  // Mutual authentication done: keep SaltedPassword, forget the password.
  if (credentials.password) {
    credentials.password.fill(0);
    credentials.password = null;
  }
  return {
    sessionId: sid,
    sessionKey: fin.sessionKey,
    user: j2.user,
    ip: j1.ip,
    expiresAt: Date.now() + Number(j2.expires_in) * 1000,
    pk: key.pk,
    kid: key.kid,
    fp: key.fp,
  };
}
