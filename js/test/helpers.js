// Shared test helpers.
import { existsSync, readFileSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { nobleBackend, webCryptoBackend } from "../src/crypto/index.js";

export const BACKENDS = [webCryptoBackend, nobleBackend];

const here = dirname(fileURLToPath(import.meta.url));
export const TESTDATA = resolve(here, "../../testdata");

/**
 * Loads ../../testdata/<name>. Missing files are an error when
 * WSGATE_REQUIRE_VECTORS=1 (CI); otherwise the caller skips.
 */
export function loadVectors(name) {
  const p = resolve(TESTDATA, name);
  if (!existsSync(p)) {
    if (process.env.WSGATE_REQUIRE_VECTORS === "1") throw new Error(`missing shared test vectors ${p}`);
    return null;
  }
  return JSON.parse(readFileSync(p, "utf8"));
}

export const hex = (s) => Uint8Array.from(Buffer.from(s, "hex"));
export const toHex = (b) => Buffer.from(b).toString("hex");

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Waits (polling every 5 ms) until `pred()` holds; fails after `ms` naming `what`. */
export async function until(pred, ms = 5000, what = "condition") {
  const end = Date.now() + ms;
  while (!pred()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(5);
  }
}
