// @ts-check
// Pure-JS backend on @noble/hashes, @noble/curves and @noble/ciphers, for
// pages without crypto.subtle (plain http:// from a non-localhost host).

import { sha256 } from "@noble/hashes/sha2.js";
import { hmac } from "@noble/hashes/hmac.js";
import { pbkdf2Async } from "@noble/hashes/pbkdf2.js";
import { hkdf } from "@noble/hashes/hkdf.js";
import { gcm } from "@noble/ciphers/aes.js";
import * as hpke from "./hpke-noble.js";
import { pbkdf2Sha256Wasm } from "./pbkdf2-wasm.js";

/** @typedef {import("./index.js").Backend} Backend */

/** @type {Backend} */
export const nobleBackend = {
  name: "noble",
  async sha256(data) {
    return sha256(data);
  },
  async hmacSha256(key, data) {
    return hmac(sha256, key, data);
  },
  async pbkdf2Sha256(password, salt, iterations, length = 32) {
    // The iterations in WebAssembly (pbkdf2-wasm.js): several times faster
    // than pure JS, same results. null where WebAssembly is unavailable or
    // refused (CSP): then pure JS, yielding every 10 ms (asyncTick).
    const viaWasm = await pbkdf2Sha256Wasm(password, salt, iterations, length);
    if (viaWasm) return viaWasm;
    return pbkdf2Async(sha256, password, salt, { c: iterations, dkLen: length, asyncTick: 10 });
  },
  async hkdfSha256(ikm, salt, info, length) {
    return hkdf(sha256, ikm, salt, info, length);
  },
  async aesGcm(key) {
    if (key.length !== 16 && key.length !== 32) throw new Error("AES-GCM key must be 16 or 32 bytes");
    const k = key.slice();
    return {
      async seal(nonce, aad, pt) {
        return gcm(k, nonce, aad).encrypt(pt);
      },
      async open(nonce, aad, ct) {
        return gcm(k, nonce, aad).decrypt(ct);
      },
    };
  },
  async hpkeSeal(p) {
    return hpke.seal(p);
  },
  async hpkeOpen(p) {
    return hpke.open(p);
  },
  async hpkeSealBaseExport(p) {
    return hpke.sealBaseExport(p);
  },
};
