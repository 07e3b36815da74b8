// @ts-check
// PBKDF2-HMAC-SHA-256 with its inner loop in WebAssembly, for pages without
// crypto.subtle (plain http:// from a non-localhost host), where pure-JS
// PBKDF2 of the default 600 000 iterations takes seconds.
//
// Why not a package: hash-wasm (the usual choice) runs PBKDF2 as a JS loop
// that calls its wasm HMAC about seven times per iteration (four SHA-256
// blocks, copies across the JS/wasm boundary each time); in Chromium that is
// no faster than @noble/hashes' pure JS (docs/benchmarks.md, "Browser login
// speed"). What is slow is the loop, not SHA-256, so this file emits a small
// wasm module (16 KB, built here as bytes; nothing is fetched) that does
// the whole iteration in wasm: two SHA-256 compressions per iteration from
// the precomputed HMAC ipad/opad states (as OpenSSL and BoringSSL do), the
// message schedule in locals, no branches or table lookups on secret data.
// The first HMAC of each block (salt || INT(i), any length) and the key
// handling use @noble/hashes. Results equal noble's, Web Crypto's and
// OpenSSL's on every vector (test/crypto.test.js).
//
// The loop runs in slices of about 25 ms and yields to the page between them
// (scheduler.yield / MessageChannel), so a login does not freeze it.
//
// Where WebAssembly is missing or refused (a CSP without 'wasm-unsafe-eval'),
// pbkdf2Sha256Wasm resolves to null and the caller uses pure JS.

import { sha256 } from "@noble/hashes/sha2.js";
import { hmac } from "@noble/hashes/hmac.js";

/**
 * Work between yields to the page: the first slice is FIRST_SLICE
 * iterations; later ones are sized from its time to last about SLICE_MS,
 * under the 50 ms at which browsers count a "long task".
 */
const FIRST_SLICE = 4096;
const SLICE_MS = 25;

// Memory layout (bytes; SHA-256 words as little-endian i32 in wasm memory).
const H = 0; // working state, 8 words
const IS = 32; // HMAC inner state after the ipad block
const OS = 64; // HMAC outer state after the opad block
const T = 128; // running XOR of the U_j
const W = 160; // message block, 16 words

const K = [
  0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be,
  0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa,
  0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85,
  0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3,
  0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f,
  0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
];
const IV = [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19];

/** @param {number} n */
function uleb(n) {
  const out = [];
  do {
    let b = n & 0x7f;
    n >>>= 7;
    if (n) b |= 0x80;
    out.push(b);
  } while (n);
  return out;
}

/** @param {number} n a 32-bit value, encoded as i32 (signed LEB128) */
function sleb(n) {
  n |= 0;
  const out = [];
  for (;;) {
    const b = n & 0x7f;
    n >>= 7;
    if ((n === 0 && (b & 0x40) === 0) || (n === -1 && (b & 0x40) !== 0)) {
      out.push(b);
      return out;
    }
    out.push(b | 0x80);
  }
}

const op = { get: 0x20, set: 0x21, load: 0x28, store: 0x36, const: 0x41, add: 0x6a, sub: 0x6b, and: 0x71, or: 0x72, xor: 0x73, shr: 0x76, rotr: 0x78 };

const rotr = (/** @type {number} */ x, /** @type {number} */ n) => (x >>> n) | (x << (32 - n));
const s0 = (/** @type {number} */ x) => rotr(x, 7) ^ rotr(x, 18) ^ (x >>> 3);
const s1 = (/** @type {number} */ x) => rotr(x, 17) ^ rotr(x, 19) ^ (x >>> 10);

/**
 * The body of a function that adds the SHA-256 rounds over the block at W to
 * the state at H. `known` gives the block words fixed at build time (null:
 * read from memory); those are folded into the constants, so the PBKDF2 loop
 * (whose second half-block is always the same padding) does less work.
 * @param {(number | null)[]} known
 */
