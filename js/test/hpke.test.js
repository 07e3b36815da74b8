// RFC 9180 Appendix A.1.2: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256,
// AES-128-GCM, mode_psk. The key schedule is the one wsgate uses with
// AES-256-GCM; only Nk differs.
import { test } from "node:test";
import assert from "node:assert/strict";
import { x25519 } from "@noble/curves/ed25519.js";
import { BACKENDS, hex, toHex } from "./helpers.js";
import * as hpke from "../src/crypto/hpke-noble.js";

const V = {
  info: "4f6465206f6e2061204772656369616e2055726e",
  skEm: "463426a9ffb42bb17dbe6044b9abd1d4e4d95f9041cef0e99d7824eef2b6f588",
  pkEm: "0ad0950d9fb9588e59690b74f1237ecdf1d775cd60be2eca57af5a4b0471c91b",
  pkRm: "9fed7e8c17387560e92cc6462a68049657246a09bfa8ade7aefe589672016366",
  skRm: "c5eb01eb457fe6c6f57577c5413b931550a162c71a03ac8d196babbd4e5ce0fd",
  psk: "0247fd33b913760fa1fa51e1892d9f307fbe65eb171e8132c2af18555a738b82",
  psk_id: "456e6e796e20447572696e206172616e204d6f726961",
  enc: "0ad0950d9fb9588e59690b74f1237ecdf1d775cd60be2eca57af5a4b0471c91b",
  shared_secret: "727699f009ffe3c076315019c69648366b69171439bd7dd0807743bde76986cd",
  key_schedule_context:
    "01e78d5cf6190d275863411ff5edd0dece5d39fa48e04eec1ed9b71be34729d18ccb6cffde367bb0565ba28bb02c90744a20f5ef37f30523526106f637abb05449",
  secret: "3728ab0b024b383b0381e432b47cced1496d2516957a76e2a9f5c8cb947afca4",
  key: "15026dba546e3ae05836fc7de5a7bb26",
  base_nonce: "9518635eba129d5ce0914555",
  exporter_secret: "3d76025dbbedc49448ec3f9080a1abab6b06e91c0b11ad23c912f043a0ee7655",
  pt: "4265617574792069732074727574682c20747275746820626561757479",
  aad0: "436f756e742d30",
  ct0: "e52c6fed7f758d0cf7145689f21bc1be6ec9ea097fef4e959440012f4feb73fb611b946199e681f4cfc34db8ea",
};

test("RFC 9180 A.1.2: key pairs are consistent", () => {
  assert.equal(toHex(x25519.getPublicKey(hex(V.skEm))), V.pkEm);
  assert.equal(toHex(x25519.getPublicKey(hex(V.skRm))), V.pkRm);
});

test("RFC 9180 A.1.2: Encap/Decap and every key-schedule output (noble implementation)", () => {
  const { sharedSecret, enc } = hpke.encap(hex(V.pkRm), hex(V.skEm));
  assert.equal(toHex(enc), V.enc);
  assert.equal(toHex(sharedSecret), V.shared_secret);
  assert.equal(toHex(hpke.decap(hex(V.enc), hex(V.skRm))), V.shared_secret);
  const ks = hpke.keySchedule({ mode: hpke.MODE_PSK, sharedSecret, info: hex(V.info), psk: hex(V.psk), pskId: hex(V.psk_id), aeadId: 1, nk: 16 });
  assert.equal(toHex(ks.keyScheduleContext), V.key_schedule_context);
  assert.equal(toHex(ks.secret), V.secret);
  assert.equal(toHex(ks.key), V.key);
  assert.equal(toHex(ks.baseNonce), V.base_nonce);
  assert.equal(toHex(ks.exporterSecret), V.exporter_secret);
});

test("RFC 9180 A.1.2: single-shot seal with the vector's ephemeral key gives the sequence-0 ciphertext", () => {
  const { enc, ct } = hpke.seal({ pkR: hex(V.pkRm), info: hex(V.info), aad: hex(V.aad0), pt: hex(V.pt), psk: hex(V.psk), pskId: hex(V.psk_id), aeadId: 1, skE: hex(V.skEm) });
  assert.equal(toHex(enc), V.enc);
  assert.equal(toHex(ct), V.ct0);
});

test("PSK input checks of RFC 9180 §5.1", () => {
  const base = { mode: hpke.MODE_PSK, sharedSecret: new Uint8Array(32), info: new Uint8Array(0), aeadId: 2, nk: 32 };
  assert.throws(() => hpke.keySchedule({ ...base }), /missing required PSK/);
  assert.throws(() => hpke.keySchedule({ ...base, psk: new Uint8Array(32) }), /inconsistent/);
  assert.throws(() => hpke.keySchedule({ ...base, mode: hpke.MODE_BASE, psk: new Uint8Array(32), pskId: new Uint8Array(1) }), /not needed/);
});

test("X25519 low-order public keys are refused", () => {
  assert.throws(() => hpke.encap(new Uint8Array(32)));
  const one = new Uint8Array(32);
  one[0] = 1;
  assert.throws(() => hpke.encap(one));
});

for (const be of BACKENDS) {
  test(`${be.name}: opens the RFC 9180 A.1.2 sequence-0 ciphertext`, async () => {
    const pt = await be.hpkeOpen({ skR: hex(V.skRm), enc: hex(V.enc), info: hex(V.info), aad: hex(V.aad0), ct: hex(V.ct0), psk: hex(V.psk), pskId: hex(V.psk_id), aeadId: 1 });
    assert.equal(toHex(pt), V.pt);
    const wrongPsk = hex(V.psk);
    wrongPsk[0] ^= 1;
    await assert.rejects(be.hpkeOpen({ skR: hex(V.skRm), enc: hex(V.enc), info: hex(V.info), aad: hex(V.aad0), ct: hex(V.ct0), psk: wrongPsk, pskId: hex(V.psk_id), aeadId: 1 }));
  });
}

test("AES-256-GCM mode_psk: every backend opens what every backend sealed", async () => {
  const skR = x25519.utils.randomSecretKey();
  const pkR = x25519.getPublicKey(skR);
  const info = new TextEncoder().encode("wsgate-v1 key\0nonce");
  const psk = crypto.getRandomValues(new Uint8Array(32));
  const pskId = new TextEncoder().encode("AAAAAAAAAAAAAAAAAAAAAA");
  const pt = crypto.getRandomValues(new Uint8Array(32));
  for (const sealer of BACKENDS) {
    const { enc, ct } = await sealer.hpkeSeal({ pkR, info, aad: new Uint8Array(0), pt, psk, pskId });
    assert.equal(enc.length, 32);
    assert.equal(ct.length, 48);
    for (const opener of BACKENDS) {
      const got = await opener.hpkeOpen({ skR, enc, info, aad: new Uint8Array(0), ct, psk, pskId });
      assert.deepEqual(got, pt, `${sealer.name} → ${opener.name}`);
      await assert.rejects(opener.hpkeOpen({ skR, enc, info: new TextEncoder().encode("other"), aad: new Uint8Array(0), ct, psk, pskId }));
    }
  }
});
