// The wire test: capture the loopback traffic of real Chromium sessions
// (insecure context with pure-JS crypto, and secure context with Web
// Crypto), check the capture is complete, unmask the client's WebSocket
// frames, and prove that the password, the sensitive payloads, the dynamic
// passwords and the session keys never appear — raw, hex or base64(url) —
// while a plain payload does. Then play the eavesdropper on the same
// capture (eavesdropper.mjs): no SCRAM message, no user name, nothing a
// word list holding the real password could be tested against — while the
// same eavesdropper cracks the recorded clear v1 login of
// test/fixtures/v1-clear-login.pcap.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { readFileSync, rmSync } from "node:fs";
import { join } from "node:path";
import { JS_DIR, WSGATE_BIN, checkPrerequisites, checkServedBundle, freePort, launchBrowser, openPage, sleep, startGateway, tempDir } from "./harness.mjs";
import { afterHttpHeader, encodings, parsePcap, startCapture, tcpConnections, webSocketMessages } from "./pcap.mjs";
import { crack, eavesdrop, readWords, userNameHits } from "./eavesdropper.mjs";

const FIXTURES = join(JS_DIR, "test", "fixtures");

// A user made for this test with a random password that exists nowhere
// else (the demo password is printed in the demo page itself). Full-width
// letters and an accented one: SASLprep (NFKC) must agree in browser and
// gateway for the login to work at all.
const USER = "wire-user";
const PASSWORD = `wire-${randomBytes(8).toString("hex")}-ｐäｓｓ`;
const PREPARED = PASSWORD.normalize("NFKC");
let gw;
let dataDir;
let work;
/** @type {{ kill: () => void } | null} */
let runningCapture = null;

before(async () => {
  checkPrerequisites();
  const which = spawnSync("tcpdump", ["--version"], { encoding: "utf8" });
  if (which.error) throw new Error("tcpdump not found: apt-get install -y tcpdump (the wire test needs it, as root)");
  dataDir = tempDir("wsgate-wire-data-");
  work = tempDir("wsgate-wire-");
  const add = spawnSync(WSGATE_BIN, ["user", "add", USER, "--data-dir", dataDir, "--password-stdin", "--iterations", "4096"], { input: `${PASSWORD}\n`, encoding: "utf8" });
  if (add.status !== 0) throw new Error(`wsgate user add failed: ${add.stderr}${add.stdout}`);
  gw = await startGateway({ port: await freePort(), dataDir });
  await checkServedBundle(gw.origin);
});

after(async () => {
  runningCapture?.kill();
  await gw?.stop();
  for (const d of [dataDir, work]) if (d) rmSync(d, { recursive: true, force: true });
});

/** One session in a page, exercising plain and sensitive traffic; returns what the page knows. */
async function runSession(page, markers) {
  return page.evaluate(async ({ plain, sensitive, password, username }) => {
    const { connect } = await import("/sm.js");
    const toHex = (b) => Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
    const secrets = [];
    const frames = { in: 0, out: 0 };
    // A failed login first: its proof is computed from a wrong password.
    const wrong = await connect({ username, password: password + "-wrong" }).then(
      () => "no error",
      (e) => e.code,
    );
    const s = await connect({
      username,
      password,
      onFrame: (dir) => frames[dir]++,
      testHooks: { onSecrets: (x) => secrets.push({ dp: toHex(x.dynamicPassword), sessionKey: toHex(x.sessionKey), c2s: toHex(x.c2sKey), s2c: toHex(x.s2cKey) }) },
    });
    const td = new TextDecoder();
    const results = {
      backend: s.backend,
      wrong,
      plain: td.decode(await s.request("sys.echo", plain)),
      sensitive: td.decode(await s.request("sys.echo", sensitive, { sensitive: true })),
      sensitiveJson: await s.requestJson("sys.echo", { secret: sensitive }, { sensitive: true }),
      whoami: await s.requestJson("sys.whoami", undefined, { sensitive: true }),
    };
    await s.logout();
    return { ...results, secrets, frames };
  }, { ...markers, password: PASSWORD, username: USER });
}