function compressBody(known) {
  /** @type {number[]} */
  const c = [];
  const get = (/** @type {number} */ l) => c.push(op.get, l);
  const set = (/** @type {number} */ l) => c.push(op.set, l);
  const k = (/** @type {number} */ v) => c.push(op.const, ...sleb(v));
  const load = (/** @type {number} */ off) => c.push(op.const, 0, op.load, 2, ...uleb(off));
  const store = (/** @type {number} */ off) => c.push(op.store, 2, ...uleb(off)); // address pushed first
  const o = (/** @type {number} */ x) => c.push(x);
  const rot = (/** @type {number} */ l, /** @type {number} */ n) => (get(l), k(n), o(op.rotr));
  // Locals 0..7: a..h (renamed each round instead of moved), 8..23: w0..w15,
  // 24: t1, 25/26: a ^ b of this round and of the last (= b ^ c of this one).
  const t1 = 24;
  let abL = 25, bcL = 26;
  const v = [0, 1, 2, 3, 4, 5, 6, 7];
  /** @type {(number | null)[]} */
  const wk = known.slice(); // the constant in each schedule slot, or null
  for (let i = 0; i < 8; i++) (load(H + 4 * i), set(i));
  get(1), get(2), o(op.xor), set(bcL); // b ^ c for round 0
  for (let i = 0; i < 64; i++) {
    const [a, b, cc, d, e, f, g, h] = v;
    const slot = i & 15;
    const wi = 8 + slot;
    if (i < 16) {
      if (wk[slot] === null) (load(W + 4 * i), set(wi));
    } else {
      // w[i] = s1(w[i-2]) + w[i-7] + s0(w[i-15]) + w[i-16], constants folded
      const j2 = (i - 2) & 15, j7 = (i - 7) & 15, j15 = (i - 15) & 15;
      let sum = 0;
      let terms = 0;
      const term = (/** @type {number} */ j, /** @type {number} */ fn, /** @type {(x: number) => number} */ f) => {
        const kv = wk[j];
        if (kv !== null) {
          sum = (sum + f(kv)) | 0;
          return;
        }
        const l = 8 + j;
        if (fn === 1) rot(l, 17), rot(l, 19), o(op.xor), get(l), k(10), o(op.shr), o(op.xor);
        else if (fn === 0) rot(l, 7), rot(l, 18), o(op.xor), get(l), k(3), o(op.shr), o(op.xor);
        else get(l);
        if (terms++) o(op.add);
      };
      term(j2, 1, s1);
      term(j7, 2, (x) => x);
      term(j15, 0, s0);
      term(slot, 2, (x) => x);
      if (terms === 0) wk[slot] = sum;
      else {
        if (sum !== 0) (k(sum), o(op.add));
        set(wi);
        wk[slot] = null;
      }
    }
    // t1 = h + S1(e) + Ch(e, f, g) + K[i] + w[i]
    get(h);
    rot(e, 6), rot(e, 11), o(op.xor), rot(e, 25), o(op.xor), o(op.add);
    get(g), get(e), get(f), get(g), o(op.xor), o(op.and), o(op.xor), o(op.add);
    const wv = wk[slot];
    if (wv !== null) (k((K[i] + wv) | 0), o(op.add));
    else (k(K[i]), o(op.add), get(wi), o(op.add));
    set(t1);
    // d += t1; h = t1 + S0(a) + Maj(a, b, c), Maj = b ^ ((a ^ b) & (b ^ c)); then rename
    get(d), get(t1), o(op.add), set(d);
    get(t1);
    rot(a, 2), rot(a, 13), o(op.xor), rot(a, 22), o(op.xor), o(op.add);
    get(a), get(b), o(op.xor), c.push(0x22, abL), get(bcL), o(op.and), get(b), o(op.xor), o(op.add);
    set(h);
    [abL, bcL] = [bcL, abL];
    v.unshift(/** @type {number} */ (v.pop()));
  }
  for (let i = 0; i < 8; i++) (k(0), load(H + 4 * i), get(v[i]), o(op.add), store(H + 4 * i));
  return [1, 27, 0x7f, ...c, 0x0b];
}

