// @ts-check
// RFC 9180 (HPKE) on the audited noble primitives, for pages without
// crypto.subtle: sender and recipient contexts (seal/open with the sequence
// number, Export of §5.3) and single-shot seal/open over them. Only what
// wsgate needs:
//   KEM  DHKEM(X25519, HKDF-SHA256)  0x0020
//   KDF  HKDF-SHA256                 0x0001
//   AEAD AES-128-GCM 0x0001 / AES-256-GCM 0x0002 (parametrized so the RFC's
//        A.1 vectors, which use AES-128-GCM, check the same key schedule code)
//   modes base (0x00) and psk (0x01).
// Nothing here is a primitive: X25519, HKDF and AES-GCM come from
// @noble/curves, @noble/hashes and @noble/ciphers; this file is the RFC's key
// schedule, which is protocol glue over them.

import { x25519 } from "@noble/curves/ed25519.js";
import { expand, extract } from "@noble/hashes/hkdf.js";
import { sha256 } from "@noble/hashes/sha2.js";
import { gcm } from "@noble/ciphers/aes.js";
import { concat, utf8 } from "../bytes.js";

export const MODE_BASE = 0x00;
export const MODE_PSK = 0x01;
const KEM_ID = 0x0020;
const KDF_ID = 0x0001;
const NSECRET = 32;
const NH = 32;
const NN = 12;
const EMPTY = new Uint8Array(0);
const HPKE_V1 = utf8("HPKE-v1");

/** @param {number} n @param {number} len */
function i2osp(n, len) {
  const out = new Uint8Array(len);
  for (let i = len - 1; i >= 0; i--) {
    out[i] = n & 0xff;
    n = Math.floor(n / 256);
  }
  return out;
}

const KEM_SUITE = concat(utf8("KEM"), i2osp(KEM_ID, 2));

/** @param {Uint8Array} suite @param {Uint8Array} salt @param {string} label @param {Uint8Array} ikm */
function labeledExtract(suite, salt, label, ikm) {
  return extract(sha256, concat(HPKE_V1, suite, utf8(label), ikm), salt);
}

/** @param {Uint8Array} suite @param {Uint8Array} prk @param {string} label @param {Uint8Array} info @param {number} L */
function labeledExpand(suite, prk, label, info, L) {
  return expand(sha256, prk, concat(i2osp(L, 2), HPKE_V1, suite, utf8(label), info), L);
}

/**
 * DHKEM ExtractAndExpand.
 * @param {Uint8Array} dh @param {Uint8Array} kemContext
 */
function extractAndExpand(dh, kemContext) {
  const eaePrk = labeledExtract(KEM_SUITE, EMPTY, "eae_prk", dh);
  return labeledExpand(KEM_SUITE, eaePrk, "shared_secret", kemContext, NSECRET);
}

/**
 * DeriveKeyPair(ikm) of DHKEM(X25519) (RFC 9180 §7.1.3), for test vectors
 * that give the ephemeral key as its IKM.
 * @param {Uint8Array} ikm
 */
export function deriveKeyPair(ikm) {
  const dkpPrk = labeledExtract(KEM_SUITE, EMPTY, "dkp_prk", ikm);
  const sk = labeledExpand(KEM_SUITE, dkpPrk, "sk", EMPTY, 32);
  return { sk, pk: x25519.getPublicKey(sk) };
}

/**
 * Encap(pkR) with an optional fixed ephemeral key (tests only).
 * @param {Uint8Array} pkR @param {Uint8Array} [skE]
 */
export function encap(pkR, skE) {
  const sk = skE ?? x25519.utils.randomSecretKey();
  const pkE = x25519.getPublicKey(sk);
  const dh = x25519.getSharedSecret(sk, pkR); // throws on low-order points
  const enc = pkE;
  return { sharedSecret: extractAndExpand(dh, concat(enc, pkR)), enc };
}

/** @param {Uint8Array} enc @param {Uint8Array} skR */
export function decap(enc, skR) {
  const dh = x25519.getSharedSecret(skR, enc);
  const pkR = x25519.getPublicKey(skR);
  return extractAndExpand(dh, concat(enc, pkR));
}

/**
 * The key schedule of RFC 9180 §5.1.
 * @param {{ mode: number, sharedSecret: Uint8Array, info: Uint8Array, psk?: Uint8Array, pskId?: Uint8Array, aeadId: number, nk: number }} p
 */
export function keySchedule({ mode, sharedSecret, info, psk = EMPTY, pskId = EMPTY, aeadId, nk }) {
  const gotPsk = psk.length > 0;
  const gotPskId = pskId.length > 0;
  if (gotPsk !== gotPskId) throw new Error("HPKE: inconsistent PSK inputs");
  if (gotPsk && mode === MODE_BASE) throw new Error("HPKE: PSK input provided when not needed");
  if (!gotPsk && mode === MODE_PSK) throw new Error("HPKE: missing required PSK input");
  const suite = hpkeSuiteId(aeadId);
  const pskIdHash = labeledExtract(suite, EMPTY, "psk_id_hash", pskId);
  const infoHash = labeledExtract(suite, EMPTY, "info_hash", info);
  const keyScheduleContext = concat(Uint8Array.of(mode), pskIdHash, infoHash);
  const secret = labeledExtract(suite, sharedSecret, "secret", psk);
  const key = labeledExpand(suite, secret, "key", keyScheduleContext, nk);
  const baseNonce = labeledExpand(suite, secret, "base_nonce", keyScheduleContext, NN);
  const exporterSecret = labeledExpand(suite, secret, "exp", keyScheduleContext, NH);
  return { keyScheduleContext, secret, key, baseNonce, exporterSecret };
}

