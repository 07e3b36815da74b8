// Ten tabs of one app, in headless Chromium against a real gateway, for a
// user with the default 600 000 PBKDF2 iterations: each tab
// with a session of its own (`connect()`) against all of them sharing one
// (`connect({ shared: true })`, README "Shared mode"). Per mode and round:
//   - connect: the time until every tab's session is open, the gateway's
//     CPU for it, and what the gateway saw (WebSockets, logins, KEY_INITs,
//     from its /metrics);
//   - fan-out: every tab subscribed to one channel, EVENTS events published
//     with /api/publish, the gateway's CPU per event until every tab has
//     every event, less what as many publishes cost with nobody subscribed;
//   - memory: Chromium's resident memory (all its processes) with the ten
//     tabs connected and subscribed, minus the same ten tabs before connect;
//   - requests: REQUESTS echo requests from every tab at once, wall time.
// Modes alternate within each round, so the machine's load spreads over
// both; the ratios (shared ÷ per-tab) are of the same run.
//
//   node bench/tabs.mjs [--tabs 10] [--rounds 3] [--events 200] [--requests 50] [--insecure] [--json FILE]
//
// Environment: WSGATE_BIN (default $CARGO_TARGET_DIR/release/wsgate, else
// ../target/release/wsgate, else the e2e default), CHROMIUM_BIN. The pages
// load the binary's own /sm.js and /sm-worker.js (rebuild it after changing
// js/src: `npm run build`, then `cargo build --release -p wsgate`).
import { spawnSync } from "node:child_process";
import { readFileSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { get as httpGet } from "node:http";
import { cpus, loadavg } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { existsSync } from "node:fs";

const here = dirname(fileURLToPath(import.meta.url));
const JS_DIR = resolve(here, "..");
const arg = (name, dflt) => {
  const i = process.argv.indexOf(name);
  return i >= 0 ? process.argv[i + 1] : dflt;
};
const TABS = Number(arg("--tabs", "10"));
const ROUNDS = Number(arg("--rounds", "3"));
const EVENTS = Number(arg("--events", "200"));
const REQUESTS = Number(arg("--requests", "50"));
const SECURE = !process.argv.includes("--insecure");
const JSON_OUT = arg("--json", null);

if (!process.env.WSGATE_BIN) {
  const candidates = [process.env.CARGO_TARGET_DIR && join(process.env.CARGO_TARGET_DIR, "release/wsgate"), resolve(JS_DIR, "../target/release/wsgate")].filter(Boolean);
  const found = candidates.find((p) => existsSync(p));
  if (found) process.env.WSGATE_BIN = found;
}
const H = await import("../test/e2e/harness.mjs");

/** CPU time (ns) of every thread of process `pid` so far. */
function cpuNs(pid) {
  let total = 0;
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    try {
      total += Number(readFileSync(`/proc/${pid}/task/${tid}/schedstat`, "utf8").split(" ")[0]);
    } catch {
      // the thread ended
    }
  }
  return total;
}

/** Resident memory (bytes) of every process whose command line names `marker` (Chromium's profile dir). */
function rssOf(marker) {
  let total = 0;
  for (const pid of readdirSync("/proc").filter((d) => /^\d+$/.test(d))) {
    try {
      if (!readFileSync(`/proc/${pid}/cmdline`, "utf8").includes(marker)) continue;
      const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
      if (m) total += Number(m[1]) * 1024;
    } catch {
      // gone
    }
  }
  return total;
}

function metrics(port) {
  return new Promise((res, rej) => {
    httpGet(`http://127.0.0.1:${port}/metrics`, { agent: false }, (r) => {
      let b = "";
      r.on("data", (c) => (b += c));
      r.on("end", () => {
        const m = {};
        for (const line of b.split("\n")) {
          const hit = /^(wsgate_[a-z_]+(?:\{[^}]*\})?) (\d+(?:\.\d+)?)$/.exec(line);
          if (hit) m[hit[1]] = Number(hit[2]);
        }
        res({ ws: m.wsgate_connections_total ?? 0, logins: m['wsgate_logins_total{result="ok"}'] ?? 0, keyInits: m['wsgate_key_establishments_total{result="ok"}'] ?? 0 });
      });
    }).on("error", rej);
  });
}

const stats = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return { median: s.length % 2 ? s[mid] : (s[mid - 1] + s[mid]) / 2, min: s[0], max: s[s.length - 1] };
};

H.checkPrerequisites();
const dataDir = H.tempDir("wsgate-bench-tabs-data-");
const configDir = H.tempDir("wsgate-bench-tabs-config-");
const port = await H.freePort();
const metricsPort = await H.freePort();
const config = join(configDir, "tabs.toml");
writeFileSync(config, [`api_keys = ["${H.API_KEY}"]`, `metrics_listen = "127.0.0.1:${metricsPort}"`, "", "[[channels]]", 'pattern = "news"', ""].join("\n"));
// A user with the CLI's default PBKDF2 iterations (600 000), as in production:
// each login costs the browser what a real one does.
const PASSWORD = `tabs-${Math.random().toString(36).slice(2)}`;
const add = spawnSync(H.WSGATE_BIN, ["user", "add", "tabsuser", "--data-dir", dataDir, "--password-stdin"], { input: `${PASSWORD}\n`, encoding: "utf8" });
if (add.status !== 0) throw new Error(`wsgate user add failed: ${add.stderr}${add.stdout}`);
const gw = await H.startGateway({ port, dataDir, config });
await H.checkServedBundle(gw.origin);
const browser = await H.launchBrowser();
const profileMarker = browser.userDataDir;

