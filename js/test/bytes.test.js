import { test } from "node:test";
import assert from "node:assert/strict";
import { b64, b64u, equalBytes, fromB64OrNull, fromB64uOrNull, fromHex, toHex } from "../src/bytes.js";

test("b64u round-trips every length and matches Node's base64url", () => {
  for (let n = 0; n < 70; n++) {
    const b = new Uint8Array(n).map((_, i) => (i * 37 + n) & 0xff);
    const s = b64u(b);
    assert.equal(s, Buffer.from(b).toString("base64url"));
    assert.deepEqual(fromB64uOrNull(s), b);
    assert.equal(b64(b), Buffer.from(b).toString("base64"));
    assert.deepEqual(fromB64OrNull(b64(b)), b);
  }
});

test("b64u decoding is strict (protocol.md §2)", () => {
  assert.equal(fromB64uOrNull("AA=="), null, "padding refused");
  assert.equal(fromB64uOrNull("A+"), null, "standard alphabet refused");
  assert.equal(fromB64uOrNull("A/"), null);
  assert.equal(fromB64uOrNull("AAAAA"), null, "length ≡ 1 mod 4 refused");
  assert.equal(fromB64uOrNull("AB"), null, "non-zero trailing bits refused");
  assert.equal(fromB64uOrNull("AAB"), null, "non-zero trailing bits refused");
  assert.equal(fromB64uOrNull("A A"), null);
  assert.equal(fromB64uOrNull("é"), null);
  assert.deepEqual(fromB64uOrNull("AA"), Uint8Array.of(0));
  assert.deepEqual(fromB64uOrNull("_-8"), Uint8Array.of(0xff, 0xef));
  assert.deepEqual(fromB64uOrNull(""), new Uint8Array(0));
});

test("standard base64 decoding is strict", () => {
  assert.equal(fromB64OrNull("AA"), null, "missing padding refused");
  assert.equal(fromB64OrNull("AB=="), null, "non-zero trailing bits refused");
  assert.equal(fromB64OrNull("A==="), null);
  assert.equal(fromB64OrNull("AA=A"), null);
  assert.equal(fromB64OrNull("AA-_"), null, "url alphabet refused");
  assert.deepEqual(fromB64OrNull("W22ZaJ0SNY7soEsUEjb6gQ=="), Uint8Array.from(Buffer.from("W22ZaJ0SNY7soEsUEjb6gQ==", "base64")));
});

test("hex and equalBytes", () => {
  assert.equal(toHex(fromHex("00ff10Ab")), "00ff10ab");
  assert.throws(() => fromHex("0"));
  assert.throws(() => fromHex("zz"));
  assert.ok(equalBytes(Uint8Array.of(1, 2), Uint8Array.of(1, 2)));
  assert.ok(!equalBytes(Uint8Array.of(1, 2), Uint8Array.of(1, 3)));
  assert.ok(!equalBytes(Uint8Array.of(1, 2), Uint8Array.of(1)));
});