/**
 * The bytes of the module. Exports "m" (memory), "c" (compress the block at
 * W into H) and "i" (iterate n times).
 */
function moduleBytes() {
  /** @type {number[]} */
  const c = [];
  const k = (/** @type {number} */ v) => c.push(op.const, ...sleb(v));
  const load = (/** @type {number} */ off) => c.push(op.const, 0, op.load, 2, ...uleb(off));
  const store = (/** @type {number} */ off) => c.push(op.store, 2, ...uleb(off));
  const o = (/** @type {number} */ x) => c.push(x);
  // iterate(n), n >= 1: n times { H = IS; compress; W[0..8) = H; H = OS;
  // compress; W[0..8) = H; T ^= H }, with the block's second half fixed to
  // the padding of a 32-byte message after one 64-byte block.
  const copy8 = (/** @type {number} */ from, /** @type {number} */ to) => {
    for (let i = 0; i < 8; i++) (k(0), load(from + 4 * i), store(to + 4 * i));
  };
  o(0x03), o(0x40); // loop
  copy8(IS, H), o(0x10), o(1), copy8(H, W); // call 1: compress with the padding folded in
  copy8(OS, H), o(0x10), o(1), copy8(H, W);
  for (let i = 0; i < 8; i++) (k(0), load(T + 4 * i), load(H + 4 * i), o(op.xor), store(T + 4 * i));
  c.push(op.get, 0), k(1), o(op.sub), c.push(0x22, 0), o(0x0d), o(0); // n -= 1; loop while n != 0
  o(0x0b); // end loop
  const iterate = [0, ...c, 0x0b];
  const general = compressBody(new Array(16).fill(null));
  const padded = compressBody([null, null, null, null, null, null, null, null, 0x80000000, 0, 0, 0, 0, 0, 0, (64 + 32) * 8]);

  const section = (/** @type {number} */ id, /** @type {number[]} */ body) => [id, ...uleb(body.length), ...body];
  const name = (/** @type {string} */ s) => [s.length, ...Array.from(s, (ch) => ch.charCodeAt(0))];
  const code = (/** @type {number[]} */ body) => [...uleb(body.length), ...body];
  return new Uint8Array([
    0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00,
    ...section(1, [2, 0x60, 0, 0, 0x60, 1, 0x7f, 0]), // types: () -> (), (i32) -> ()
    ...section(3, [3, 0, 0, 1]), // functions: compress, compress (padded), iterate
    ...section(5, [1, 0, 1]), // one memory of one page
    ...section(7, [3, ...name("m"), 2, 0, ...name("c"), 0, 0, ...name("i"), 0, 2]),
    ...section(10, [3, ...code(general), ...code(padded), ...code(iterate)]),
  ]);
}

/** @type {any} */
let WA = globalThis.WebAssembly;
/** @type {Promise<any> | undefined} */
let compiled;

/** The compiled module, or null where WebAssembly is unavailable or refused. */
function wasmModule() {
  if (!compiled) {
    compiled = (async () => {
      try {
        if (!WA || typeof WA.compile !== "function") return null;
        return await WA.compile(moduleBytes());
      } catch {
        return null; // e.g. CSP without 'wasm-unsafe-eval'
      }
    })();
  }
  return compiled;
}

/**
 * Tests only: use this WebAssembly object (or none) from now on.
 * @param {any} wa
 */
export function setWebAssemblyForTests(wa) {
  WA = wa;
  compiled = undefined;
}

/** Whether this page can run the wasm loop. */
export async function wasmPbkdf2Available() {
  return (await wasmModule()) !== null;
}

