// What sm.js keeps of a user's password between logins (issue 11, item 13):
// SaltedPassword only after the server proved itself, zeroed when dropped,
// not kept at all with keepCredentials: false.
import { test } from "node:test";
import assert from "node:assert/strict";
import { MockGateway } from "./mock-gateway.js";
import { connect } from "../src/sm.js";
import { selectBackend } from "../src/crypto/index.js";
import { forgetCredentials, login, makeCredentials } from "../src/login.js";

const allZero = (b) => b.every((x) => x === 0);

for (const backend of ["webcrypto", "noble"]) {
  const params = (gw, credentials) => ({ backend: selectBackend(backend), base: "http://gw.test:8080", credentials, timeoutMs: 10_000, fetch: gw.fetch });

  test(`${backend}: SaltedPassword is cached only after the ServerSignature checks out`, async () => {
    const gw = new MockGateway();
    const credentials = makeCredentials("demo", "wsgate-demo");
    gw.badServerSignature = true;
    await assert.rejects(login(params(gw, credentials)), (e) => e.code === "invalid-server-signature");
    assert.equal(credentials.salted.size, 0, "nothing kept from a server that did not prove itself");
    assert.ok(credentials.password, "the password stays for the next attempt");
    gw.badServerSignature = false;
    await login(params(gw, credentials));
    assert.equal(credentials.salted.size, 1);
    assert.equal(credentials.password, null, "the password is dropped once the server proved itself");
  });

  test(`${backend}: forgetting credentials zeroes what they held`, async () => {
    const gw = new MockGateway();
    const credentials = makeCredentials("demo", "wsgate-demo");
    const password = credentials.password;
    await login(params(gw, credentials));
    const salted = [...credentials.salted.values()];
    assert.equal(salted.length, 1);
    assert.ok(!allZero(salted[0]));
    assert.ok(allZero(password), "the password bytes were zeroed after the login");
    forgetCredentials(credentials);
    assert.ok(allZero(salted[0]), "the SaltedPassword bytes are zeroed, not only dropped");
    assert.equal(credentials.salted.size, 0);
  });

  test(`${backend}: a session zeroes its SaltedPassword on close; keepCredentials: false keeps none`, async () => {
    const gw = new MockGateway();
    const opts = { username: "demo", password: "wsgate-demo", url: "http://gw.test:8080", crypto: backend, fetch: gw.fetch, WebSocket: gw.WebSocket };
    const s = await connect(opts);
    const salted = [...s._credentials.salted.values()];
    assert.equal(salted.length, 1);
    s.close();
    assert.ok(allZero(salted[0]));
    const brief = await connect({ ...opts, keepCredentials: false });
    assert.equal(brief.state, "open");
    assert.equal(brief._credentials.salted.size, 0);
    assert.equal(brief._credentials.password, null);
    brief.close();
  });
}
