// Both backends against published vectors and against Node's OpenSSL-backed
// crypto as an independent oracle.
import { test } from "node:test";
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
