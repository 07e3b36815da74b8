import { test } from "node:test";
import assert from "node:assert/strict";
import { x25519 } from "@noble/curves/ed25519.js";
import { BACKENDS, toHex } from "./helpers.js";
import { b64u, fromB64uOrNull } from "../src/bytes.js";
import { deriveTrafficKeys, hpkeInfo, makeKeyInit, parseHello } from "../src/keyinit.js";
import { keyFingerprint, keyId } from "../src/scram.js";

const te = new TextEncoder();

test("HELLO parsing", () => {
  const nonce = b64u(new Uint8Array(32).fill(3));
  const h = parseHello(te.encode(JSON.stringify({ v: 1, nonce, ip: "127.0.0.1", keys: ["abc"], extra: true })));
  assert.equal(h.ip, "127.0.0.1");
  assert.deepEqual(h.keys, ["abc"]);
  assert.equal(h.nonce.length, 32);
  for (const bad of [
    "not json",
    JSON.stringify({ v: 2, nonce, ip: "1.2.3.4", keys: [] }),
    JSON.stringify({ v: 1, nonce: b64u(new Uint8Array(31)), ip: "1.2.3.4", keys: [] }),
    JSON.stringify({ v: 1, nonce: nonce + "=", ip: "1.2.3.4", keys: [] }),
    JSON.stringify({ v: 1, nonce, keys: [] }),
  ]) {
    assert.throws(() => parseHello(te.encode(bad)), (e) => e.code === "protocol_error", bad);
  }
});

test("hpke info = 'wsgate-v1 key' || 0x00 || nonce", () => {
  const n = new Uint8Array(32).fill(0xab);
  assert.equal(toHex(hpkeInfo(n)), Buffer.from("wsgate-v1 key").toString("hex") + "00" + "ab".repeat(32));
});

for (const be of BACKENDS) {
  test(`${be.name}: KEY_INIT opens on the server side to the same dynamic password; kid/fp derivation`, async () => {
    const skR = x25519.utils.randomSecretKey();
    const pk = x25519.getPublicKey(skR);
    const kid = await keyId(be, pk);
    const fp = await keyFingerprint(be, pk);
    assert.equal(fp, Buffer.from(await crypto.subtle.digest("SHA-256", pk)).toString("base64url"));
    assert.equal(kid, Buffer.from(await crypto.subtle.digest("SHA-256", pk)).subarray(0, 8).toString("base64url"));
    const sessionKey = crypto.getRandomValues(new Uint8Array(32));
    const sessionId = b64u(crypto.getRandomValues(new Uint8Array(16)));
    const helloNonce = crypto.getRandomValues(new Uint8Array(32));
    const ki = await makeKeyInit(be, { pk, kid, sessionId, sessionKey, helloNonce });
    const body = JSON.parse(ki.body);
    assert.deepEqual(Object.keys(body), ["kid", "enc", "ct"]);
    assert.equal(body.kid, kid);
    const enc = fromB64uOrNull(body.enc);
    const ct = fromB64uOrNull(body.ct);
    assert.equal(enc.length, 32);
    assert.equal(ct.length, 48);
    for (const opener of BACKENDS) {
      const dp = await opener.hpkeOpen({ skR, enc, ct, info: hpkeInfo(helloNonce), aad: new Uint8Array(0), psk: sessionKey, pskId: te.encode(sessionId) });
      assert.deepEqual(dp, ki.dynamicPassword);
      // Replaying the KEY_INIT on another connection (other HELLO nonce) fails.
      await assert.rejects(opener.hpkeOpen({ skR, enc, ct, info: hpkeInfo(new Uint8Array(32)), aad: new Uint8Array(0), psk: sessionKey, pskId: te.encode(sessionId) }));
      // A wrong session key fails.
      await assert.rejects(opener.hpkeOpen({ skR, enc, ct, info: hpkeInfo(helloNonce), aad: new Uint8Array(0), psk: new Uint8Array(32), pskId: te.encode(sessionId) }));
    }
    const keys = await deriveTrafficKeys(be, ki.dynamicPassword, helloNonce);
    const ref = (info) => Buffer.from(require_hkdf(ki.dynamicPassword, helloNonce, info)).toString("hex");
    assert.equal(toHex(keys.c2s), ref("wsgate-v1 c2s"));
    assert.equal(toHex(keys.s2c), ref("wsgate-v1 s2c"));
    assert.notEqual(toHex(keys.c2s), toHex(keys.s2c));
  });
}

import { hkdfSync } from "node:crypto";
function require_hkdf(ikm, salt, info) {
  return hkdfSync("sha256", ikm, salt, te.encode(info), 32);
}
