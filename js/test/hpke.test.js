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

// RFC 9180 Appendix A.1.1: the same suite in mode_base, with the exported
// values of A.1.1.2 (the sealed login uses a mode_base sender context's
// Export, docs/protocol.md §4.1).
const B = {
  info: "4f6465206f6e2061204772656369616e2055726e",
  skEm: "52c4a758a802cd8b936eceea314432798d5baf2d7e9235dc084ab1b9cfa2f736",
  pkEm: "37fda3567bdbd628e88668c3c8d7e97d1d1253b6d4ea6d44c150f741f1bf4431",
  skRm: "4612c550263fc8ad58375df3f557aac531d26850903e55a9f23f21d8534e8ac8",
  pkRm: "3948cfe0ad1ddb695d780e59077195da6c56506b027329794ab02bca80815c4d",
  enc: "37fda3567bdbd628e88668c3c8d7e97d1d1253b6d4ea6d44c150f741f1bf4431",
  shared_secret: "fe0e18c9f024ce43799ae393c7e8fe8fce9d218875e8227b0187c04e7d2ea1fc",
  key: "4531685d41d65f03dc48f6b8302c05b0",
  base_nonce: "56d890e5accaaf011cff4b7d",
  exporter_secret: "45ff1c2e220db587171952c0592d5f5ebe103f1561a2614e38f2ffd47e99e3f8",
  pt: "4265617574792069732074727574682c20747275746820626561757479",
  aad0: "436f756e742d30",
  ct0: "f938558b5d72f1a23810b4be2ab4f84331acc02fc97babc53a52ae8218a355a96d8770ac83d07bea87e13c512a",
  aad1: "436f756e742d31",
  ct1: "af2d7e9ac9ae7e270f46ba1f975be53c09f8d875bdc8535458c2494e8a6eab251c03d0c22a56b8ca42c2063b84",
  exports: [
    ["", "3853fe2b4035195a573ffc53856e77058e15d9ea064de3e59f4961d0095250ee"],
    ["00", "2e8f0b54673c7029649d4eb9d5e33bf1872cf76d623ff164ac185da9e88c21a5"],
    ["54657374436f6e74657874", "e9e43065102c3836401bed8c3c3c75ae46be1639869391d62c61f1ec7af54931"],
  ],
};

test("RFC 9180 A.1.1 (mode_base): key schedule, sequence 0 and 1, exported values (noble implementation)", () => {
  assert.equal(toHex(x25519.getPublicKey(hex(B.skEm))), B.pkEm);
  assert.equal(toHex(x25519.getPublicKey(hex(B.skRm))), B.pkRm);
  const { sharedSecret, enc } = hpke.encap(hex(B.pkRm), hex(B.skEm));
  assert.equal(toHex(enc), B.enc);
  assert.equal(toHex(sharedSecret), B.shared_secret);
  const ks = hpke.keySchedule({ mode: hpke.MODE_BASE, sharedSecret, info: hex(B.info), aeadId: 1, nk: 16 });
  assert.equal(toHex(ks.key), B.key);
  assert.equal(toHex(ks.baseNonce), B.base_nonce);
  assert.equal(toHex(ks.exporterSecret), B.exporter_secret);

  const s = hpke.setupS({ pkR: hex(B.pkRm), info: hex(B.info), aeadId: 1, skE: hex(B.skEm) });
  assert.equal(toHex(s.enc), B.enc);
  assert.equal(toHex(s.ctx.seal(hex(B.aad0), hex(B.pt))), B.ct0);
  assert.equal(toHex(s.ctx.seal(hex(B.aad1), hex(B.pt))), B.ct1);
  const r = hpke.setupR({ skR: hex(B.skRm), enc: hex(B.enc), info: hex(B.info), aeadId: 1 });
  assert.throws(() => r.open(hex(B.aad0), hex(B.ct1)), "sequence 1 does not open as sequence 0");
  assert.equal(toHex(r.open(hex(B.aad0), hex(B.ct0))), B.pt);
  assert.equal(toHex(r.open(hex(B.aad1), hex(B.ct1))), B.pt);
  for (const [ctx, want] of B.exports) {
    assert.equal(toHex(s.ctx.export(hex(ctx), 32)), want, `sender export(${ctx})`);
    assert.equal(toHex(r.export(hex(ctx), 32)), want, `recipient export(${ctx})`);
  }
  assert.throws(() => s.ctx.export(new Uint8Array(0), 0), /export length/);
});

for (const be of BACKENDS) {
  test(`${be.name}: hpkeSealBaseExport reproduces RFC 9180 A.1.1 (enc, sequence-0 ciphertext, exported values)`, async () => {
    for (const [ctx, want] of B.exports) {
      const out = await be.hpkeSealBaseExport({ pkR: hex(B.pkRm), info: hex(B.info), aad: hex(B.aad0), pt: hex(B.pt), exporterContext: hex(ctx), L: 32, aeadId: 1, skE: hex(B.skEm) });
      assert.equal(toHex(out.enc), B.enc);
      assert.equal(toHex(out.ct), B.ct0);
      assert.equal(toHex(out.exported), want, `export(${ctx})`);
    }
  });
}

test("AES-256-GCM mode_base with export: every backend's seal opens, and the export agrees, on the recipient side", async () => {
  const skR = x25519.utils.randomSecretKey();
  const pkR = x25519.getPublicKey(skR);
  const info = new TextEncoder().encode("wsgate-v1 login");
  const exporterContext = new TextEncoder().encode("wsgate-v1 login key");
  const pt = new TextEncoder().encode('{"scram":"p=wsgate-v1,,n=demo,r=abc","pad":"  "}');
  const seen = new Set();
  for (const sealer of BACKENDS) {
    const out = await sealer.hpkeSealBaseExport({ pkR, info, pt, exporterContext, L: 32 });
    assert.equal(out.enc.length, 32);
    assert.equal(out.ct.length, pt.length + 16);
    assert.equal(out.exported.length, 32);
    seen.add(toHex(out.enc));
    const r = hpke.setupR({ skR, enc: out.enc, info });
    assert.deepEqual(r.open(new Uint8Array(0), out.ct), pt, sealer.name);
    assert.equal(toHex(r.export(exporterContext, 32)), toHex(out.exported), sealer.name);
    // A fresh ephemeral key each time.
    const again = await sealer.hpkeSealBaseExport({ pkR, info, pt, exporterContext, L: 32 });
    assert.notEqual(toHex(again.exported), toHex(out.exported));
    seen.add(toHex(again.enc));
  }
  assert.equal(seen.size, 4);
});

test("RFC 9180 A.1.1/A.1.2: DeriveKeyPair(ikmE) gives the vectors' ephemeral keys", () => {
  let kp = hpke.deriveKeyPair(hex("7268600d403fce431561aef583ee1613527cff655c1343f29812e66706df3234"));
  assert.equal(toHex(kp.sk), B.skEm);
  assert.equal(toHex(kp.pk), B.pkEm);
  kp = hpke.deriveKeyPair(hex("6db9df30aa07dd42ee5e8181afdb977e538f5e1fec8a06223f33f7013e525037"));
  assert.equal(toHex(kp.sk), B.skRm);
});
