// The committed bundle (crates/server/assets/sm.js, what the gateway serves)
// exports what sm.d.ts declares and works end to end against the mock gateway.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { MockGateway } from "./mock-gateway.js";
import * as src from "../src/sm.js";

const here = dirname(fileURLToPath(import.meta.url));
const bundlePath = resolve(here, "../../crates/server/assets/sm.js");
const bundle = await import(pathToFileURL(bundlePath).href);

test("bundle is one self-contained ES module", () => {
  const text = readFileSync(bundlePath, "utf8");
  assert.ok(text.startsWith("/*! sm.js "));
  assert.ok(!/\bimport\s*[^(]*\sfrom\s*["']/.test(text), "no static imports left");
  assert.ok(!/\brequire\(/.test(text), "no require()");
  assert.ok(text.length < 200_000, `size ${text.length}`);
  // The code that hands out session secrets to tests is not in it.
  assert.ok(!text.includes("onSecrets"), "testHooks.onSecrets is compiled out of the published bundle");
});

test("bundle, sources and sm.d.ts export the same names", () => {
  const dts = readFileSync(resolve(here, "../sm.d.ts"), "utf8");
  const declared = [...dts.matchAll(/^export declare (?:class|function|const) (\w+)/gm)].map((m) => m[1]).sort();
  assert.deepEqual(Object.keys(bundle).sort(), Object.keys(src).sort());
  assert.deepEqual(Object.keys(bundle).sort(), declared);
  assert.equal(bundle.PROTOCOL, "wsgate-v1");
});

for (const backend of ["webcrypto", "noble"]) {
  test(`bundle (${backend}): connect, sensitive echo, error class, logout`, async () => {
    const gw = new MockGateway();
    const s = await bundle.connect({ username: "demo", password: "wsgate-demo", url: "http://gw.test", crypto: backend, fetch: gw.fetch, WebSocket: gw.WebSocket });
    assert.equal(s.user, "demo");
    assert.equal(new TextDecoder().decode(await s.request("sys.echo", "hello", { sensitive: true })), "hello");
    const err = await s.request("secret.echo", "x").catch((e) => e);
    assert.ok(err instanceof bundle.WsgateError);
    assert.equal(err.code, "encryption_required");
    await s.logout();
    await assert.rejects(s.request("sys.echo", "x"), (e) => e instanceof bundle.WsgateError && e.code === "closed");
  });
}
