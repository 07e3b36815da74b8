// @ts-check
// The HTTP half: GET /auth/key and the two PUT /auth/session requests of
// the sealed login (docs/protocol.md §3, §4, §4.1): request 1 is HPKE-sealed to the
// server key, the three later messages are AES-256-GCM boxes under a key
// derived from that HPKE context, so a recorded login shows an eavesdropper
// neither the user name nor anything a password guess could be tested
// against.

import { b64u, fromB64u, fromB64uOrNull, fromUtf8, randomBytes, utf8 } from "./bytes.js";
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
 * Zeroes and drops everything `credentials` holds: the password (if still
 * there) and every cached SaltedPassword. Logging in again then needs the
 * password.
 * @param {Credentials} credentials
 */
export function forgetCredentials(credentials) {
  if (credentials.password) {
    credentials.password.fill(0);
    credentials.password = null;
  }
  for (const salted of credentials.salted.values()) salted.fill(0);
  credentials.salted.clear();
}

/**
 * When the page is on another origin than the gateway, a browser reports a
 * CORS refusal exactly like an unreachable server (a TypeError, no status):
 * say what to check on the gateway.
 * @param {string} url
 */
function crossOriginHint(url) {
  const loc = /** @type {any} */ (globalThis).location;
  const page = loc && typeof loc.origin === "string" ? loc.origin : "";
  let target = "";
  try {
    target = new URL(url).origin;
  } catch {
    return "";
  }
  if (!page || page === "null" || page === target) return "";
  return `This page (${page}) is on another origin than the gateway (${target}): the gateway must list "${page}" in allowed_origins, or the browser blocks its answers (CORS). `;
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
    throw new WsgateError("network_error", `Could not reach the wsgate server at ${url}: ${e instanceof Error ? e.message : String(e)}. ${crossOriginHint(url)}Check the URL and your connection.`, { cause: e });
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
  if (res.status === 400 && json && json.status === "failed" && json.error === "bad_seal") {
    return new WsgateError(
      "bad_seal",
      "The server could not open the sealed login: its key may have changed while logging in, or something between the browser and the server altered the request. Try again; if it persists, check for a proxy that rewrites requests.",
      { status: 400 },
    );
  }
  if (res.status === 400 && json && json.status === "failed" && json.error === "sealed_login_required") {
    return new WsgateError(
      "sealed_login_required",
      "The server refused a login that was not sealed to its key. This sm.js always seals, so something between the browser and the server altered the request (or an outdated client is in use): load /sm.js from the server.",
      { status: 400 },
    );
  }
  if (res.status === 503 || (json && json.status === "unavailable")) {
    const ra = Number(res.headers.get("Retry-After"));
    const retryAfter = Number.isFinite(ra) && ra >= 0 ? ra : undefined;
    return new WsgateError(
      "unavailable",
      `The server cannot log anyone in right now (its session store is unavailable); try again${retryAfter !== undefined ? ` in ${retryAfter} s` : " shortly"}.`,
      { status: res.status, retryAfter },
    );
  }
  if (res.status === 404) {
    return new WsgateError("not_found", `${url} answered 404: this server does not host the wsgate authentication module (or the URL is wrong).`, { status: 404 });
  }
  const serverMessage = json && typeof json.message === "string" ? json.message : undefined;
  return new WsgateError("protocol_error", `${url} answered HTTP ${res.status} unexpectedly${serverMessage ? ` (server: ${serverMessage})` : ""}.`, {
    status: res.status,
    serverMessage,
  });
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

// ---- The sealed exchange (docs/protocol.md §4.1) ----

export const LOGIN_HPKE_INFO = "wsgate-v1 login";
export const LOGIN_EXPORTER_CONTEXT = "wsgate-v1 login key";
export const LOGIN_EXCHANGE_INFO = "wsgate-v1 login exchange";
/** Box numbers: reply 1, request 2, reply 2. */
export const BOX_REPLY_1 = 1;
export const BOX_REQUEST_2 = 2;
export const BOX_REPLY_2 = 3;
const PAD_BLOCK = 64;
const EMPTY = new Uint8Array(0);

/**
 * The inner first request, padded so that its UTF-8 length is a multiple of
 * 64 bytes: `{"scram":"<client-first>","pad":"<n spaces>"}` with the fewest
 * n ≥ 0, so the ciphertext length does not reveal the user name's length.
 * @param {string} clientFirstMessage
 */
export function paddedFirstRequest(clientFirstMessage) {
  const bare = utf8(JSON.stringify({ scram: clientFirstMessage, pad: "" })).length;
  const n = (PAD_BLOCK - (bare % PAD_BLOCK)) % PAD_BLOCK;
  return JSON.stringify({ scram: clientFirstMessage, pad: " ".repeat(n) });
}

/**
 * Request 1: the padded inner first request sealed to the server key with
 * HPKE mode_base; login_key is the same context's Export.
 * @param {Backend} backend
 * @param {{ pk: Uint8Array, kid: string, clientFirst: string, skE?: Uint8Array }} p skE: test vectors only
 * @returns {Promise<{ body: string, loginKey: Uint8Array }>}
 */
export async function sealFirstRequest(backend, { pk, kid, clientFirst: cf, skE }) {
  const { enc, ct, exported } = await backend.hpkeSealBaseExport({
    pkR: pk,
    info: utf8(LOGIN_HPKE_INFO),
    pt: utf8(paddedFirstRequest(cf)),
    exporterContext: utf8(LOGIN_EXPORTER_CONTEXT),
    L: 32,
    ...(skE ? { skE } : {}),
  });
  return { body: JSON.stringify({ kid, enc: b64u(enc), ct: b64u(ct) }), loginKey: exported };
}

/**
 * exchange_key = HKDF-SHA-256(salt = raw sid, ikm = login_key, info = "wsgate-v1 login exchange", L = 32).
 * @param {Backend} backend @param {Uint8Array} loginKey @param {Uint8Array} sid raw 16 bytes
 */
export function exchangeKey(backend, loginKey, sid) {
  return backend.hkdfSha256(loginKey, sid, utf8(LOGIN_EXCHANGE_INFO), 32);
}

/** nonce = 11 zero bytes || m. @param {number} m */
function boxNonce(m) {
  const n = new Uint8Array(12);
  n[11] = m;
  return n;
}

/**
 * box(m, inner) = b64u(AES-256-GCM-Seal(exchange_key, 11 zero bytes || m, aad = "", UTF-8 JSON of inner)).
 * @param {Backend} backend @param {Uint8Array} key exchange_key @param {number} m @param {object} inner
 */
export async function sealBox(backend, key, m, inner) {
  const aead = await backend.aesGcm(key);
  return b64u(await aead.seal(boxNonce(m), EMPTY, utf8(JSON.stringify(inner))));
}

/**
 * Opens box m and parses its JSON object; anything else (not b64u, tag
 * mismatch, not UTF-8, not a JSON object) is a protocol_error: the client
 * trusts nothing of the login that does not open under the exchange key.
 * @param {Backend} backend @param {Uint8Array} key exchange_key @param {number} m @param {unknown} ct
 * @param {string} what which reply, for the message
 * @returns {Promise<Record<string, unknown>>}
 */
export async function openBox(backend, key, m, ct, what) {
  const notOpen = (/** @type {string} */ why) =>
    new WsgateError(
      "protocol_error",
      `The server's sealed ${what} did not open (${why}): it was not made by the server this login was sealed to, or it was altered on the way. Refusing to log in; try again, and if it persists, check for a proxy that rewrites responses.`,
    );
  const raw = typeof ct === "string" ? fromB64uOrNull(ct) : null;
  if (!raw || raw.length < 16) throw notOpen(typeof ct === "string" ? "not base64url" : "no ct member");
  const aead = await backend.aesGcm(key);
  let pt;
  try {
    pt = await aead.open(boxNonce(m), EMPTY, raw);
  } catch {
    throw notOpen("authentication tag mismatch");
  }
  let inner;
  try {
    inner = JSON.parse(fromUtf8(pt));
  } catch {
    throw notOpen("not UTF-8 JSON");
  }
  if (!inner || typeof inner !== "object" || Array.isArray(inner)) throw notOpen("not a JSON object");
  return inner;
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
      // other-error: a second request replayed by an intermediary, or an
      // exchange that expired while PBKDF2 ran. bad_seal: the server key
      // rotated between GET /auth/key and the login. Start over once.
      if (attempt === 0 && e instanceof WsgateError && (e.code === "other-error" || e.code === "bad_seal")) continue;
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
  /** @type {Uint8Array | null} */
  let loginKey = null;
  /** @type {Uint8Array | null} */
  let exKey = null;
  /** @type {Uint8Array | null} */
  let fresh = null;
  try {
    const sealed = await sealFirstRequest(backend, { pk: key.pk, kid: key.kid, clientFirst: first.clientFirst });
    loginKey = sealed.loginKey;
    const r1 = await fetchJson(fetchImpl, url, { method: "PUT", headers, body: sealed.body }, timeoutMs);
    const j1 = r1.json;
    if (r1.res.status !== 401 || !j1 || j1.status !== "unauthenticated") throw httpFailure(r1.res, j1, url);
    const sidRaw = typeof j1.sid === "string" ? fromB64uOrNull(j1.sid) : null;
    if (!sidRaw || sidRaw.length !== 16) throw new WsgateError("protocol_error", "The server's first login reply is malformed (no valid sid).");
    exKey = await exchangeKey(backend, loginKey, sidRaw);
    loginKey.fill(0);
    // A clear v1 reply ({"scram","ip"} and no ct) is refused like any box
    // that does not open: nothing unsealed is trusted.
    const in1 = await openBox(backend, exKey, BOX_REPLY_1, j1.ct, "first login reply");
    const ip = in1.ip;
    if (typeof in1.scram !== "string" || typeof ip !== "string" || ip === "" || /[;,]/.test(ip)) {
      throw new WsgateError("protocol_error", "The server's sealed first login reply is malformed (it needs a SCRAM message and an IP address).");
    }
    const serverFirst = in1.scram;
    const sf = parseServerFirst(serverFirst, cnonce);
    const cacheKey = `${sf.iterations}:${b64u(sf.salt)}`;
    const cached = credentials.salted.get(cacheKey);
    let salted = cached;
    if (!salted) {
      if (!credentials.password) {
        throw new WsgateError("session_expired", "The server now uses a different salt for this user (password changed?), or the login was not kept (keepCredentials: false); log in again with the password.");
      }
      // Cached only once the server has proved it knows the verifier
      // (ServerSignature, below): a salt and iteration count from anyone
      // else must not leave a SaltedPassword behind.
      salted = fresh = await saltedPassword(backend, credentials.password, sf.salt, sf.iterations);
    }
    const fin = await clientFinal(backend, {
      clientFirstBare: first.clientFirstBare,
      serverFirst,
      nonce: sf.nonce,
      cbindData: cbindData(ip, key.fp),
      saltedPassword: salted,
    });
    const body2 = JSON.stringify({ sid: j1.sid, ct: await sealBox(backend, exKey, BOX_REQUEST_2, { scram: fin.clientFinal }) });
    const r2 = await fetchJson(fetchImpl, url, { method: "PUT", headers, body: body2 }, timeoutMs);
    const j2 = r2.json;
    const status2 = r2.res.status;
    if (status2 === 401 && j2 && j2.status === "failed" && !("ct" in j2)) {
      // In clear, only "this exchange is gone" belongs to no live exchange.
      if (j2.scram === "e=other-error") throw httpFailure(r2.res, j2, url);
      throw new WsgateError(
        "protocol_error",
        `The server refused the second login step in clear (${typeof j2.scram === "string" ? j2.scram : "no SCRAM message"}), which the sealed login does not allow; refusing to trust it. Try again.`,
        { status: 401 },
      );
    }
    const boxed = (status2 === 200 && j2 && j2.status === "authenticated") || (status2 === 401 && j2 && j2.status === "failed");
    if (!boxed) throw httpFailure(r2.res, j2, url);
    const in2 = await openBox(backend, exKey, BOX_REPLY_2, j2.ct, status2 === 200 ? "login answer" : "login refusal");
    if (typeof in2.scram !== "string") throw new WsgateError("protocol_error", "The server's sealed login answer has no SCRAM message.");
    if (status2 !== 200) {
      if (!in2.scram.startsWith("e=")) throw new WsgateError("protocol_error", "The server's sealed login refusal carries no SCRAM error.");
      const err = serverError(in2.scram.slice(2).split(",")[0]);
      /** @type {any} */ (err).status = 401;
      throw err;
    }
    if (in2.scram.startsWith("e=")) throw new WsgateError("protocol_error", "The server answered 200 with a SCRAM error.");
    verifyServerFinal(in2.scram, fin.serverSignature);
    if (!cached) {
      for (const old of credentials.salted.values()) old.fill(0);
      credentials.salted.clear();
      credentials.salted.set(cacheKey, salted);
      fresh = null;
    }
    const sid = in2.session;
    if (typeof sid !== "string" || sid.length !== 22 || !fromB64uOrNull(sid) || typeof in2.user !== "string" || !(Number(in2.expires_in) >= 1)) {
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
      user: in2.user,
      ip,
      expiresAt: Date.now() + Number(in2.expires_in) * 1000,
      pk: key.pk,
      kid: key.kid,
      fp: key.fp,
    };
  } finally {
    if (loginKey) loginKey.fill(0);
    if (exKey) exKey.fill(0);
    // A SaltedPassword computed here and not cached (the login failed).
    if (fresh) fresh.fill(0);
  }
}
