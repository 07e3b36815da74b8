// @ts-check
// The binary envelope (protocol.md §5.1) and protected frames (§5.3).

import { concat, fromUtf8, utf8 } from "./bytes.js";

export const T = Object.freeze({
  HELLO: 0x01,
  KEY_INIT: 0x02,
  KEY_ACK: 0x03,
  REQUEST: 0x10,
  RESPONSE: 0x11,
  SUBSCRIBE: 0x20,
  UNSUBSCRIBE: 0x21,
  PUBLISH: 0x22,
  EVENT: 0x23,
  EVENT_AT: 0x24,
  RESYNC: 0x25,
  PRESENCE: 0x26,
  PRESENCE_EVENT: 0x27,
  LOGOUT: 0x31,
});

/** @type {Record<number, string>} */
export const TYPE_NAMES = Object.freeze({
  0x01: "HELLO",
  0x02: "KEY_INIT",
  0x03: "KEY_ACK",
  0x10: "REQUEST",
  0x11: "RESPONSE",
  0x20: "SUBSCRIBE",
  0x21: "UNSUBSCRIBE",
  0x22: "PUBLISH",
  0x23: "EVENT",
  0x24: "EVENT_AT",
  0x25: "RESYNC",
  0x26: "PRESENCE",
  0x27: "PRESENCE_EVENT",
  0x31: "LOGOUT",
});

export const FLAG_ENC = 0x01;
export const FLAG_ERR = 0x02;
export const MAX_NAME_LEN = 1024;
export const TAG_LEN = 16;
const EMPTY = new Uint8Array(0);

/** An envelope the protocol refuses (the connection closes with 4400). */
export class EnvelopeError extends Error {
  /** @param {string} message */
  constructor(message) {
    super(message);
    this.name = "EnvelopeError";
  }
}

/**
 * @typedef {object} Envelope
 * @property {number} type
 * @property {number} flags
 * @property {number} id u32
 * @property {string} name
 * @property {Uint8Array} header bytes [0, 8 + nlen)
 * @property {Uint8Array} body
 */

/**
 * Encodes the header of an envelope.
 * @param {number} type @param {number} flags @param {number} id @param {string} name
 */
export function encodeHeader(type, flags, id, name) {
  const n = utf8(name);
  if (n.length > MAX_NAME_LEN) throw new EnvelopeError(`name longer than ${MAX_NAME_LEN} bytes`);
  if (!Number.isInteger(id) || id < 0 || id > 0xffffffff) throw new EnvelopeError("id out of range");
  const h = new Uint8Array(8 + n.length);
  const v = new DataView(h.buffer);
  h[0] = type;
  h[1] = flags;
  v.setUint32(2, id);
  v.setUint16(6, n.length);
  h.set(n, 8);
  return h;
}

/**
 * Encodes an unprotected envelope (HELLO, KEY_INIT).
 * @param {{ type: number, flags?: number, id?: number, name?: string, body?: Uint8Array }} e
 */
export function encodeEnvelope(e) {
  return concat(encodeHeader(e.type, e.flags ?? 0, e.id ?? 0, e.name ?? ""), e.body ?? EMPTY);
}

/**
 * Decodes an envelope with every check of protocol.md §5.1 except the minimum
 * protected body length (see openFrame).
 * @param {Uint8Array} msg
 * @returns {Envelope}
 */
export function decodeEnvelope(msg) {
  if (msg.length < 8) throw new EnvelopeError("message shorter than the 8-byte header");
  const v = new DataView(msg.buffer, msg.byteOffset, msg.byteLength);
  const type = msg[0];
  const flags = msg[1];
  if ((flags & ~(FLAG_ENC | FLAG_ERR)) !== 0) throw new EnvelopeError("reserved flag bits set");
  const id = v.getUint32(2);
  const nlen = v.getUint16(6);
  if (nlen > MAX_NAME_LEN) throw new EnvelopeError("name longer than 1024 bytes");
  if (8 + nlen > msg.length) throw new EnvelopeError("name runs past the end of the message");
  let name;
  try {
    name = fromUtf8(msg.subarray(8, 8 + nlen));
  } catch {
    throw new EnvelopeError("name is not valid UTF-8");
  }
  return { type, flags, id, name, header: msg.subarray(0, 8 + nlen), body: msg.subarray(8 + nlen) };
}

/**
 * nonce = 4 zero bytes || seq (u64 big-endian).
 * @param {number} seq a non-negative safe integer
 */
export function frameNonce(seq) {
  if (!Number.isSafeInteger(seq) || seq < 0) throw new RangeError("sequence number out of range");
  const n = new Uint8Array(12);
  const v = new DataView(n.buffer);
  v.setUint32(4, Math.floor(seq / 2 ** 32));
  v.setUint32(8, seq >>> 0);
  return n;
}

/**
 * Seals a protected frame (protocol.md §5.3).
 * ENC: body = AES-GCM(key, nonce, aad = header, plaintext).
 * else: body = plaintext || tag, tag = AES-GCM tag of "" with aad = header || plaintext.
 * @param {import("./crypto/index.js").Aead} aead
 * @param {number} seq
 * @param {{ type: number, flags: number, id: number, name: string, plaintext: Uint8Array }} f
 */
export async function sealFrame(aead, seq, f) {
  const header = encodeHeader(f.type, f.flags, f.id, f.name);
  const nonce = frameNonce(seq);
  if (f.flags & FLAG_ENC) return concat(header, await aead.seal(nonce, header, f.plaintext));
  const tag = await aead.seal(nonce, concat(header, f.plaintext), EMPTY);
  return concat(header, f.plaintext, tag);
}

/**
 * Opens a protected frame; throws EnvelopeError on any malformation or
 * verification failure.
 * @param {import("./crypto/index.js").Aead} aead
 * @param {number} seq
 * @param {Uint8Array} wire
 * @returns {Promise<{ type: number, flags: number, id: number, name: string, plaintext: Uint8Array }>}
 */
export async function openFrame(aead, seq, wire) {
  const e = decodeEnvelope(wire);
  if (e.body.length < TAG_LEN) throw new EnvelopeError("protected body shorter than the 16-byte tag");
  const nonce = frameNonce(seq);
  let plaintext;
  try {
    if (e.flags & FLAG_ENC) {
      plaintext = await aead.open(nonce, e.header, e.body);
    } else {
      const pt = e.body.subarray(0, e.body.length - TAG_LEN);
      const tag = e.body.subarray(e.body.length - TAG_LEN);
      const empty = await aead.open(nonce, concat(e.header, pt), tag);
      if (empty.length !== 0) throw new Error("unexpected");
      plaintext = pt.slice();
    }
  } catch {
    throw new EnvelopeError("frame failed to verify");
  }
  return { type: e.type, flags: e.flags, id: e.id, name: e.name, plaintext };
}
