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
// wasm module (built here as bytes; nothing is fetched) that does the whole
// iteration in wasm: two SHA-256 compressions per iteration from the
// precomputed HMAC ipad/opad states (as OpenSSL and BoringSSL do), the
// message schedule in 128-bit SIMD where the engine has it (every current
// browser; else in scalar locals), no branches or table lookups on secret
// data.
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
const WK = 256; // w[t] + K[t] of the SIMD schedule, 64 words

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
 * An emitter of wasm code into `c`, with the few instructions the two
 * compression functions use.
 * @param {number[]} c
 */
function emitter(c) {
  const e = {
    get: (/** @type {number} */ l) => c.push(op.get, l),
    set: (/** @type {number} */ l) => c.push(op.set, l),
    tee: (/** @type {number} */ l) => c.push(0x22, l),
    k: (/** @type {number} */ v) => c.push(op.const, ...sleb(v)),
    load: (/** @type {number} */ off) => c.push(op.const, 0, op.load, 2, ...uleb(off)),
    store: (/** @type {number} */ off) => c.push(op.store, 2, ...uleb(off)), // address pushed first
    o: (/** @type {number} */ x) => c.push(x),
    rot: (/** @type {number} */ l, /** @type {number} */ n) => (e.get(l), e.k(n), e.o(op.rotr)),
  };
  return e;
}

/**
 * The 64 rounds over the state in locals `state` (a..h; after 64 rounds
 * the renaming is back where it began). `addWK(i)` emits code that adds
 * K[i] + w[i] to the value on the stack; `before(i)` emits whatever round i
 * needs first (a schedule step). Locals t1, ab and bc are scratch: t1 = h +
 * K[i] + w[i] + Ch(e, f, g) + S1(e); ab/bc hold a ^ b of this round and of
 * the last (= b ^ c of this one), so Maj = b ^ ((a ^ b) & (b ^ c)) costs two
 * operations.
 * @param {number[]} c
 * @param {number[]} state
 * @param {{ t1: number, ab: number, bc: number }} scratch
 * @param {(i: number) => void} before
 * @param {(i: number) => void} addWK
 */
function rounds(c, state, scratch, before, addWK) {
  const { get, set, tee, o, rot } = emitter(c);
  const { t1 } = scratch;
  let { ab: abL, bc: bcL } = scratch;
  const v = state.slice(); // renamed each round instead of moved
  get(v[1]), get(v[2]), o(op.xor), set(bcL); // b ^ c for round 0
  for (let i = 0; i < 64; i++) {
    const [a, b, , d, e, f, g, h] = v;
    before(i);
    // Summed so that the newest value (e, then a) comes in last: the loop
    // is bound by the chain from one round's e and a to the next, and this
    // order made it 8 % faster than h + S1 + Ch + K + w, t1 + S0 + Maj.
    get(h);
    addWK(i);
    get(g), get(e), get(f), get(g), o(op.xor), o(op.and), o(op.xor), o(op.add);
    rot(e, 6), rot(e, 11), o(op.xor), rot(e, 25), o(op.xor), o(op.add);
    set(t1);
    get(d), get(t1), o(op.add), set(d);
    get(t1);
    get(a), get(b), o(op.xor), tee(abL), get(bcL), o(op.and), get(b), o(op.xor), o(op.add);
    rot(a, 2), rot(a, 13), o(op.xor), rot(a, 22), o(op.xor), o(op.add);
    set(h);
    [abL, bcL] = [bcL, abL];
    v.unshift(/** @type {number} */ (v.pop()));
  }
}

/**
 * The body of a function that adds the SHA-256 rounds over the block at W to
 * the state at H, the message schedule in scalar locals. `known` gives the
 * block words fixed at build time (null: read from memory); those are folded
 * into the constants, so the PBKDF2 loop (whose second half-block is always
 * the same padding) does less work.
 * @param {(number | null)[]} known
 */
function compressBody(known) {
  /** @type {number[]} */
  const c = [];
  const { get, set, load, store, k, o, rot } = emitter(c);
  // Locals 0..7: a..h, 8..23: w0..w15, 24: t1, 25/26: ab/bc.
  /** @type {(number | null)[]} */
  const wk = known.slice(); // the constant in each schedule slot, or null
  const before = (/** @type {number} */ i) => {
    const slot = i & 15;
    const wi = 8 + slot;
    if (i < 16) {
      if (wk[slot] === null) (load(W + 4 * i), set(wi));
      return;
    }
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
  };
  const addWK = (/** @type {number} */ i) => {
    const wv = wk[i & 15];
    if (wv !== null) (k((K[i] + wv) | 0), o(op.add));
    else (k(K[i]), o(op.add), get(8 + (i & 15)), o(op.add));
  };
  const state = [0, 1, 2, 3, 4, 5, 6, 7];
  for (let i = 0; i < 8; i++) (load(H + 4 * i), set(i));
  rounds(c, state, { t1: 24, ab: 25, bc: 26 }, before, addWK);
  for (let i = 0; i < 8; i++) (k(0), load(H + 4 * i), get(i), o(op.add), store(H + 4 * i));
  return [1, 27, 0x7f, ...c, 0x0b];
}

