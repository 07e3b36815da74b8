// @ts-check
// Key establishment (protocol.md §5.2): HELLO → KEY_INIT (HPKE mode_psk seal of
// the dynamic password) → c2s / s2c traffic keys.

import { b64u, concat, fromB64u, fromUtf8, randomBytes, utf8 } from "./bytes.js";
import { WsgateError } from "./errors.js";

/** @typedef {import("./crypto/index.js").Backend} Backend */

export const DYNAMIC_PASSWORD_LEN = 32;

/**
 * Parses a HELLO body.
 * @param {Uint8Array} body
 * @returns {{ nonce: Uint8Array, ip: string, keys: string[] }}
 */
export function parseHello(body) {
  let j;
  try {
    j = JSON.parse(fromUtf8(body));
  } catch {
    throw new WsgateError("protocol_error", "The server's HELLO is not valid JSON.");
  }
  if (!j || typeof j !== "object" || j.v !== 1) throw new WsgateError("protocol_error", "The server speaks a protocol version this client does not know (HELLO v != 1).");
  const nonce = fromB64u(j.nonce, "HELLO nonce", 32);
  if (typeof j.ip !== "string" || j.ip.length === 0) throw new WsgateError("protocol_error", "The server's HELLO has no ip.");
  /** @type {string[]} */
  const keys = Array.isArray(j.keys) ? j.keys.filter((/** @type {unknown} */ k) => typeof k === "string") : [];
  return { nonce, ip: j.ip, keys };
}

/** info = "wsgate-v1 key" || 0x00 || raw HELLO nonce. @param {Uint8Array} helloNonce */
export function hpkeInfo(helloNonce) {
  return concat(utf8("wsgate-v1 key"), Uint8Array.of(0), helloNonce);
}

/**
 * Seals a fresh dynamic password to the server key and builds the KEY_INIT body.
 * @param {Backend} backend
 * @param {{ pk: Uint8Array, kid: string, sessionId: string, sessionKey: Uint8Array, helloNonce: Uint8Array, dynamicPassword?: Uint8Array }} p
 */
export async function makeKeyInit(backend, p) {
  const dynamicPassword = p.dynamicPassword ?? randomBytes(DYNAMIC_PASSWORD_LEN);
  const { enc, ct } = await backend.hpkeSeal({
    pkR: p.pk,
    info: hpkeInfo(p.helloNonce),
    aad: new Uint8Array(0),
    pt: dynamicPassword,
    psk: p.sessionKey,
    pskId: utf8(p.sessionId),
  });
  const body = JSON.stringify({ kid: p.kid, enc: b64u(enc), ct: b64u(ct) });
  return { body, dynamicPassword, enc, ct };
}

/**
 * c2s_key / s2c_key = HKDF-SHA-256(salt = HELLO nonce, ikm = dp, info = "wsgate-v1 c2s" / "wsgate-v1 s2c", 32).
 * @param {Backend} backend @param {Uint8Array} dynamicPassword @param {Uint8Array} helloNonce
 */
export async function deriveTrafficKeys(backend, dynamicPassword, helloNonce) {
  const c2s = await backend.hkdfSha256(dynamicPassword, helloNonce, utf8("wsgate-v1 c2s"), 32);
  const s2c = await backend.hkdfSha256(dynamicPassword, helloNonce, utf8("wsgate-v1 s2c"), 32);
  return { c2s, s2c };
}