test("wire: the capture is complete, a plain payload is visible, no secret is", async (t) => {
  const pcapFile = join(work, "wire.pcap");
  const capture = await startCapture(gw.port, pcapFile);
  runningCapture = capture;
  // The test build of sm.js: the eavesdropper needs each session's secrets.
  const browser = await launchBrowser({ testHooks: true });
  const sessions = [];
  const markers = [];
  try {
    for (const secure of [false, true]) {
      const m = { plain: `PLAIN-MARKER-${randomBytes(6).toString("hex")}`, sensitive: `SENSITIVE-${randomBytes(9).toString("hex")}` };
      markers.push(m);
      const { page, errors } = await openPage(browser, gw.port, { secure });
      const r = await runSession(page, m);
      assert.equal(r.backend, secure ? "webcrypto" : "noble");
      assert.equal(r.wrong, "invalid-proof");
      assert.equal(r.plain, m.plain);
      assert.equal(r.sensitive, m.sensitive);
      assert.deepEqual(r.sensitiveJson, { secret: m.sensitive });
      assert.equal(r.whoami.user, USER);
      assert.equal(r.secrets.length, 1, "one connection, one dynamic password");
      assert.deepEqual(errors, []);
      sessions.push(r);
      await page.close();
    }
  } finally {
    await browser.close();
  }
  // Let the last FIN/ACKs reach the capture, then stop it cleanly.
  await sleep(500);
  const stats = await capture.stop();
  runningCapture = null;
  assert.equal(stats.code, 0, `tcpdump failed: ${stats.stderr}`);

  // 1. Completeness. tcpdump's counters alone cannot prove it on lo: the
  // kernel counts each loopback packet twice (outgoing and incoming copies,
  // libpcap keeps one), so "received by filter" is about twice "captured"
  // and "dropped by kernel" may count discarded copies. What proves it: every
  // captured packet is in the file, every TCP stream is gap-free from SYN to
  // FIN/RST, and the WebSocket frames found are exactly those the browser's
  // frame hook saw.
  t.diagnostic(`tcpdump: ${stats.captured} captured, ${stats.received} received by filter, ${stats.dropped} dropped by kernel`);
  assert.ok(stats.captured > 0, stats.stderr);
  const pcap = parsePcap(readFileSync(pcapFile));
  assert.equal(pcap.packets.length, stats.captured, "every captured packet is in the file");
  const conns = tcpConnections(pcap);
  assert.ok(conns.length >= 2);
  for (const c of conns) assert.deepEqual(c.problems, [], `incomplete TCP stream ${c.client} → ${c.server}`);

  const wsConns = conns.filter((c) => c.c2s.subarray(0, 8).toString("latin1") === "GET /ws ");
  assert.equal(wsConns.length, 2, "one WebSocket per session");
  const clientPayloads = [];
  const serverPayloads = [];
  let clientData = 0;
  let serverData = 0;
  for (const c of wsConns) {
    const req = afterHttpHeader(c.c2s);
    const res = afterHttpHeader(c.s2c);
    assert.match(req.head, /\r\nsec-websocket-protocol: wsgate\.v1/i);
    assert.match(res.head, /^HTTP\/1\.1 101 /);
    assert.doesNotMatch(res.head, /sec-websocket-extensions/i, "no WebSocket extension is negotiated");
    const cm = webSocketMessages(req.body);
    const sm = webSocketMessages(res.body);
    assert.equal(cm.rest, 0, "no partial client frame at the end");
    assert.equal(sm.rest, 0, "no partial server frame at the end");
    for (const m of cm.messages) {
      assert.equal(m.masked, true, "browsers mask every client frame");
      if (m.opcode === 2) {
        clientData++;
        clientPayloads.push(m.payload);
      } else assert.ok(m.opcode === 8 || m.opcode === 9 || m.opcode === 10, `client opcode ${m.opcode}`);
    }
    for (const m of sm.messages) {
      assert.equal(m.masked, false);
      if (m.opcode === 2) {
        serverData++;
        serverPayloads.push(m.payload);
      } else assert.ok(m.opcode >= 8, `server opcode ${m.opcode}`);
    }
  }
  const hookOut = sessions.reduce((n, s) => n + s.frames.out, 0);
  const hookIn = sessions.reduce((n, s) => n + s.frames.in, 0);
  assert.equal(clientData, hookOut, "the capture holds every frame the browser sent");
  assert.equal(serverData, hookIn, "the capture holds every frame the browser received");

  // 2. The plain payload is there (so the capture and the unmasking work).
  const unmaskedClient = Buffer.concat(clientPayloads);
  const fromServer = Buffer.concat(serverPayloads);
  for (const m of markers) {
    assert.ok(unmaskedClient.includes(m.plain), `plain payload ${m.plain} found in the unmasked client frames`);
    assert.ok(fromServer.includes(m.plain), `plain payload ${m.plain} found in the server frames`);
  }

  // 3. No secret anywhere: raw TCP bytes of every connection (login HTTP
  // included, WebSocket still masked) and the unmasked WebSocket payloads.
  const corpora = {
    "raw TCP": Buffer.concat(conns.flatMap((c) => [c.c2s, c.s2c])),
    "unmasked client frames": unmaskedClient,
    "server frames": fromServer,
  };
  assert.notEqual(PREPARED, PASSWORD);
  const secrets = [
    { what: "password", bytes: Buffer.from(PASSWORD) },
    { what: "SASLprep'd password", bytes: Buffer.from(PREPARED) },
  ];
  for (const m of markers) secrets.push({ what: `sensitive payload ${m.sensitive}`, bytes: Buffer.from(m.sensitive) });
  for (const s of sessions) {
    for (const x of s.secrets) {
      secrets.push({ what: "dynamic password", bytes: Buffer.from(x.dp, "hex") });
      secrets.push({ what: "session key", bytes: Buffer.from(x.sessionKey, "hex") });
      secrets.push({ what: "c2s key", bytes: Buffer.from(x.c2s, "hex") });
      secrets.push({ what: "s2c key", bytes: Buffer.from(x.s2c, "hex") });
    }
  }
  let checks = 0;
  for (const s of secrets) {
    for (const { form, needle } of encodings(s.bytes)) {
      for (const [where, hay] of Object.entries(corpora)) {
        assert.equal(hay.includes(needle), false, `${s.what} found as ${form} in the ${where}`);
        checks++;
      }
    }
  }
  assert.ok(checks > 100);
  t.diagnostic(`${pcap.packets.length} packets, ${conns.length} TCP connections, ${clientData} + ${serverData} WebSocket messages, ${secrets.length} secrets × encodings × corpora = ${checks} searches`);
  // And the check itself can see a secret when it is there: the plain marker
  // in every encoding the secrets were searched in, wherever it was sent as is.
  assert.ok(encodings(Buffer.from(markers[0].plain)).some(({ needle }) => unmaskedClient.includes(needle)));

  // 4. The eavesdropper (docs/protocol.md §4): everything it can pull out of
  // the capture. First, that there is a sealed login in it to look at: each
  // session made one failed and one good login, four PUT /auth/session
  // exchanges, every one in the sealed form.
  const spy = eavesdrop(readFileSync(pcapFile));
  assert.equal(spy.connections.length, conns.length, "the eavesdropper sees the connections the wire check saw");
  for (const c of spy.connections) {
    assert.deepEqual(c.gaps, [], `the eavesdropper's reassembly of ${c.label}`);
    assert.deepEqual(c.http.errors, [], `the eavesdropper's HTTP parse of ${c.label}`);
  }
  const loginConns = spy.connections.filter((c) => c.login);
  assert.ok(loginConns.length >= 1, "the capture holds connections that carry /auth/");
  const puts = spy.sealed.loginPuts.map((p) => `${p.form}: ${p.requestBody.slice(0, 120)} → ${p.status} ${String(p.responseBody).slice(0, 120)}`).join("\n  ");
  assert.equal(spy.sealed.clearRequests + spy.sealed.clearReplies, 0, `a login message in clear:\n  ${puts}`);
  assert.equal(spy.sealed.first, 2 * sessions.length, `sealed first requests ({kid, enc, ct}):\n  ${puts}`);
  assert.equal(spy.sealed.second, 2 * sessions.length, `sealed second requests ({sid, ct}):\n  ${puts}`);
  assert.equal(spy.sealed.replies, 4 * sessions.length, `sealed replies ({status, …, ct}):\n  ${puts}`);
  const statuses = spy.sealed.loginPuts.map((p) => p.status).sort();
  assert.deepEqual(statuses, sessions.flatMap(() => [200, 401, 401, 401]).sort(), `login statuses:\n  ${puts}`);
  // No SCRAM message anywhere: raw bytes, JSON strings, base64/hex-wrapped
  // strings, request targets, unmasked WebSocket messages.
  const scram = spy.found.map((m) => `${m.kind} ${m.text}\n    in ${m.wheres.join("\n    and ")}`);
  assert.equal(scram.length, 0, `SCRAM messages in clear in the capture:\n  ${scram.join("\n  ")}`);
  assert.equal(spy.transcripts.length, 0, "login transcripts a guess could be tested against");
  // The user name, in any of its forms, in no connection (the login ones
  // first among them; the WebSocket's KEY_ACK carries it encrypted).
  for (const c of spy.connections) {
    const hits = userNameHits(c, USER);
    const seen = hits.map((h) => `${h.form} in ${h.where}: …${JSON.stringify(h.context)}…`);
    assert.equal(seen.length, 0, `user name ${USER} seen in ${c.label}${c.login ? " (a login connection)" : ""}:\n  ${seen.join("\n  ")}`);
  }
  // The word list with the real password in it recovers nothing...
  const words = [...readWords(join(FIXTURES, "v1-clear-login.words")), PASSWORD, PREPARED];
  assert.deepEqual(crack(spy.transcripts, words), []);
  // ...while the same eavesdropper, on the recorded clear v1 login, finds
  // the transcripts and cracks the password: the check above can fail.
  const v1 = eavesdrop(readFileSync(join(FIXTURES, "v1-clear-login.pcap")));
  const v1cracked = crack(v1.transcripts, words);
  assert.ok(v1.transcripts.length >= 1 && v1cracked.length >= 1, `the eavesdropper cracks the clear v1 fixture (${v1.transcripts.length} transcripts, ${v1cracked.length} cracked)`);
  assert.ok(v1.connections.some((c) => userNameHits(c, v1cracked[0].user).length > 0), "and sees its user name");
  t.diagnostic(
    `eavesdropper: ${spy.connections.length} connections (${loginConns.length} with /auth/), ${spy.sealed.first} + ${spy.sealed.second} sealed login requests, ${spy.found.length} SCRAM messages, ${spy.transcripts.length} transcripts; on the v1 fixture: ${v1.found.length} SCRAM messages, cracked ${v1cracked.map((x) => `${x.user}/${x.password}`).join(", ")}`,
  );
});
