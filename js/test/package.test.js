// The npm package: `npm pack` ships exactly the built module, its types and
// the README; the built module is the bundle the gateway serves at /sm.js;
// `exports` and `types` resolve for a consumer (Node and TypeScript).
import { execFileSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { test } from "node:test";
import assert from "node:assert/strict";
import { fileURLToPath, pathToFileURL } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const JS_DIR = resolve(here, "..");
const ASSET = resolve(JS_DIR, "../crates/server/assets/sm.js");
const pkg = JSON.parse(readFileSync(join(JS_DIR, "package.json"), "utf8"));
const NPM = process.platform === "win32" ? "npm.cmd" : "npm";

/** `npm pack --json` output; prepack's own output can precede the JSON. */
function packJson(args) {
  const out = execFileSync(NPM, ["pack", "--json", ...args], { cwd: JS_DIR, encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
  const start = out.search(/^\[/m);
  assert.ok(start >= 0, `no JSON in npm pack output:\n${out}`);
  return JSON.parse(out.slice(start));
}

test("package.json: publishable shape", () => {
  assert.equal(pkg.private, undefined, "a private package cannot be published");
  assert.equal(pkg.name, "wsgate-sm");
  assert.equal(pkg.type, "module");
  assert.equal(pkg.sideEffects, false);
  assert.equal(pkg.types, "./sm.d.ts");
  assert.deepEqual(pkg.exports["."], { types: "./sm.d.ts", default: "./dist/sm.js" });
  assert.match(pkg.scripts.prepack, /build\.mjs dist\/sm\.js/);
  // Self-contained: the bundle carries @hpke/* and @noble/*.
  assert.deepEqual(pkg.dependencies ?? {}, {}, "the built module bundles its dependencies; the package must have none");
  const cargo = readFileSync(resolve(JS_DIR, "../Cargo.toml"), "utf8");
  const license = /^license\s*=\s*"([^"]+)"/m.exec(cargo)?.[1];
  assert.equal(pkg.license, license, "the package's license is the repository's (Cargo.toml)");
  // The version rule (README "Versions"): major = the protocol's version.
  assert.match(pkg.version, /^1\.\d+\.\d+$/, "wsgate-v1 ⇒ 1.x.y");
});

test("npm pack --dry-run: exactly the intended files", () => {
  const [info] = packJson(["--dry-run"]);
  const files = info.files.map((f) => f.path).sort();
  assert.deepEqual(files, ["LICENSE-APACHE", "LICENSE-MIT", "README.md", "dist/sm-worker.js", "dist/sm.js", "package.json", "sm.d.ts"]);
  assert.equal(info.name, pkg.name);
  assert.equal(info.version, pkg.version);
  assert.deepEqual(info.bundled, []);
  // prepack built dist/sm.js: byte for byte the bundle the gateway serves.
  assert.ok(readFileSync(join(JS_DIR, "dist/sm.js")).equals(readFileSync(ASSET)), "dist/sm.js must equal crates/server/assets/sm.js (run npm run build)");
  // And its shared worker, next to it, where connect({ shared: true }) looks by default.
  assert.ok(readFileSync(join(JS_DIR, "dist/sm-worker.js")).equals(readFileSync(join(dirname(ASSET), "sm-worker.js"))), "dist/sm-worker.js must equal crates/server/assets/sm-worker.js (run npm run build)");
  // Self-contained: no import of any module (static or dynamic), so an app's
  // bundler has nothing to resolve (not even a Node built-in).
  const code = readFileSync(join(JS_DIR, "dist/sm.js"), "utf8");
  assert.doesNotMatch(code, /\bimport\s*\(/, "dist/sm.js must not import() anything");
  assert.doesNotMatch(code, /(^|[;}\n])\s*import\s*[\s{*"']/, "dist/sm.js must not import anything");
  assert.doesNotMatch(code, /\brequire\s*\(/, "dist/sm.js must not require() anything");
});

test("the packed tarball installs; exports and types resolve for a consumer", async () => {
  const dir = mkdtempSync(join(tmpdir(), "wsgate-pack-"));
  try {
    const [info] = packJson(["--pack-destination", dir]);
    const tarball = join(dir, info.filename);
    // Unpack as npm would install it (no registry needed: no dependencies).
    const mod = join(dir, "app/node_modules/wsgate-sm");
    mkdirSync(mod, { recursive: true });
    execFileSync("tar", ["-xzf", tarball, "-C", mod, "--strip-components=1"]);
    writeFileSync(join(dir, "app/package.json"), JSON.stringify({ name: "app", private: true, type: "module" }));

    // Node resolves the bare name through `exports`.
    writeFileSync(join(dir, "app/resolve.mjs"), 'console.log(import.meta.resolve("wsgate-sm"));');
    const resolved = execFileSync(process.execPath, [join(dir, "app/resolve.mjs")], { cwd: join(dir, "app"), encoding: "utf8" }).trim();
    assert.equal(resolved, pathToFileURL(join(mod, "dist/sm.js")).href);
    // And the shared worker's script, for an app to copy onto its origin.
    writeFileSync(join(dir, "app/resolve-worker.mjs"), 'console.log(import.meta.resolve("wsgate-sm/sm-worker.js"));');
    const worker = execFileSync(process.execPath, [join(dir, "app/resolve-worker.mjs")], { cwd: join(dir, "app"), encoding: "utf8" }).trim();
    assert.equal(worker, pathToFileURL(join(mod, "dist/sm-worker.js")).href);
    const m = await import(resolved);
    assert.equal(typeof m.connect, "function");
    assert.equal(typeof m.WsgateError, "function");
    assert.equal(typeof m.Session, "function");
    assert.equal(typeof m.hasSubtle, "function");
    assert.equal(m.PROTOCOL, "wsgate-v1");
    assert.equal(pkg.version.split(".")[0], m.PROTOCOL.replace(/^wsgate-v/, ""), "major version = protocol version");

    // TypeScript finds sm.d.ts through `exports` (nodenext) and the types fit.
    writeFileSync(
      join(dir, "app/consumer.ts"),
      [
        'import { connect, WsgateError, PROTOCOL, type Session, type WsgateErrorCode } from "wsgate-sm";',
        'const s: Promise<Session> = connect({ url: "http://127.0.0.1:8080", username: "demo", password: "x" });',
        "s.catch((e: unknown) => { if (e instanceof WsgateError) { const c: WsgateErrorCode | string = e.code; console.log(c); } });",
        "const p: string = PROTOCOL;",
        "console.log(p);",
        "// @ts-expect-error -- connect needs options",
        "connect();",
        "",
      ].join("\n"),
    );
    writeFileSync(
      join(dir, "app/tsconfig.json"),
      JSON.stringify({ compilerOptions: { target: "es2022", module: "nodenext", moduleResolution: "nodenext", lib: ["es2022", "dom"], strict: true, noEmit: true, types: [] }, files: ["consumer.ts"] }),
    );
    const tsc = resolve(JS_DIR, "node_modules/typescript/bin/tsc");
    try {
      execFileSync(process.execPath, [tsc, "-p", "."], { cwd: join(dir, "app"), encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] });
    } catch (e) {
      assert.fail(`tsc on a consumer of the package failed:\n${/** @type {any} */ (e).stdout}${/** @type {any} */ (e).stderr}`);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
