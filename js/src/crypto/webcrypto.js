// @ts-check
// Web Crypto backend (crypto.subtle): secure contexts (https://, localhost).
// HPKE through @hpke/core, which runs on Web Crypto; where this browser's Web
// Crypto lacks X25519, HPKE falls back to the noble implementation.

import { Aes128Gcm, Aes256Gcm, CipherSuite, DhkemX25519HkdfSha256, HkdfSha256 } from "@hpke/core";
import { x25519 } from "@noble/curves/ed25519.js";
import * as hpkeNoble from "./hpke-noble.js";

/** @typedef {import("./index.js").Backend} Backend */

function subtle() {
  const s = globalThis.crypto && globalThis.crypto.subtle;
  if (!s) throw new Error("crypto.subtle is not available in this context");
  return s;
}

/**
 * A fresh ArrayBuffer-backed copy: Web Crypto accepts any BufferSource, but
 * a copy also detaches us from later mutation by the caller.
 * @param {Uint8Array} b
 */
function buf(b) {
  return b.slice();
}

/** @type {Promise<boolean> | undefined} */
let x25519Support;

/** Whether this Web Crypto implements X25519 (Chromium 133+, Firefox 130+, Safari 17+, Node 20). */
export function webCryptoHasX25519() {
  if (!x25519Support) {
    x25519Support = subtle()
      .generateKey({ name: "X25519" }, false, ["deriveBits"])
      .then(
        () => true,
        () => false,
      );
  }
  return x25519Support;
}

/** @type {Map<number, CipherSuite>} */
const suites = new Map();
/** @param {number} aeadId 1 = AES-128-GCM (RFC 9180 test vectors), 2 = AES-256-GCM (wsgate) */
function hpkeSuite(aeadId) {
  let s = suites.get(aeadId);
  if (!s) {
    if (aeadId !== 1 && aeadId !== 2) throw new Error(`HPKE: unsupported AEAD ${aeadId}`);
    const aead = aeadId === 1 ? new Aes128Gcm() : new Aes256Gcm();
    s = new CipherSuite({ kem: new DhkemX25519HkdfSha256(), kdf: new HkdfSha256(), aead });
    suites.set(aeadId, s);
  }
  return s;
}

/** @param {{ psk?: Uint8Array, pskId?: Uint8Array }} p */
function pskParam(p) {
  return p.psk && p.psk.length > 0 ? { psk: { key: buf(p.psk), id: buf(/** @type {Uint8Array} */ (p.pskId)) } } : {};
}

/** @type {Backend} */
export const webCryptoBackend = {
  name: "webcrypto",
  async sha256(data) {
    return new Uint8Array(await subtle().digest("SHA-256", buf(data)));
  },
  async hmacSha256(key, data) {
    const k = await subtle().importKey("raw", buf(key), { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
    return new Uint8Array(await subtle().sign("HMAC", k, buf(data)));
  },
  async pbkdf2Sha256(password, salt, iterations, length = 32) {
    const k = await subtle().importKey("raw", buf(password), "PBKDF2", false, ["deriveBits"]);
    const bits = await subtle().deriveBits({ name: "PBKDF2", hash: "SHA-256", salt: buf(salt), iterations }, k, length * 8);
    return new Uint8Array(bits);
  },
  async hkdfSha256(ikm, salt, info, length) {
    const k = await subtle().importKey("raw", buf(ikm), "HKDF", false, ["deriveBits"]);
    const bits = await subtle().deriveBits({ name: "HKDF", hash: "SHA-256", salt: buf(salt), info: buf(info) }, k, length * 8);
    return new Uint8Array(bits);
  },
  async aesGcm(key) {
    if (key.length !== 16 && key.length !== 32) throw new Error("AES-GCM key must be 16 or 32 bytes");
    const k = await subtle().importKey("raw", buf(key), "AES-GCM", false, ["encrypt", "decrypt"]);
    return {
      async seal(nonce, aad, pt) {
        const out = await subtle().encrypt({ name: "AES-GCM", iv: buf(nonce), additionalData: buf(aad), tagLength: 128 }, k, buf(pt));
        return new Uint8Array(out);
      },
      async open(nonce, aad, ct) {
        const out = await subtle().decrypt({ name: "AES-GCM", iv: buf(nonce), additionalData: buf(aad), tagLength: 128 }, k, buf(ct));
        return new Uint8Array(out);
      },
    };
  },
  async hpkeSeal(p) {
    // A fixed ephemeral key (tests only) cannot be passed to @hpke/core.
    if (p.skE || !(await webCryptoHasX25519())) return hpkeNoble.seal(p);
    const s = hpkeSuite(p.aeadId ?? 0x0002);
    const recipientPublicKey = await s.kem.importKey("raw", buf(p.pkR).buffer, true);
    const { ct, enc } = await s.seal({ recipientPublicKey, info: buf(p.info), ...pskParam(p) }, buf(p.pt), buf(p.aad));
    return { enc: new Uint8Array(enc), ct: new Uint8Array(ct) };
  },
  async hpkeOpen(p) {
    if (!(await webCryptoHasX25519())) return hpkeNoble.open(p);
    const s = hpkeSuite(p.aeadId ?? 0x0002);
    const recipientKey = await s.kem.importKey("raw", buf(p.skR).buffer, false);
    const pt = await s.open({ recipientKey, enc: buf(p.enc), info: buf(p.info), ...pskParam(p) }, buf(p.ct), buf(p.aad));
    return new Uint8Array(pt);
  },
  async hpkeSealBaseExport(p) {
    if (!(await webCryptoHasX25519())) return hpkeNoble.sealBaseExport(p);
    const s = hpkeSuite(p.aeadId ?? 0x0002);
    const recipientPublicKey = await s.kem.importKey("raw", buf(p.pkR).buffer, true);
    /** @type {{ recipientPublicKey: CryptoKey, info: ArrayBuffer, ekm?: CryptoKeyPair }} */
    const params = { recipientPublicKey, info: buf(p.info).buffer };
    if (p.skE) {
      // Test vectors only: @hpke/core takes a fixed ephemeral key pair as
      // its (testing-only) `ekm`.
      const privateKey = await s.kem.importKey("raw", buf(p.skE).buffer, false);
      const publicKey = await s.kem.importKey("raw", x25519.getPublicKey(p.skE).buffer, true);
      params.ekm = { privateKey, publicKey };
    }
    const ctx = await s.createSenderContext(params);
    const ct = await ctx.seal(buf(p.pt).buffer, buf(p.aad ?? new Uint8Array(0)).buffer);
    const exported = await ctx.export(buf(p.exporterContext).buffer, p.L);
    return { enc: new Uint8Array(ctx.enc), ct: new Uint8Array(ct), exported: new Uint8Array(exported) };
  },
};
