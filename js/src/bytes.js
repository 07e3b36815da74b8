// @ts-check
// Byte helpers: UTF-8, hex, base64 / base64url (strict, protocol.md §2), concatenation.
// No cryptography here.

import { WsgateError } from "./errors.js";

const enc = new TextEncoder();
const decStrict = new TextDecoder("utf-8", { fatal: true });

/** @param {string} s @returns {Uint8Array} */
export function utf8(s) {
  return enc.encode(s);
}

/**
 * Strict UTF-8 decoding: invalid input throws.
 * @param {Uint8Array} b
 * @returns {string}
 */
export function fromUtf8(b) {
  return decStrict.decode(b);
}

/** @param {...Uint8Array} parts @returns {Uint8Array} */
export function concat(...parts) {
  let n = 0;
  for (const p of parts) n += p.length;
  const out = new Uint8Array(n);
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

/** @param {Uint8Array} b @returns {string} */
export function toHex(b) {
  let s = "";
  for (let i = 0; i < b.length; i++) s += b[i].toString(16).padStart(2, "0");
  return s;
}

/** @param {string} h @returns {Uint8Array} */
export function fromHex(h) {
  if (h.length % 2 !== 0 || !/^[0-9a-fA-F]*$/.test(h)) throw new TypeError("invalid hex string");
  const out = new Uint8Array(h.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(h.slice(2 * i, 2 * i + 2), 16);
  return out;
}

/**
 * Comparison whose time does not depend on where the inputs differ.
 * @param {Uint8Array} a @param {Uint8Array} b
 */
export function equalBytes(a, b) {
  if (a.length !== b.length) return false;
  let d = 0;
  for (let i = 0; i < a.length; i++) d |= a[i] ^ b[i];
  return d === 0;
}

const STD = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/** @param {string} alphabet */
function reverse(alphabet) {
  const r = new Int16Array(128).fill(-1);
  for (let i = 0; i < 64; i++) r[alphabet.charCodeAt(i)] = i;
  return r;
}
const STD_R = reverse(STD);
const URL_R = reverse(URL);

/** @param {Uint8Array} b @param {string} alphabet @param {boolean} pad */
function encode(b, alphabet, pad) {
  let s = "";
  let i = 0;
  for (; i + 2 < b.length; i += 3) {
    const n = (b[i] << 16) | (b[i + 1] << 8) | b[i + 2];
    s += alphabet[n >> 18] + alphabet[(n >> 12) & 63] + alphabet[(n >> 6) & 63] + alphabet[n & 63];
  }
  const rest = b.length - i;
  if (rest === 1) {
    const n = b[i] << 16;
    s += alphabet[n >> 18] + alphabet[(n >> 12) & 63] + (pad ? "==" : "");
  } else if (rest === 2) {
    const n = (b[i] << 16) | (b[i + 1] << 8);
    s += alphabet[n >> 18] + alphabet[(n >> 12) & 63] + alphabet[(n >> 6) & 63] + (pad ? "=" : "");
  }
  return s;
}

/**
 * @param {string} s unpadded text
 * @param {Int16Array} rev
 * @returns {Uint8Array | null}
 */
function decode(s, rev) {
  if (s.length % 4 === 1) return null;
  const out = new Uint8Array(Math.floor((s.length * 3) / 4));
  let acc = 0;
  let bits = 0;
  let o = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    const v = c < 128 ? rev[c] : -1;
    if (v < 0) return null;
    acc = (acc << 6) | v;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out[o++] = (acc >> bits) & 0xff;
      acc &= (1 << bits) - 1;
    }
  }
  if (acc !== 0) return null; // non-zero trailing bits
  return out;
}

/** base64url without padding. @param {Uint8Array} b */
export function b64u(b) {
  return encode(b, URL, false);
}

/**
 * Strict base64url decoding (protocol.md §2): no padding, only [A-Za-z0-9_-],
 * length not ≡ 1 (mod 4), zero trailing bits. Returns null when invalid.
 * @param {string} s
 * @returns {Uint8Array | null}
 */
export function fromB64uOrNull(s) {
  if (typeof s !== "string") return null;
  return decode(s, URL_R);
}

/**
 * Like fromB64uOrNull, throwing a protocol_error naming `what`.
 * @param {unknown} s @param {string} what @param {number} [len] required length
 */
export function fromB64u(s, what, len) {
  const b = typeof s === "string" ? fromB64uOrNull(s) : null;
  if (!b || (len !== undefined && b.length !== len)) {
    throw new WsgateError("protocol_error", `The server sent an invalid ${what}${len !== undefined ? ` (expected ${len} bytes, base64url)` : ""}.`);
  }
  return b;
}

/** Standard base64 with padding (RFC 4648 §4). @param {Uint8Array} b */
export function b64(b) {
  return encode(b, STD, true);
}

/**
 * Strict standard base64 with canonical padding; null when invalid.
 * @param {string} s
 * @returns {Uint8Array | null}
 */
export function fromB64OrNull(s) {
  if (typeof s !== "string" || s.length % 4 !== 0) return null;
  let body = s;
  if (body.endsWith("==")) body = body.slice(0, -2);
  else if (body.endsWith("=")) body = body.slice(0, -1);
  if (body.includes("=")) return null;
  return decode(body, STD_R);
}

/**
 * Cryptographically secure random bytes (crypto.getRandomValues exists in
 * insecure contexts too).
 * @param {number} n
 */
export function randomBytes(n) {
  const c = globalThis.crypto;
  if (!c || typeof c.getRandomValues !== "function") {
    throw new WsgateError("unsupported", "This browser has no crypto.getRandomValues; sm.js cannot run here.");
  }
  const out = new Uint8Array(n);
  c.getRandomValues(out);
  return out;
}