/** One round of one mode. */
async function round(shared) {
  const pages = [];
  for (let i = 0; i < TABS; i++) pages.push((await H.openPage(browser, port, { secure: SECURE })).page);
  for (const p of pages) await p.evaluate(() => import("/sm.js").then((m) => (window.__sm = m)));
  await H.sleep(300);
  const rssBefore = rssOf(profileMarker);
  const m0 = await metrics(metricsPort);
  const c0 = cpuNs(gw.proc.pid);
  const t0 = performance.now();
  // Every tab at once, as when a browser restores ten tabs. In shared mode
  // the first to reach the worker logs in and the others join it.
  await Promise.all(
    pages.map((p) =>
      p.evaluate(
        async ({ shared, password }) => {
          window.__s = await window.__sm.connect({ username: "tabsuser", password, shared });
          window.__n = 0;
        },
        { shared, password: PASSWORD },
      ),
    ),
  );
  const connectMs = performance.now() - t0;
  const connectCpu = cpuNs(gw.proc.pid) - c0;
  const m1 = await metrics(metricsPort);
  // What a publish costs the gateway with nobody subscribed (the HTTP
  // request, the channel lookup): subtracted from the fan-out below.
  const c9 = cpuNs(gw.proc.pid);
  for (let e = 0; e < EVENTS; e++) await H.publish(gw.origin, "news", { e });
  const publishCpu = cpuNs(gw.proc.pid) - c9;
  for (const p of pages) await p.evaluate(() => window.__s.subscribe("news", () => window.__n++));
  await H.sleep(300);
  const rssAfter = rssOf(profileMarker);

  const c1 = cpuNs(gw.proc.pid);
  for (let e = 0; e < EVENTS; e++) await H.publish(gw.origin, "news", { e });
  for (const p of pages) await p.waitForFunction((n) => window.__n >= n, EVENTS, { timeout: 60_000 });
  const fanoutCpu = cpuNs(gw.proc.pid) - c1;

  const t1 = performance.now();
  await Promise.all(
    pages.map((p) =>
      p.evaluate(async (n) => {
        const asks = [];
        for (let k = 0; k < n; k++) asks.push(window.__s.request("sys.echo", `r${k}`));
        await Promise.all(asks);
      }, REQUESTS),
    ),
  );
  const requestsMs = performance.now() - t1;

  if (shared) await pages[0].evaluate(() => window.__s.logout());
  else for (const p of pages) await p.evaluate(() => window.__s.logout());
  for (const p of pages) await p.close();
  return {
    connectMs,
    connectCpuMs: connectCpu / 1e6,
    webSockets: m1.ws - m0.ws,
    logins: m1.logins - m0.logins,
    keyInits: m1.keyInits - m0.keyInits,
    fanoutCpuUsPerEvent: (fanoutCpu - publishCpu) / 1e3 / EVENTS,
    chromiumMiB: (rssAfter - rssBefore) / 2 ** 20,
    requestsMs,
  };
}

const results = { pertab: [], shared: [] };
try {
  await round(false); // warm-up, not counted
  for (let r = 0; r < ROUNDS; r++) {
    for (const shared of r % 2 ? [true, false] : [false, true]) {
      const x = await round(shared);
      results[shared ? "shared" : "pertab"].push(x);
      console.error(`round ${r + 1} ${shared ? "shared " : "per-tab"}: ${JSON.stringify(x)}`);
    }
  }
} finally {
  await browser.close();
  await gw.stop();
  rmSync(dataDir, { recursive: true, force: true });
  rmSync(configDir, { recursive: true, force: true });
}

const rows = [
  ["connect, all tabs open (ms)", "connectMs", 0],
  ["gateway CPU for the connects (ms)", "connectCpuMs", 1],
  ["WebSockets the gateway accepted", "webSockets", 0],
  ["logins", "logins", 0],
  ["KEY_INITs", "keyInits", 0],
  [`gateway CPU to deliver one event to ${TABS} tabs (µs, beyond the publish itself)`, "fanoutCpuUsPerEvent", 1],
  ["Chromium memory for the sessions (MiB)", "chromiumMiB", 1],
  [`${REQUESTS} requests from every tab at once (ms)`, "requestsMs", 0],
];
const fmt = (v, d) => v.toFixed(d);
const lines = [
  `${TABS} tabs, ${SECURE ? "secure pages (Web Crypto)" : "insecure pages (noble)"}, ${ROUNDS} rounds (+1 warm-up), ${EVENTS} events, ${cpus().length} CPUs, load ${loadavg()[0].toFixed(2)}`,
  "",
  "| | per tab (median, min–max) | shared (median, min–max) | shared ÷ per tab |",
  "|---|---|---|---|",
];
const summary = {};
for (const [label, key, d] of rows) {
  const a = stats(results.pertab.map((x) => x[key]));
  const b = stats(results.shared.map((x) => x[key]));
  summary[key] = { pertab: a, shared: b, ratio: a.median ? b.median / a.median : null };
  lines.push(`| ${label} | ${fmt(a.median, d)} (${fmt(a.min, d)}–${fmt(a.max, d)}) | ${fmt(b.median, d)} (${fmt(b.min, d)}–${fmt(b.max, d)}) | ${a.median ? (b.median / a.median).toFixed(2) : "–"} |`);
}
console.log(lines.join("\n"));
if (JSON_OUT) writeFileSync(JSON_OUT, JSON.stringify({ tabs: TABS, secure: SECURE, rounds: ROUNDS, events: EVENTS, results, summary }, null, 2));
