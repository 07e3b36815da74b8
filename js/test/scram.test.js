import { test } from "node:test";
import assert from "node:assert/strict";
import { BACKENDS, toHex } from "./helpers.js";
import { b64 } from "../src/bytes.js";
import { cbindData, clientFinal, clientFirst, parseServerFirst, preparePassword, saltedPassword, saslname, verifyServerFinal } from "../src/scram.js";

// RFC 7677 §3: SCRAM-SHA-256, user "user", password "pencil", no channel binding.
const R = {
  cnonce: "rOprNGfwEbeRWgbNEkqO",
  clientFirst: "n,,n=user,r=rOprNGfwEbeRWgbNEkqO",
  serverFirst: "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
  clientFinal: "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
  serverFinal: "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=",
};

for (const be of BACKENDS) {
  test(`${be.name}: RFC 7677 SCRAM-SHA-256 example`, async () => {
    const first = clientFirst("user", R.cnonce, "n,,");
    assert.equal(first.clientFirst, R.clientFirst);
    const sf = parseServerFirst(R.serverFirst, R.cnonce);
    assert.equal(sf.iterations, 4096);
    assert.equal(sf.salt.length, 16);
    const salted = await saltedPassword(be, preparePassword("pencil"), sf.salt, sf.iterations);
    const fin = await clientFinal(be, { clientFirstBare: first.clientFirstBare, serverFirst: R.serverFirst, nonce: sf.nonce, gs2Header: "n,,", cbindData: "", saltedPassword: salted });
    assert.equal(fin.clientFinal, R.clientFinal);
    assert.equal(`v=${b64(fin.serverSignature)}`, R.serverFinal);
    verifyServerFinal(R.serverFinal, fin.serverSignature);
    assert.throws(() => verifyServerFinal("v=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", fin.serverSignature), (e) => e.code === "invalid-server-signature");
    assert.throws(() => verifyServerFinal("e=invalid-proof", fin.serverSignature), (e) => e.code === "invalid-proof");
    assert.throws(() => verifyServerFinal("", fin.serverSignature), (e) => e.code === "invalid-server-signature");
    assert.equal(fin.sessionKey.length, 32);
  });
}

test("backends agree on the wsgate-v1 channel-bound exchange, session key included", async () => {
  const first = clientFirst("demo", "Zm9vYmFyYmF6cXV4cXV1eGZvb2Jh");
  assert.equal(first.clientFirst, "p=wsgate-v1,,n=demo,r=Zm9vYmFyYmF6cXV4cXV1eGZvb2Jh");
  const serverFirst = "r=Zm9vYmFyYmF6cXV4cXV1eGZvb2JhU05PTkNFc25vbmNlc25vbmNl,s=AAECAwQFBgcICQoLDA0ODw==,i=4096";
  const sf = parseServerFirst(serverFirst, "Zm9vYmFyYmF6cXV4cXV1eGZvb2Jh");
  const cb = cbindData("127.0.0.1", "a".repeat(43));
  assert.equal(cb, `ip=127.0.0.1;key=${"a".repeat(43)}`);
  const out = [];
  for (const be of BACKENDS) {
    const salted = await saltedPassword(be, preparePassword("wsgate-demo"), sf.salt, sf.iterations);
    out.push(await clientFinal(be, { clientFirstBare: first.clientFirstBare, serverFirst, nonce: sf.nonce, cbindData: cb, saltedPassword: salted }));
  }
  assert.equal(out[0].clientFinal, out[1].clientFinal);
  assert.equal(toHex(out[0].sessionKey), toHex(out[1].sessionKey));
  assert.ok(out[0].clientFinal.startsWith(`c=${b64(new TextEncoder().encode(`p=wsgate-v1,,${cb}`))},r=${sf.nonce},p=`));
  assert.equal(out[0].authMessage, `n=demo,r=Zm9vYmFyYmF6cXV4cXV1eGZvb2Jh,${serverFirst},${out[0].clientFinalWithoutProof}`);
});

test("saslname escaping and SASLprep of the user name", () => {
  assert.equal(saslname("a,b=c").saslname, "a=2Cb=3Dc");
  assert.equal(saslname("=2C").saslname, "=3D2C");
  assert.equal(saslname("ﬁ\u00A0x").saslname, "fi x");
  assert.throws(() => saslname("\u0221"), (e) => e.code === "invalid_username"); // unassigned: stored rules
  assert.throws(() => saslname("\u00AD"), (e) => e.code === "invalid_username"); // empty after mapping
  assert.throws(() => preparePassword("\u0007"), (e) => e.code === "invalid_password");
  assert.deepEqual(preparePassword("\u2168"), new TextEncoder().encode("IX"));
  assert.deepEqual(preparePassword("a\u0221"), new TextEncoder().encode("a\u0221")); // query rules
});

test("server-first checks: nonce, salt, iteration bounds, extensions", () => {
  const c = "clientnonceclientnonce";
  const ok = `r=${c}SERVER,s=AAECAwQFBgcICQoLDA0ODw==,i=4096`;
  assert.equal(parseServerFirst(ok, c).nonce, `${c}SERVER`);
  assert.equal(parseServerFirst(`r=${c}S,s=AAECAwQFBgcICQoLDA0ODw==,i=10000000`, c).iterations, 10_000_000);
  const bad = [
    [`r=${c}SERVER,s=AAECAwQFBgcICQoLDA0ODw==,i=4095`, /4095/],
    [`r=${c}SERVER,s=AAECAwQFBgcICQoLDA0ODw==,i=10000001`, /10000001/],
    [`r=${c}SERVER,s=AAECAwQFBgcICQoLDA0ODw==,i=04096`, /iteration/],
    [`r=${c}SERVER,s=AAECAwQFBgcICQoLDA0ODw==,i=`, /iteration/],
    [`r=${c},s=AAECAwQFBgcICQoLDA0ODw==,i=4096`, /nonce/],
    [`r=other${c},s=AAECAwQFBgcICQoLDA0ODw==,i=4096`, /nonce/],
    [`r=${c}SERVER,s=AAECAwQFBgcICQoLDA0O,i=4096`, /salt/],
    [`r=${c}SERVER,s=not base64!,i=4096`, /salt/],
    [`m=ext,r=${c}SERVER,s=AAECAwQFBgcICQoLDA0ODw==,i=4096`, /extension/],
    [`s=AAECAwQFBgcICQoLDA0ODw==,r=${c}SERVER,i=4096`, /malformed/],
  ];
  for (const [msg, re] of bad) {
    assert.throws(() => parseServerFirst(msg, c), (e) => e.code === "protocol_error" && re.test(e.message), msg);
  }
});
