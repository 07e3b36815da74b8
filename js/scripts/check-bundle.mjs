// Fails when the committed bundle differs from a fresh build of the sources.
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const dir = mkdtempSync(join(tmpdir(), "sm-bundle-"));
try {
  execFileSync(process.execPath, [resolve(here, "../build.mjs"), join(dir, "sm.js")], { stdio: ["ignore", "ignore", "inherit"] });
  for (const name of ["sm.js", "sm-worker.js"]) check(name);
} finally {
  rmSync(dir, { recursive: true, force: true });
}

/** @param {string} name */
function check(name) {
  const committed = resolve(here, "../../crates/server/assets", name);
  const a = readFileSync(join(dir, name));
  let b;
  try {
    b = readFileSync(committed);
  } catch {
    console.error(`check-bundle: ${committed} is missing; run \`npm run build\` in js/ and commit it.`);
    process.exit(1);
  }
  if (!a.equals(b)) {
    let i = 0;
    while (i < a.length && i < b.length && a[i] === b[i]) i++;
    console.error(`check-bundle: ${committed} differs from a fresh build (first difference at byte ${i}; fresh ${a.length} bytes, committed ${b.length}). Run \`npm run build\` in js/ and commit the result.`);
    process.exit(1);
  }
  console.log(`check-bundle: ${committed} matches a fresh build (${a.length} bytes).`);
}