// WebAssembly SIMD (fixed-width, 128-bit) opcodes, after the 0xfd prefix.
const vop = { load: 0x00, store: 0x0b, const: 0x0c, shuffle: 0x0d, shl: 0xab, shr: 0xad, add: 0xae, xor: 0x51, shr64: 0xcd };
const lanes = (/** @type {number} */ from) => Array.from({ length: 16 }, (_, i) => from + i);

/**
 * The body of iterate(n) with SHA-256's message schedule four words at a
 * time in 128-bit SIMD (as Intel's SSE/AVX SHA-256 code does), which takes
 * about a third of SHA-256's operations off the scalar side: 15 % faster
 * than the scalar loop in Node and Chromium (docs/benchmarks.md). Each
 * schedule step stores w[t..t+3] + K[t..t+3] to memory at WK, where its
 * rounds load it; the steps are interleaved with the rounds (step j before
 * round 4j), well ahead of use. Both compressions of an iteration are
 * inline, the state and the message's first half in locals: each digest
 * becomes the next block's first half (its second half is the fixed
 * padding, PAD32, so rounds 8..15 take constants). The first half's
 * vectors are built from those locals (splat, replace_lane), not stored
 * and loaded back: a 16-byte load of four 4-byte stores stalls.
 */
function iterateBodySimd() {
  /** @type {number[]} */
  const c = [];
  const { get, set, k, o, load, store } = emitter(c);
  const v = (/** @type {number} */ x) => c.push(0xfd, ...uleb(x));
  const vconst = (/** @type {number[]} */ words) => {
    v(vop.const);
    for (const w of words) c.push(w & 0xff, (w >>> 8) & 0xff, (w >>> 16) & 0xff, (w >>> 24) & 0xff);
  };
  const shuffle = (/** @type {number[]} */ bytes) => (v(vop.shuffle), c.push(...bytes));
  // x -> rotr(x, r1) ^ rotr(x, r2) ^ (x >>> sh) on four lanes, x in local l
  const sigma = (/** @type {number} */ l, /** @type {number} */ r1, /** @type {number} */ r2, /** @type {number} */ sh) => {
    get(l), k(r1), v(vop.shr), get(l), k(32 - r1), v(vop.shl), v(vop.xor);
    get(l), k(r2), v(vop.shr), v(vop.xor), get(l), k(32 - r2), v(vop.shl), v(vop.xor);
    get(l), k(sh), v(vop.shr), v(vop.xor);
  };
  // s1 of lanes `from` and `from + 1` of local l, into lanes 0-1 (high:
  // 2-3) of a vector that is 0 elsewhere. Each word is doubled into a
  // 64-bit lane, where a 64-bit shift is a 32-bit rotation (as Intel's
  // SHA-256 code does it): 7 operations instead of 10.
  const sigma1Pair = (/** @type {number} */ l, /** @type {number} */ from, /** @type {boolean} */ high) => {
    const word = (/** @type {number} */ lane) => lanes(4 * lane).slice(0, 4);
    get(l), get(l), shuffle([...word(from), ...word(from), ...word(from + 1), ...word(from + 1)]), set(tmp);
    get(tmp), k(17), v(vop.shr64), get(tmp), k(19), v(vop.shr64), v(vop.xor);
    get(tmp), k(10), v(vop.shr), v(vop.xor);
    // the low half of each 64-bit lane is s1 of its word
    const zero = lanes(16).slice(0, 8);
    const both = [...lanes(0).slice(0, 4), ...lanes(8).slice(0, 4)];
    vconst([0, 0, 0, 0]), shuffle(high ? [...zero, ...both] : [...both, ...zero]);
  };
  // Locals: 0 n (the parameter); i32 1..8 a..h, 9 t1, 10/11 ab/bc, 12..19
  // the block's words 0..7; v128 20..23 the last 16 schedule words (renamed
  // as they roll), 24 scratch.
  const n = 0;
  const state = [1, 2, 3, 4, 5, 6, 7, 8];
  const scratch = { t1: 9, ab: 10, bc: 11 };
  const w = [12, 13, 14, 15, 16, 17, 18, 19];
  const tmp = 24;
  /** @param {number} from the HMAC state (IS or OS) this compression starts from */
  const compression = (from) => {
    const x = [20, 21, 22, 23];
    for (let i = 0; i < 8; i++) (load(from + 4 * i), set(state[i]));
    for (const [j, l] of [[0, x[0]], [4, x[1]]]) {
      get(w[j]), v(0x11); // i32x4.splat
      for (let lane = 1; lane < 4; lane++) get(w[j + lane]), v(0x1c), c.push(lane); // i32x4.replace_lane
      set(l);
    }
    vconst(PAD32.slice(0, 4)), set(x[2]);
    vconst(PAD32.slice(4, 8)), set(x[3]);
    const before = (/** @type {number} */ i) => {
      if (i % 4 !== 0 || i >= 48) return;
      const t = 16 + i; // this step makes w[t..t+3]
      const [x0, x1, x2, x3] = x;
      get(x0), get(x1), shuffle(lanes(4)), set(tmp); // w[t-15..t-12]
      sigma(tmp, 7, 18, 3);
      get(x0), v(vop.add);
      get(x2), get(x3), shuffle(lanes(4)), v(vop.add); // + w[t-7..t-4]
      set(x0); // w[t-16..t-13] is not needed any more: x0 becomes w[t..t+3]
      sigma1Pair(x3, 2, false);
      get(x0), v(vop.add), set(x0); // w[t], w[t+1] done
      sigma1Pair(x0, 0, true);
      get(x0), v(vop.add), set(x0); // w[t+2], w[t+3] done
      k(0), get(x0), vconst(K.slice(t, t + 4)), v(vop.add), v(vop.store), c.push(4, ...uleb(WK + 4 * t));
      x.push(/** @type {number} */ (x.shift()));
    };
    const addWK = (/** @type {number} */ i) => {
      if (i < 8) (get(w[i]), o(op.add), k(K[i]), o(op.add));
      else if (i < 16) (k((K[i] + PAD32[i - 8]) | 0), o(op.add));
      else (load(WK + 4 * i), o(op.add));
    };
    rounds(c, state, scratch, before, addWK);
    // The digest: the next block's first half, in locals and at W.
    for (let i = 0; i < 8; i++) (get(state[i]), load(from + 4 * i), o(op.add), set(w[i]));
  };
  for (let i = 0; i < 8; i++) (load(W + 4 * i), set(w[i]));
  o(0x03), o(0x40); // loop
  compression(IS);
  compression(OS);
  for (let i = 0; i < 8; i++) (k(0), load(T + 4 * i), get(w[i]), o(op.xor), store(T + 4 * i));
  get(n), k(1), o(op.sub), c.push(0x22, n), o(0x0d), o(0); // n -= 1; loop while n != 0
  o(0x0b); // end loop
  for (let i = 0; i < 8; i++) (k(0), get(w[i]), store(W + 4 * i)); // where the next call starts
  return [2, 19, 0x7f, 5, 0x7b, ...c, 0x0b];
}

