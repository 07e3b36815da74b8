// @ts-check
// Picks the crypto backend. Both give identical results on every vector.

import { WsgateError } from "../errors.js";
import { nobleBackend } from "./noble.js";
import { webCryptoBackend } from "./webcrypto.js";

/**
 * @typedef {object} Aead AES-GCM under one key; seal returns ciphertext || 16-byte tag.
 * @property {(nonce: Uint8Array, aad: Uint8Array, pt: Uint8Array) => Promise<Uint8Array>} seal
 * @property {(nonce: Uint8Array, aad: Uint8Array, ct: Uint8Array) => Promise<Uint8Array>} open rejects when the tag does not verify
 */

/**
 * @typedef {object} HpkeSealParams
 * @property {Uint8Array} pkR raw X25519 public key of the recipient
 * @property {Uint8Array} info
 * @property {Uint8Array} aad
 * @property {Uint8Array} pt
 * @property {Uint8Array} [psk] PSK (mode_psk when non-empty)
 * @property {Uint8Array} [pskId]
 * @property {number} [aeadId] 0x0002 AES-256-GCM (default), 0x0001 AES-128-GCM (RFC test vectors)
 * @property {Uint8Array} [skE] fixed ephemeral secret key, for test vectors only
 */

/**
 * @typedef {object} HpkeOpenParams
 * @property {Uint8Array} skR raw X25519 private key of the recipient
 * @property {Uint8Array} enc
 * @property {Uint8Array} info
 * @property {Uint8Array} aad
 * @property {Uint8Array} ct
 * @property {Uint8Array} [psk]
 * @property {Uint8Array} [pskId]
 * @property {number} [aeadId]
 */

/**
 * @typedef {object} HpkeSealBaseExportParams mode_base sender context: one seal, then one export
 * @property {Uint8Array} pkR raw X25519 public key of the recipient
 * @property {Uint8Array} info
 * @property {Uint8Array} pt
 * @property {Uint8Array} [aad] empty when absent
 * @property {Uint8Array} exporterContext
 * @property {number} L length of the exported secret
 * @property {number} [aeadId] 0x0002 AES-256-GCM (default), 0x0001 AES-128-GCM (RFC test vectors)
 * @property {Uint8Array} [skE] fixed ephemeral secret key, for test vectors only
 */

/**
 * @typedef {object} Backend
 * @property {"webcrypto" | "noble"} name
 * @property {(data: Uint8Array) => Promise<Uint8Array>} sha256
 * @property {(key: Uint8Array, data: Uint8Array) => Promise<Uint8Array>} hmacSha256
 * @property {(password: Uint8Array, salt: Uint8Array, iterations: number, length?: number) => Promise<Uint8Array>} pbkdf2Sha256
 * @property {(ikm: Uint8Array, salt: Uint8Array, info: Uint8Array, length: number) => Promise<Uint8Array>} hkdfSha256
 * @property {(key: Uint8Array) => Promise<Aead>} aesGcm
 * @property {(p: HpkeSealParams) => Promise<{ enc: Uint8Array, ct: Uint8Array }>} hpkeSeal
 * @property {(p: HpkeOpenParams) => Promise<Uint8Array>} hpkeOpen
 * @property {(p: HpkeSealBaseExportParams) => Promise<{ enc: Uint8Array, ct: Uint8Array, exported: Uint8Array }>} hpkeSealBaseExport
 */

/** Whether this context has Web Crypto's subtle API (secure contexts only). */
export function hasSubtle() {
  return !!(globalThis.crypto && globalThis.crypto.subtle);
}

/**
 * @param {"auto" | "webcrypto" | "noble" | undefined} choice
 * @returns {Backend}
 */
export function selectBackend(choice = "auto") {
  if (choice === "noble") return nobleBackend;
  if (choice === "webcrypto") {
    if (!hasSubtle()) {
      throw new WsgateError("unsupported", "crypto: \"webcrypto\" was requested but this page has no crypto.subtle (it is not a secure context).");
    }
    return webCryptoBackend;
  }
  if (choice !== "auto") throw new WsgateError("invalid_argument", `Unknown crypto backend "${choice}"; use "auto", "webcrypto" or "noble".`);
  return hasSubtle() ? webCryptoBackend : nobleBackend;
}

export { nobleBackend, webCryptoBackend };