/** AEAD parameters by id. @param {number} aeadId */
function nkOf(aeadId) {
  if (aeadId === 0x0001) return 16;
  if (aeadId === 0x0002) return 32;
  throw new Error(`HPKE: unsupported AEAD ${aeadId}`);
}

/**
 * nonce = base_nonce XOR I2OSP(seq, Nn) (RFC 9180 §5.2).
 * @param {Uint8Array} baseNonce @param {number} seq
 */
function seqNonce(baseNonce, seq) {
  const n = baseNonce.slice();
  const s = i2osp(seq, NN);
  for (let i = 0; i < NN; i++) n[i] ^= s[i];
  return n;
}

/**
 * An encryption context of RFC 9180 §5.2/§5.3 over a key schedule's output.
 * @param {{ key: Uint8Array, baseNonce: Uint8Array, exporterSecret: Uint8Array }} ks @param {Uint8Array} suite
 */
function context(ks, suite) {
  let seq = 0;
  const next = () => {
    if (seq >= Number.MAX_SAFE_INTEGER) throw new Error("HPKE: message limit reached");
    return seqNonce(ks.baseNonce, seq++);
  };
  return {
    /** @param {Uint8Array} aad @param {Uint8Array} pt */
    seal(aad, pt) {
      return gcm(ks.key, next(), aad).encrypt(pt);
    },
    /** Throws when the ciphertext does not verify (the sequence number then stays). @param {Uint8Array} aad @param {Uint8Array} ct */
    open(aad, ct) {
      const pt = gcm(ks.key, seqNonce(ks.baseNonce, seq), aad).decrypt(ct);
      seq++;
      return pt;
    },
    /** Export(exporter_context, L) = LabeledExpand(exporter_secret, "sec", exporter_context, L). @param {Uint8Array} exporterContext @param {number} L */
    export(exporterContext, L) {
      if (!Number.isInteger(L) || L < 1 || L > 255 * NH) throw new Error("HPKE: invalid export length");
      return labeledExpand(suite, ks.exporterSecret, "sec", exporterContext, L);
    },
  };
}

/** @param {number} aeadId */
function hpkeSuiteId(aeadId) {
  return concat(utf8("HPKE"), i2osp(KEM_ID, 2), i2osp(KDF_ID, 2), i2osp(aeadId, 2));
}

/**
 * SetupBaseS / SetupPSKS (mode_psk when psk is non-empty): the sender
 * context and enc.
 * @param {{ pkR: Uint8Array, info: Uint8Array, psk?: Uint8Array, pskId?: Uint8Array, aeadId?: number, skE?: Uint8Array }} p
 */
export function setupS({ pkR, info, psk, pskId, aeadId = 0x0002, skE }) {
  const mode = psk && psk.length > 0 ? MODE_PSK : MODE_BASE;
  const { sharedSecret, enc } = encap(pkR, skE);
  const ks = keySchedule({ mode, sharedSecret, info, psk, pskId, aeadId, nk: nkOf(aeadId) });
  return { enc, ctx: context(ks, hpkeSuiteId(aeadId)) };
}

/**
 * SetupBaseR / SetupPSKR: the recipient context.
 * @param {{ skR: Uint8Array, enc: Uint8Array, info: Uint8Array, psk?: Uint8Array, pskId?: Uint8Array, aeadId?: number }} p
 */
export function setupR({ skR, enc, info, psk, pskId, aeadId = 0x0002 }) {
  const mode = psk && psk.length > 0 ? MODE_PSK : MODE_BASE;
  const sharedSecret = decap(enc, skR);
  const ks = keySchedule({ mode, sharedSecret, info, psk, pskId, aeadId, nk: nkOf(aeadId) });
  return context(ks, hpkeSuiteId(aeadId));
}

/**
 * Single-shot seal (sequence number 0, so the nonce is base_nonce).
 * @param {{ pkR: Uint8Array, info: Uint8Array, aad: Uint8Array, pt: Uint8Array, psk?: Uint8Array, pskId?: Uint8Array, aeadId?: number, skE?: Uint8Array }} p
 */
export function seal(p) {
  const { enc, ctx } = setupS(p);
  return { enc, ct: ctx.seal(p.aad, p.pt) };
}

/**
 * Single-shot open; throws when the ciphertext does not verify.
 * @param {{ skR: Uint8Array, enc: Uint8Array, info: Uint8Array, aad: Uint8Array, ct: Uint8Array, psk?: Uint8Array, pskId?: Uint8Array, aeadId?: number }} p
 */
export function open(p) {
  return setupR(p).open(p.aad, p.ct);
}

/**
 * mode_base seal of one message and one export from the same sender
 * context (the sealed login, docs/protocol.md §4.1).
 * @param {{ pkR: Uint8Array, info: Uint8Array, aad?: Uint8Array, pt: Uint8Array, exporterContext: Uint8Array, L: number, aeadId?: number, skE?: Uint8Array }} p
 */
export function sealBaseExport({ pkR, info, aad = EMPTY, pt, exporterContext, L, aeadId = 0x0002, skE }) {
  const { enc, ctx } = setupS({ pkR, info, aeadId, skE });
  const ct = ctx.seal(aad, pt);
  return { enc, ct, exported: ctx.export(exporterContext, L) };
}
