import { test } from "node:test";
import assert from "node:assert/strict";
import { BACKENDS, hex, toHex } from "./helpers.js";
import { EnvelopeError, FLAG_ENC, FLAG_ERR, T, decodeEnvelope, encodeEnvelope, frameNonce, openFrame, sealFrame } from "../src/envelope.js";

test("envelope layout (protocol.md §5.1)", () => {
  const m = encodeEnvelope({ type: T.REQUEST, flags: FLAG_ENC, id: 0x01020304, name: "sys.echo", body: Uint8Array.of(9, 8) });
  assert.equal(toHex(m), `1001010203040008${Buffer.from("sys.echo").toString("hex")}0908`);
  const e = decodeEnvelope(m);
  assert.equal(e.type, T.REQUEST);
  assert.equal(e.flags, FLAG_ENC);
  assert.equal(e.id, 0x01020304);
  assert.equal(e.name, "sys.echo");
  assert.deepEqual([...e.body], [9, 8]);
  assert.equal(e.header.length, 16);
  const u = decodeEnvelope(encodeEnvelope({ type: T.EVENT, id: 0xffffffff, name: "é" }));
  assert.equal(u.id, 0xffffffff);
  assert.equal(u.name, "é");
  assert.equal(u.body.length, 0);
});

test("envelope refusals", () => {
  const bad = [
    ["short", "1000000000000000".slice(0, 14)],
    ["reserved flag", "1004000000010000"],
    ["nlen > 1024", "1000000000010401" + "61".repeat(1025)],
    ["name past end", "100000000001000561"],
    ["name not UTF-8", "1000000000010001ff"],
  ];
  for (const [why, h] of bad) assert.throws(() => decodeEnvelope(hex(h)), EnvelopeError, why);
  assert.throws(() => encodeEnvelope({ type: 1, name: "a".repeat(1025) }), EnvelopeError);
  assert.doesNotThrow(() => decodeEnvelope(encodeEnvelope({ type: 1, name: "a".repeat(1024) })));
});

test("frame nonce = 4 zero bytes || u64 BE seq", () => {
  assert.equal(toHex(frameNonce(0)), "000000000000000000000000");
  assert.equal(toHex(frameNonce(1)), "000000000000000000000001");
  assert.equal(toHex(frameNonce(2 ** 32 + 5)), "000000000000000100000005");
  assert.equal(toHex(frameNonce(Number.MAX_SAFE_INTEGER)), "00000000001fffffffffffff");
  assert.throws(() => frameNonce(-1));
});

for (const be of BACKENDS) {
  test(`${be.name}: protected frames round-trip; tampering, replay and reordering fail`, async () => {
    const key = crypto.getRandomValues(new Uint8Array(32));
    const aead = await be.aesGcm(key);
    const plain = { type: T.REQUEST, flags: 0, id: 7, name: "sys.echo", plaintext: new TextEncoder().encode("visible") };
    const secret = { type: T.REQUEST, flags: FLAG_ENC, id: 8, name: "sys.echo", plaintext: new TextEncoder().encode("hidden") };
    const w0 = await sealFrame(aead, 0, plain);
    const w1 = await sealFrame(aead, 1, secret);
    // Non-ENC: plaintext readable on the wire, followed by a 16-byte tag.
    assert.ok(Buffer.from(w0).includes(Buffer.from("visible")));
    assert.equal(w0.length, 16 + 7 + 16);
    // ENC: not readable.
    assert.ok(!Buffer.from(w1).includes(Buffer.from("hidden")));
    assert.equal(w1.length, 16 + 6 + 16);
    const o0 = await openFrame(aead, 0, w0);
    assert.deepEqual({ ...o0, plaintext: [...o0.plaintext] }, { ...plain, plaintext: [...plain.plaintext] });
    const o1 = await openFrame(aead, 1, w1);
    assert.equal(new TextDecoder().decode(o1.plaintext), "hidden");
    // Wrong sequence number (replay / reorder / drop).
    await assert.rejects(openFrame(aead, 1, w0), EnvelopeError);
    await assert.rejects(openFrame(aead, 0, w1), EnvelopeError);
    // Any flipped bit, header included.
    for (const w of [w0, w1]) {
      for (const i of [0, 1, 5, 9, w.length - 20, w.length - 1]) {
        const t = w.slice();
        t[i] ^= 0x01;
        await assert.rejects(openFrame(aead, w === w0 ? 0 : 1, t), EnvelopeError, `byte ${i}`);
      }
    }
    // Protected body shorter than the tag.
    await assert.rejects(openFrame(aead, 0, encodeEnvelope({ type: T.RESPONSE, id: 1, body: new Uint8Array(15) })), /shorter than the 16-byte tag/);
    // Wrong key.
    const other = await be.aesGcm(crypto.getRandomValues(new Uint8Array(32)));
    await assert.rejects(openFrame(other, 0, w0), EnvelopeError);
    // ERR|ENC response round-trip.
    const err = { type: T.RESPONSE, flags: FLAG_ENC | FLAG_ERR, id: 8, name: "", plaintext: new TextEncoder().encode('{"code":"x"}') };
    const o2 = await openFrame(aead, 5, await sealFrame(aead, 5, err));
    assert.equal(o2.flags, FLAG_ENC | FLAG_ERR);
  });
}

test("both backends produce identical protected frames", async () => {
  const key = crypto.getRandomValues(new Uint8Array(32));
  const f = { type: T.EVENT, flags: FLAG_ENC, id: 0, name: "news", plaintext: new TextEncoder().encode("{}") };
  const [a, b] = await Promise.all(BACKENDS.map(async (be) => sealFrame(await be.aesGcm(key), 42, f)));
  assert.equal(toHex(a), toHex(b));
  const g = { ...f, flags: 0 };
  const [c, d] = await Promise.all(BACKENDS.map(async (be) => sealFrame(await be.aesGcm(key), 2 ** 40, g)));
  assert.equal(toHex(c), toHex(d));
});