/** Words 8..15 of PBKDF2's second block: the padding of 64 + 32 bytes. */
const PAD32 = [0x80000000, 0, 0, 0, 0, 0, 0, (64 + 32) * 8];

/**
 * The bytes of the module. Exports "m" (memory), "c" (compress the block at
 * W into H) and "i" (iterate n times).
 * @param {boolean} simd whether the loop's schedule uses WebAssembly SIMD
 */
function moduleBytes(simd) {
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
  const iterate = simd ? iterateBodySimd() : [0, ...c, 0x0b];
  const general = compressBody(new Array(16).fill(null));
  const padded = compressBody([...new Array(8).fill(null), ...PAD32]);

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
/** Tests: build the scalar module even where SIMD validates. */
let FORCE_SCALAR = false;
/** @type {Promise<any> | undefined} */
let compiled;

/** Which loop the compiled module runs: "simd", "scalar", or null (none). */
/** @type {"simd" | "scalar" | null} */
let kind = null;

/** The compiled module, or null where WebAssembly is unavailable or refused. */
function wasmModule() {
  if (!compiled) {
    compiled = (async () => {
      kind = null;
      try {
        if (!WA || typeof WA.compile !== "function") return null;
        // SIMD where the engine has it (every current browser), else scalar.
        const simd = !FORCE_SCALAR && typeof WA.validate === "function" && WA.validate(moduleBytes(true));
        const mod = await WA.compile(moduleBytes(simd));
        kind = simd ? "simd" : "scalar";
        return mod;
      } catch {
        return null; // e.g. CSP without 'wasm-unsafe-eval'
      }
    })();
  }
  return compiled;
}

/** Which loop this page runs: "simd", "scalar", or null (no WebAssembly). */
export async function wasmPbkdf2Kind() {
  await wasmModule();
  return kind;
}

/**
 * Tests only: use this WebAssembly object (or none) from now on.
 * @param {any} wa
 */
export function setWebAssemblyForTests(wa) {
  WA = wa;
  compiled = undefined;
}

/**
 * Tests and benchmarks only: build the scalar module even where SIMD runs.
 * @param {boolean} scalar
 */
export function forceScalarForTests(scalar) {
  FORCE_SCALAR = scalar;
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