function yieldToPage() {
  const s = /** @type {any} */ (globalThis).scheduler;
  if (s && typeof s.yield === "function") return s.yield();
  if (typeof MessageChannel === "function") {
    return new Promise((resolve) => {
      const ch = new MessageChannel();
      ch.port1.onmessage = () => {
        ch.port1.close();
        resolve(undefined);
      };
      ch.port2.postMessage(null);
    });
  }
  return new Promise((resolve) => setTimeout(resolve, 0));
}

/**
 * PBKDF2-HMAC-SHA-256 (RFC 8018), the iterations in wasm.
 * Resolves to null where WebAssembly is unavailable, or for arguments the
 * pure-JS path should judge (it throws the usual errors).
 * @param {Uint8Array} password
 * @param {Uint8Array} salt
 * @param {number} iterations
 * @param {number} [length]
 * @param {{ slice?: number }} [opts] a fixed number of iterations between
 *   yields, instead of slices of about 25 ms (tests, benchmarks)
 * @returns {Promise<Uint8Array | null>}
 */
export async function pbkdf2Sha256Wasm(password, salt, iterations, length = 32, opts = {}) {
  if (!Number.isSafeInteger(iterations) || iterations < 1 || !Number.isSafeInteger(length) || length < 1 || length > 32 * 0xffffffff) return null;
  const mod = await wasmModule();
  if (!mod) return null;
  // An instance per call: calls that overlap (each yielding) do not share memory.
  const inst = await WA.instantiate(mod);
  const { m, c: compress, i: iterate } = inst.exports;
  const mem = new DataView(m.buffer);
  const fixedSlice = opts.slice;
  let slice = fixedSlice ?? FIRST_SLICE;
  const now = () => (typeof performance !== "undefined" ? performance.now() : Date.now());
  const setWords = (/** @type {number} */ off, /** @type {ArrayLike<number>} */ words) => {
    for (let i = 0; i < words.length; i++) mem.setUint32(off + 4 * i, words[i], true);
  };
  const bytesToWords = (/** @type {Uint8Array} */ b) => {
    const dv = new DataView(b.buffer, b.byteOffset, b.byteLength);
    return Array.from({ length: b.length >> 2 }, (_, i) => dv.getUint32(4 * i, false));
  };

  // HMAC key: hashed when longer than a block, zero-padded to 64 bytes.
  const key = new Uint8Array(64);
  key.set(password.length > 64 ? sha256(password) : password);
  for (const [pad, to] of [[0x36, IS], [0x5c, OS]]) {
    setWords(H, IV);
    setWords(W, bytesToWords(key.map((x) => x ^ pad)));
    compress();
    for (let i = 0; i < 8; i++) mem.setUint32(to + 4 * i, mem.getUint32(H + 4 * i, true), true);
  }
  key.fill(0);

  const out = new Uint8Array(length);
  const block = new Uint8Array(salt.length + 4);
  block.set(salt);
  const blockView = new DataView(block.buffer);
  for (let bi = 1, pos = 0; pos < length; bi++, pos += 32) {
    blockView.setUint32(salt.length, bi, false);
    const u1 = bytesToWords(hmac(sha256, password, block));
    setWords(W, u1);
    setWords(T, u1);
    for (let left = iterations - 1; left > 0; ) {
      const n = Math.min(left, slice, 1 << 30); // an i32 count
      const t0 = now();
      iterate(n);
      const ms = now() - t0;
      left -= n;
      if (fixedSlice === undefined) slice = Math.max(1024, Math.min(1 << 22, ms > 1 ? Math.round((n * SLICE_MS) / ms) : 2 * n));
      if (left > 0) await yieldToPage();
    }
    const tail = new Uint8Array(32);
    const tailView = new DataView(tail.buffer);
    for (let i = 0; i < 8; i++) tailView.setUint32(4 * i, mem.getUint32(T + 4 * i, true), false);
    out.set(tail.subarray(0, Math.min(32, length - pos)), pos);
  }
  new Uint8Array(m.buffer).fill(0);
  return out;
}
