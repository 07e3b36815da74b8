// Both backends against published vectors and against Node's OpenSSL-backed
// crypto as an independent oracle.
import { test, test as nodeTest } from "node:test";
import assert from "node:assert/strict";
import * as nodeCrypto from "node:crypto";
import { BACKENDS, hex, toHex } from "./helpers.js";
import { hasSubtle, selectBackend } from "../src/crypto/index.js";

const te = new TextEncoder();

for (const be of BACKENDS) {
  test(`${be.name}: SHA-256 (FIPS 180-2 "abc")`, async () => {
    assert.equal(toHex(await be.sha256(te.encode("abc"))), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    assert.equal(toHex(await be.sha256(new Uint8Array(0))), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  });

  test(`${be.name}: HMAC-SHA-256 (RFC 4231 case 2)`, async () => {
    assert.equal(
      toHex(await be.hmacSha256(te.encode("Jefe"), te.encode("what do ya want for nothing?"))),
      "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
    );
  });

  test(`${be.name}: PBKDF2-HMAC-SHA-256 (RFC 7914 §11) and against OpenSSL`, async () => {
    assert.equal(
      toHex(await be.pbkdf2Sha256(te.encode("passwd"), te.encode("salt"), 1, 64)),
      "55ac046e56e3089fec1691c22544b605f94185216dde0465e68b9d57c20dacbc49ca9cccf179b645991664b39d77ef317c71b845b1e30bd509112041d3a19783",
    );
    const pw = te.encode("pässwörd");
    const salt = hex("00112233445566778899aabbccddeeff");
    assert.equal(toHex(await be.pbkdf2Sha256(pw, salt, 4096)), nodeCrypto.pbkdf2Sync(pw, salt, 4096, 32, "sha256").toString("hex"));
  });

  test(`${be.name}: HKDF-SHA-256 (RFC 5869 case 1) and against OpenSSL`, async () => {
    const okm = await be.hkdfSha256(hex("0b".repeat(22)), hex("000102030405060708090a0b0c"), hex("f0f1f2f3f4f5f6f7f8f9"), 42);
    assert.equal(toHex(okm), "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865");
    const ikm = nodeCrypto.randomBytes(32);
    const salt = nodeCrypto.randomBytes(32);
    const info = te.encode("wsgate-v1 c2s");
    assert.equal(toHex(await be.hkdfSha256(ikm, salt, info, 32)), Buffer.from(nodeCrypto.hkdfSync("sha256", ikm, salt, info, 32)).toString("hex"));
  });

  test(`${be.name}: AES-GCM seal/open against OpenSSL, tamper detection`, async () => {
    for (const keyLen of [16, 32]) {
      const key = nodeCrypto.randomBytes(keyLen);
      const nonce = nodeCrypto.randomBytes(12);
      const aad = te.encode("header");
      const pt = te.encode("sensitive payload");
      const aead = await be.aesGcm(new Uint8Array(key));
      const ct = await aead.seal(nonce, aad, pt);
      const c = nodeCrypto.createCipheriv(`aes-${keyLen * 8}-gcm`, key, nonce);
      c.setAAD(aad);
      const ref = Buffer.concat([c.update(pt), c.final(), c.getAuthTag()]);
      assert.equal(toHex(ct), ref.toString("hex"));
      assert.deepEqual(await aead.open(nonce, aad, ct), pt);
      const bad = ct.slice();
      bad[0] ^= 1;
      await assert.rejects(aead.open(nonce, aad, bad));
      await assert.rejects(aead.open(nonce, te.encode("headeR"), ct));
      // Empty plaintext: the tag alone (used for non-ENC protected frames).
      const tag = await aead.seal(nonce, aad, new Uint8Array(0));
      assert.equal(tag.length, 16);
      assert.equal((await aead.open(nonce, aad, tag)).length, 0);
    }
  });
}

test("backend selection", () => {
  assert.equal(hasSubtle(), true, "Node 20 has Web Crypto");
  assert.equal(selectBackend().name, "webcrypto");
  assert.equal(selectBackend("auto").name, "webcrypto");
  assert.equal(selectBackend("noble").name, "noble");
  assert.throws(() => selectBackend(/** @type {any} */ ("rot13")), (e) => e.code === "invalid_argument");
});

test("auto falls back to noble where crypto.subtle is missing (insecure context)", () => {
  const desc = Object.getOwnPropertyDescriptor(globalThis, "crypto");
  const real = globalThis.crypto;
  Object.defineProperty(globalThis, "crypto", { value: { getRandomValues: real.getRandomValues.bind(real) }, configurable: true, writable: true });
  try {
    assert.equal(hasSubtle(), false);
    assert.equal(selectBackend().name, "noble");
    assert.throws(() => selectBackend("webcrypto"), (e) => e.code === "unsupported");
  } finally {
    Object.defineProperty(globalThis, "crypto", desc);
  }
  assert.equal(hasSubtle(), true);
});

// ---- PBKDF2 with its iterations in WebAssembly (src/crypto/pbkdf2-wasm.js),
// the noble backend's path where WebAssembly runs; pure JS where it does not.
{
  const { pbkdf2Sha256Wasm, setWebAssemblyForTests, wasmPbkdf2Available, wasmPbkdf2Kind, forceScalarForTests } = await import("../src/crypto/pbkdf2-wasm.js");
  const { nobleBackend, webCryptoBackend } = await import("../src/crypto/index.js");
  const { pbkdf2: noblePbkdf2 } = await import("@noble/hashes/pbkdf2.js");
  const { sha256: nobleSha256 } = await import("@noble/hashes/sha2.js");
  const { loadVectors } = await import("./helpers.js");
  const openssl = (pw, salt, c, len) => nodeCrypto.pbkdf2Sync(pw, salt, c, len, "sha256").toString("hex");
  const pureJs = (pw, salt, c, len) => toHex(noblePbkdf2(nobleSha256, pw, salt, { c, dkLen: len }));

  test("pbkdf2-wasm: WebAssembly runs here (Node 20), with the SIMD loop", async () => {
    assert.equal(await wasmPbkdf2Available(), true);
    assert.equal(await wasmPbkdf2Kind(), "simd");
  });

  test("pbkdf2-wasm: an engine without SIMD gets the scalar loop, with the same results", async () => {
    const pw = te.encode("pencil");
    const salt = te.encode("0123456789abcdef");
    const noSimd = { ...WebAssembly, compile: WebAssembly.compile, instantiate: WebAssembly.instantiate, validate: () => false };
    try {
      setWebAssemblyForTests(noSimd);
      assert.equal(await wasmPbkdf2Kind(), "scalar");
      for (const c of [1, 2, 3, 4097]) assert.equal(toHex(await pbkdf2Sha256Wasm(pw, salt, c, 40)), openssl(pw, salt, c, 40), `c ${c}`);
    } finally {
      setWebAssemblyForTests(WebAssembly);
    }
    assert.equal(await wasmPbkdf2Kind(), "simd");
  });

  // The value tests below run on both loops: SIMD (what engines get) and scalar.
  for (const loop of ["simd", "scalar"]) {
    const test = (/** @type {string} */ name, /** @type {any} */ fn) =>
      nodeTest(`${name} [${loop}]`, async (/** @type {any} */ t) => {
        forceScalarForTests(loop === "scalar");
        try {
          assert.equal(await wasmPbkdf2Kind(), loop);
          await fn(t);
        } finally {
          forceScalarForTests(false);
        }
      });

    test("pbkdf2-wasm: RFC 7914 §11 and RFC 6070-style SHA-256 values", async () => {
      const cases = [
        ["passwd", "salt", 1, 64, "55ac046e56e3089fec1691c22544b605f94185216dde0465e68b9d57c20dacbc49ca9cccf179b645991664b39d77ef317c71b845b1e30bd509112041d3a19783"],
        ["Password", "NaCl", 80000, 64, "4ddcd8f60b98be21830cee5ef22701f9641a4418d04c0414aeff08876b34ab56a1d425a1225833549adb841b51c9b3176a272bdebba1d078478f62b397f33c8d"],
        ["password", "salt", 1, 32, "120fb6cffcf8b32c43e7225256c4f837a86548c92ccc35480805987cb70be17b"],
        ["password", "salt", 2, 32, "ae4d0c95af6b46d32d0adff928f06dd02a303f8ef3c251dfd6e2d85a95474c43"],
        ["password", "salt", 4096, 32, "c5e478d59288c841aa530db6845c4c8d962893a001ce4e11a4963873aa98134a"],
        ["passwordPASSWORDpassword", "saltSALTsaltSALTsaltSALTsaltSALTsalt", 4096, 40, "348c89dbcbd32b2f32d814b8116e84cf2b17347ebc1800181c4e2a1fb8dd53e1c635518c7dac47e9"],
        ["pass\0word", "sa\0lt", 4096, 16, "89b69d0516f829893c696226650a8687"],
      ];
      for (const [pw, salt, c, len, want] of cases) {
        const got = toHex(await pbkdf2Sha256Wasm(te.encode(pw), te.encode(salt), c, len));
        assert.equal(got, want, `${pw}/${salt}/${c}/${len}`);
        assert.equal(openssl(pw, salt, c, len), want);
      }
    });

    test("pbkdf2-wasm: SaltedPassword of every testdata/scram.json case, equal to noble's and Web Crypto's", async (t) => {
      const v = loadVectors("scram.json");
      if (!v) return t.skip("testdata/scram.json not present");
      assert.ok(v.cases.length > 0);
      for (const c of v.cases) {
        const pw = te.encode(c.prepared_password);
        const salt = Uint8Array.from(Buffer.from(c.salt_b64, "base64"));
        const iters = Number(c.iterations);
        assert.equal(toHex(await pbkdf2Sha256Wasm(pw, salt, iters, 32)), c.salted_password_hex, c.name);
        assert.equal(toHex(await nobleBackend.pbkdf2Sha256(pw, salt, iters, 32)), c.salted_password_hex, c.name);
        assert.equal(toHex(await webCryptoBackend.pbkdf2Sha256(pw, salt, iters, 32)), c.salted_password_hex, c.name);
        assert.equal(pureJs(pw, salt, iters, 32), c.salted_password_hex, c.name);
      }
    });

    test("pbkdf2-wasm: key, salt and output lengths around the block sizes, and slices, against OpenSSL and noble", async () => {
      const pwLens = [0, 1, 31, 32, 55, 56, 63, 64, 65, 127, 128, 200];
      const saltLens = [0, 1, 16, 51, 52, 59, 60, 61, 64, 100];
      const outLens = [1, 16, 31, 32, 33, 64, 65, 96];
      let n = 0;
      for (const pl of pwLens) {
        for (const sl of [saltLens[n % saltLens.length], saltLens[(n + 3) % saltLens.length]]) {
          const len = outLens[n % outLens.length];
          const c = 1 + (n % 5);
          const pw = nodeCrypto.randomBytes(pl);
          const salt = nodeCrypto.randomBytes(sl);
          const want = openssl(pw, salt, c, len);
          assert.equal(toHex(await pbkdf2Sha256Wasm(new Uint8Array(pw), new Uint8Array(salt), c, len)), want, `pw ${pl} salt ${sl} c ${c} len ${len}`);
          assert.equal(pureJs(new Uint8Array(pw), new Uint8Array(salt), c, len), want);
          n++;
        }
      }
      // Slices: the iterations split into runs between yields, at and around the boundaries.
      const pw = te.encode("pencil");
      const salt = te.encode("0123456789abcdef");
      for (const [c, slice] of [[1, 1], [2, 1], [7, 3], [8, 7], [9, 4], [1000, 7], [5000, 999], [20000, undefined]]) {
        assert.equal(toHex(await pbkdf2Sha256Wasm(pw, salt, c, 32, { slice })), openssl(pw, salt, c, 32), `c ${c} slice ${slice}`);
      }
    });

    test("pbkdf2-wasm: derivations that overlap (each yielding) do not disturb each other", async () => {
      const a = [te.encode("alice"), te.encode("salt-a"), 3001];
      const b = [te.encode("bob-with-a-longer-password"), te.encode("salt-b"), 2999];
      const [ra, rb] = await Promise.all([pbkdf2Sha256Wasm(...a, 32, { slice: 100 }), pbkdf2Sha256Wasm(...b, 48, { slice: 77 })]);
      assert.equal(toHex(ra), openssl(...a, 32));
      assert.equal(toHex(rb), openssl(...b, 48));
    });
  }

  test("pbkdf2-wasm: without WebAssembly, or refused by a CSP, the noble backend falls back to pure JS", async () => {
    const pw = te.encode("pencil");
    const salt = te.encode("0123456789abcdef");
    const want = openssl(pw, salt, 4096, 32);
    const refused = {
      compile: () => Promise.reject(new WebAssembly.CompileError("WebAssembly.compile(): Refused to compile or instantiate WebAssembly module because 'unsafe-eval' is not an allowed source of script")),
      instantiate: () => Promise.reject(new Error("not reached")),
    };
    try {
      for (const wa of [undefined, {}, refused]) {
        setWebAssemblyForTests(wa);
        assert.equal(await wasmPbkdf2Available(), false);
        assert.equal(await pbkdf2Sha256Wasm(pw, salt, 4096, 32), null);
        assert.equal(toHex(await nobleBackend.pbkdf2Sha256(pw, salt, 4096)), want);
      }
    } finally {
      setWebAssemblyForTests(WebAssembly);
    }
    assert.equal(await wasmPbkdf2Available(), true);
    assert.equal(toHex(await nobleBackend.pbkdf2Sha256(pw, salt, 4096)), want);
  });

  test("pbkdf2-wasm: arguments pure JS rejects are left to it (same errors as before)", async () => {
    assert.equal(await pbkdf2Sha256Wasm(te.encode("p"), te.encode("s"), 0, 32), null);
    assert.equal(await pbkdf2Sha256Wasm(te.encode("p"), te.encode("s"), 1.5, 32), null);
    assert.equal(await pbkdf2Sha256Wasm(te.encode("p"), te.encode("s"), 1, 0), null);
    await assert.rejects(nobleBackend.pbkdf2Sha256(te.encode("p"), te.encode("s"), 0, 32));
  });
}
