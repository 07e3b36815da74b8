// The eavesdropper: what someone who recorded a browser's traffic to the
// gateway over plain http:// / ws:// can get out of the recording.
//
// It reassembles every TCP stream of a pcap by sequence number (out of
// order, retransmitted and overlapping segments, a missing SYN), parses the
// HTTP/1.1 exchanges on them (keep-alive, Content-Length, chunked bodies,
// gzip/deflate/br, the switch to WebSocket), unmasks the WebSocket frames,
// and looks for SCRAM messages (RFC 5802: client-first `n=<saslname>,r=…`,
// server-first `r=…,s=…,i=…`, client-final `c=…,r=…,p=…`) anywhere: in
// the raw bytes, in every string of every JSON body and WebSocket message,
// in request targets, and inside any base64 / base64url / hex string that
// decodes to text. Messages that belong together (by nonce) make a
// transcript; every transcript is attacked offline with a word list, at the
// iteration count its server-first names: a guess is right when it
// reproduces the recorded ClientProof.
//
// Before the sealed login (docs/protocol.md §4) this cracks a recorded
// login; with it, a capture must give this attacker nothing.
//
// As a program: node test/e2e/eavesdropper.mjs <capture.pcap> [words.txt] [user name…]
import { createHash, createHmac, pbkdf2Sync, timingSafeEqual } from "node:crypto";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { brotliDecompressSync, gunzipSync, inflateRawSync, inflateSync } from "node:zlib";
import { saslprep } from "../../src/saslprep.js";
import { decodeTcp, encodings, parsePcap, webSocketMessages } from "./pcap.mjs";

// ---------------------------------------------------------------------------
// TCP

/** Signed 32-bit distance from a to b (sequence-number arithmetic, RFC 1982). */
const seqDiff = (b, a) => (b - a) | 0;

/**
 * One direction of a connection, reassembled by sequence number. The first
 * copy of a byte wins (a retransmission never replaces data already placed);
 * holes are reported, not filled.
 * @param {{ seq: number, payload: Buffer }[]} segs
 * @param {number | null} synSeq
 */
export function reassemble(segs, synSeq) {
  const gaps = [];
  if (segs.length === 0) return { data: Buffer.alloc(0), gaps, pieces: [] };
  let base;
  if (synSeq !== null) base = (synSeq + 1) >>> 0;
  else {
    // No SYN: start at the lowest sequence number seen.
    base = segs[0].seq;
    for (const s of segs) if (seqDiff(s.seq, base) < 0) base = s.seq;
    gaps.push({ at: 0, bytes: null, why: "no SYN: the start of the stream may be missing" });
  }
  const placed = segs
    .map((s, i) => ({ off: seqDiff(s.seq, base), payload: s.payload, i }))
    .filter((s) => s.off + s.payload.length > 0)
    .map((s) => (s.off < 0 ? { off: 0, payload: s.payload.subarray(-s.off), i: s.i } : s))
    .sort((a, b) => a.off - b.off || a.i - b.i);
  const parts = [];
  /** Contiguous runs: { off (stream offset), start (offset in data) }. */
  const pieces = [];
  let len = 0; // stream offset covered so far
  let dataLen = 0;
  for (const s of placed) {
    const end = s.off + s.payload.length;
    if (end <= len) continue; // a retransmission of bytes already placed
    if (s.off > len) {
      gaps.push({ at: len, bytes: s.off - len, why: "bytes missing" });
      pieces.push({ off: s.off, start: dataLen });
      len = s.off;
    } else if (pieces.length === 0) pieces.push({ off: 0, start: 0 });
    const chunk = s.payload.subarray(len - s.off);
    parts.push(chunk);
    dataLen += chunk.length;
    len = end;
  }
  return { data: Buffer.concat(parts), gaps, pieces };
}

const HTTP_REQUEST_LINE = /^[A-Z]{3,10} \S+ HTTP\/1\.[01]\r\n/;

/**
 * Every TCP connection of a capture, both directions reassembled, in the
 * order their first packet was captured. A SYN on a 4-tuple that already
 * had one starts a new connection (port reuse).
 * @param {Buffer | { linktype: number, packets: { data: Buffer }[] }} capture
 */
export function tcpStreams(capture) {
  const pcap = Buffer.isBuffer(capture) ? parsePcap(capture) : capture;
  /** @type {Map<string, any>} current connection per unordered 4-tuple */
  const current = new Map();
  const conns = [];
  pcap.packets.forEach((p, n) => {
    const t = decodeTcp(p.data, pcap.linktype);
    if (!t) return;
    const tuple = [t.src, t.dst].sort().join("|");
    let c = current.get(tuple);
    const newSyn = t.syn && !t.ack;
    if (!c || (newSyn && c.dirs.has(t.src) && c.dirs.get(t.src).synSeq !== null && c.dirs.get(t.src).synSeq !== t.seq)) {
      c = { first: n, dirs: new Map(), clientSyn: null };
      current.set(tuple, c);
      conns.push(c);
    }
    let d = c.dirs.get(t.src);
    if (!d) {
      d = { src: t.src, dst: t.dst, segs: [], synSeq: null, fin: false, rst: false, packets: 0 };
      c.dirs.set(t.src, d);
    }
    d.packets++;
    if (t.syn) {
      d.synSeq = t.seq;
      if (!t.ack) c.clientSyn = t.src;
    }
    if (t.fin) d.fin = true;
    if (t.rst) d.rst = true;
    if (t.payload.length > 0) d.segs.push({ seq: t.seq, payload: t.payload });
  });
  return conns.map((c, id) => {
    const ds = [...c.dirs.values()];
    let client = c.clientSyn;
    if (!client) {
      // No SYN seen: the side that speaks HTTP requests is the client.
      const speaker = ds.find((d) => HTTP_REQUEST_LINE.test(reassemble(d.segs, d.synSeq).data.subarray(0, 64).toString("latin1")));
      client = (speaker ?? ds[0]).src;
    }
    const cd = c.dirs.get(client);
    const server = cd ? cd.dst : ds.find((d) => d.src !== client)?.src;
    const sd = c.dirs.get(server);
    const empty = { data: Buffer.alloc(0), gaps: [], pieces: [] };
    const c2s = cd ? reassemble(cd.segs, cd.synSeq) : empty;
    const s2c = sd ? reassemble(sd.segs, sd.synSeq) : empty;
    return {
      id,
      client,
      server,
      firstPacket: c.first,
      c2s: c2s.data,
      s2c: s2c.data,
      gaps: [...c2s.gaps.map((g) => ({ dir: "c2s", ...g })), ...s2c.gaps.map((g) => ({ dir: "s2c", ...g }))],
    };
  });
}

// ---------------------------------------------------------------------------
// HTTP/1.1

/** @param {string} head */
function parseHead(head) {
  const lines = head.split("\r\n");
  const start = lines.shift() ?? "";
  /** @type {Record<string, string>} */
  const headers = {};
  for (const l of lines) {
    const i = l.indexOf(":");
    if (i <= 0) continue;
    const k = l.slice(0, i).trim().toLowerCase();
    const v = l.slice(i + 1).trim();
    headers[k] = k in headers ? `${headers[k]}, ${v}` : v;
  }
  return { start, headers };
}

/**
 * A message body starting at `o`: chunked, Content-Length, or (responses
 * only) up to the end of the stream.
 * @returns {{ body: Buffer, end: number, complete: boolean }}
 */
function readBody(buf, o, headers, untilClose) {
  const te = (headers["transfer-encoding"] ?? "").toLowerCase();
  if (te.split(",").map((s) => s.trim()).includes("chunked")) {
    const parts = [];
    let p = o;
    for (;;) {
      const eol = buf.indexOf("\r\n", p);
      if (eol < 0) return { body: Buffer.concat(parts), end: buf.length, complete: false };
      const size = parseInt(buf.subarray(p, eol).toString("latin1").split(";")[0].trim(), 16);
      if (!Number.isFinite(size)) return { body: Buffer.concat(parts), end: buf.length, complete: false };
      p = eol + 2;
      if (size === 0) {
        // Trailers, then an empty line.
        const endT = buf.indexOf("\r\n\r\n", p - 2);
        return { body: Buffer.concat(parts), end: endT < 0 ? buf.length : endT + 4, complete: endT >= 0 };
      }
      if (p + size > buf.length) {
        parts.push(buf.subarray(p));
        return { body: Buffer.concat(parts), end: buf.length, complete: false };
      }
      parts.push(buf.subarray(p, p + size));
      p += size + 2;
    }
  }
  if (headers["content-length"] !== undefined) {
    const n = Number(headers["content-length"].split(",")[0]);
    const end = Math.min(buf.length, o + n);
    return { body: buf.subarray(o, end), end, complete: o + n <= buf.length };
  }
  if (untilClose) return { body: buf.subarray(o), end: buf.length, complete: true };
  return { body: Buffer.alloc(0), end: o, complete: true };
}

/** Undoes Content-Encoding when it can; the raw body otherwise. */
function decodeBody(body, headers) {
  const ce = (headers["content-encoding"] ?? "").toLowerCase().trim();
  try {
    if (ce === "gzip" || ce === "x-gzip") return gunzipSync(body);
    if (ce === "deflate") {
      try {
        return inflateSync(body);
      } catch {
        return inflateRawSync(body);
      }
    }
    if (ce === "br") return brotliDecompressSync(body);
  } catch {
    /* keep the raw bytes */
  }
  return body;
}

/**
 * The HTTP/1.1 exchanges of one connection, requests paired with responses
 * in order (interim 1xx responses other than 101 pair with nothing), and
 * the WebSocket bytes after a 101.
 * @param {Buffer} c2s @param {Buffer} s2c
 */
export function httpExchanges(c2s, s2c) {
  const requests = [];
  const errors = [];
  let o = 0;
  let wsClient = null;
  while (o < c2s.length) {
    if (!HTTP_REQUEST_LINE.test(c2s.subarray(o, o + 2100).toString("latin1"))) {
      if (requests.length > 0 && requests[requests.length - 1].upgrade) wsClient = c2s.subarray(o);
      else errors.push(`client bytes at ${o} are not an HTTP request`);
      break;
    }
    const he = c2s.indexOf("\r\n\r\n", o);
    if (he < 0) {
      errors.push(`request head at ${o} never ends`);
      break;
    }
    const { start, headers } = parseHead(c2s.subarray(o, he).toString("latin1"));
    const [method, target] = start.split(" ");
    const b = readBody(c2s, he + 4, headers, false);
    if (!b.complete) errors.push(`request body of ${method} ${target} is incomplete`);
    const upgrade = /upgrade/i.test(headers.connection ?? "") && headers.upgrade !== undefined;
    requests.push({ method, target, headers, body: decodeBody(b.body, headers), upgrade });
    o = b.end;
  }
  const responses = [];
  let wsServer = null;
  o = 0;
  let ri = 0;
  while (o < s2c.length) {
    if (!/^HTTP\/1\.[01] \d{3}/.test(s2c.subarray(o, o + 16).toString("latin1"))) {
      errors.push(`server bytes at ${o} are not an HTTP response`);
      break;
    }
    const he = s2c.indexOf("\r\n\r\n", o);
    if (he < 0) {
      errors.push(`response head at ${o} never ends`);
      break;
    }
    const { start, headers } = parseHead(s2c.subarray(o, he).toString("latin1"));
    const status = Number(start.split(" ")[1]);
    const req = requests[ri];
    if (status === 101) {
      responses.push({ status, headers, body: Buffer.alloc(0), request: ri++ });
      wsServer = s2c.subarray(he + 4);
      break;
    }
    if (status >= 100 && status < 200) {
      o = he + 4;
      continue;
    }
    const noBody = status === 204 || status === 304 || req?.method === "HEAD";
    const b = noBody ? { body: Buffer.alloc(0), end: he + 4, complete: true } : readBody(s2c, he + 4, headers, true);
    if (!b.complete) errors.push(`response body (${status}) is incomplete`);
    responses.push({ status, headers, body: decodeBody(b.body, headers), request: ri++ });
    o = b.end;
  }
  const exchanges = requests.map((request, i) => ({ request, response: responses.find((r) => r.request === i) ?? null }));
  return { exchanges, wsClient, wsServer, errors };
}

// ---------------------------------------------------------------------------
// SCRAM

// Characters a value may have in raw text: SCRAM's printable set minus the
// delimiters of the text around it (quotes, backslash, whitespace, `&`, …).
// A nonce is at least 16 of them (wsgate's are 24 or more), so that source
// code such as sm.js's own `n=${name},r=${nonce}` is not taken for one.
const V = String.raw`[^,"'\`\\\s&<>]`;
const NONCE = `${V}{16,}`;
const B64 = String.raw`[A-Za-z0-9+/]+={0,2}`;
const NOT_ALNUM = String.raw`(?<![A-Za-z0-9])`;
const CLIENT_FIRST = new RegExp(
  String.raw`${NOT_ALNUM}(?<gs2>[pny](?:=${V}*)?,(?:a=${V}*)?,)?(?<bare>n=(?<name>(?:[^,="\\\s&<>]|=2C|=3D)+),r=(?<nonce>${NONCE})(?:,[a-qs-zA-Z]=${V}*)*)`,
  "g",
);
const SERVER_FIRST = new RegExp(String.raw`${NOT_ALNUM}(?:m=${V}*,)?r=(?<nonce>${NONCE}),s=(?<salt>${B64}),i=(?<iter>\d+)`, "g");
const CLIENT_FINAL = new RegExp(String.raw`${NOT_ALNUM}(?<without>c=(?<cbind>${B64}),r=(?<nonce>${NONCE})(?:,[a-oq-zA-Z]=${V}*)*),p=(?<proof>${B64})`, "g");

/** SCRAM saslname → name (RFC 5802 §5.1); null when malformed. */
export function decodeSaslname(s) {
  if (/=(?!2C|3D)/.test(s)) return null;
  return s.replace(/=2C/g, ",").replace(/=3D/g, "=");
}

/**
 * SCRAM messages in one piece of text.
 * @param {string} text
 * @param {string} where
 */
export function scramMessages(text, where) {
  const out = [];
  for (const m of text.matchAll(CLIENT_FIRST)) {
    const g = /** @type {Record<string, string>} */ (m.groups);
    const user = decodeSaslname(g.name);
    out.push({ kind: "client-first", text: m[0], bare: g.bare, gs2: g.gs2 ?? "", saslname: g.name, user, nonce: g.nonce, where });
  }
  for (const m of text.matchAll(SERVER_FIRST)) {
    const g = /** @type {Record<string, string>} */ (m.groups);
    out.push({ kind: "server-first", text: m[0].replace(/^m=[^,]*,/, ""), nonce: g.nonce, salt: g.salt, iterations: Number(g.iter), where });
  }
  for (const m of text.matchAll(CLIENT_FINAL)) {
    const g = /** @type {Record<string, string>} */ (m.groups);
    out.push({ kind: "client-final", text: m[0], without: g.without, cbind: g.cbind, nonce: g.nonce, proof: g.proof, where });
  }
  return out;
}

/** Every string (keys too) in a parsed JSON value. */
function jsonStrings(v, out = []) {
  if (typeof v === "string") out.push(v);
  else if (Array.isArray(v)) for (const x of v) jsonStrings(x, out);
  else if (v && typeof v === "object")
    for (const [k, x] of Object.entries(v)) {
      out.push(k);
      jsonStrings(x, out);
    }
  return out;
}

/** Text hidden in a string that is base64, base64url or hex of mostly printable bytes. */
function decodedTexts(s) {
  const out = [];
  const t = s.trim();
  if (t.length < 16) return out;
  const tries = [];
  if (/^(?:[0-9a-fA-F]{2})+$/.test(t)) tries.push(["hex", Buffer.from(t, "hex")]);
  if (/^[A-Za-z0-9+/]+={0,2}$/.test(t)) tries.push(["base64", Buffer.from(t, "base64")]);
  if (/^[A-Za-z0-9_-]+={0,2}$/.test(t)) tries.push(["base64url", Buffer.from(t, "base64url")]);
  for (const [form, b] of tries) {
    let printable = 0;
    for (const x of b) if ((x >= 0x20 && x < 0x7f) || x === 10 || x === 13 || x >= 0x80) printable++;
    if (b.length > 0 && printable / b.length > 0.9) out.push([form, b.toString("utf8")]);
  }
  return out;
}

/**
 * Every text an attacker would read in a body or message: the bytes as
 * UTF-8, each string of it as JSON, each of those decoded from base64 /
 * base64url / hex, and the same for a form-urlencoded body.
 * @param {Buffer} bytes
 * @param {string} where
 * @returns {[string, string][]} [text, where]
 */
function textsOf(bytes, where) {
  const text = bytes.toString("utf8");
  const out = [[text, where]];
  let strings = null;
  try {
    strings = jsonStrings(JSON.parse(text));
  } catch {
    if (/^[\w.%+-]+=[\w.%+-]*(?:&[\w.%+-]+=[\w.%+-]*)*$/.test(text)) {
      try {
        strings = [...new URLSearchParams(text).values()];
      } catch {
        /* not a form */
      }
    }
  }
  for (const s of strings ?? []) {
    out.push([s, `${where}, a JSON string`]);
    for (const [form, d] of decodedTexts(s)) out.push([d, `${where}, a JSON string decoded from ${form}`]);
  }
  return out;
}

// ---------------------------------------------------------------------------
// The whole capture

/**
 * Everything the eavesdropper finds in one capture.
 * @param {Buffer} capture pcap bytes
 */
export function eavesdrop(capture) {
  const conns = tcpStreams(capture);
  const found = [];
  const seen = new Map();
  const add = (msgs, conn) => {
    for (const m of msgs) {
      const k = `${m.kind} ${m.text}`;
      const had = seen.get(k);
      if (had) {
        if (!had.wheres.includes(m.where)) had.wheres.push(m.where);
        continue;
      }
      const f = { ...m, conn: conn.id, wheres: [m.where] };
      seen.set(k, f);
      found.push(f);
    }
  };
  const sealed = { first: 0, second: 0, replies: 0, clearRequests: 0, clearReplies: 0, loginPuts: [] };
  const connections = conns.map((c) => {
    const label = `connection ${c.id} (${c.client} → ${c.server})`;
    const http = httpExchanges(c.c2s, c.s2c);
    /** @type {[string, string][]} */
    const texts = [
      [c.c2s.toString("utf8"), `${label}, client bytes`],
      [c.s2c.toString("utf8"), `${label}, server bytes`],
    ];
    const bodies = [];
    for (const [i, { request, response }] of http.exchanges.entries()) {
      const rq = `${label}, request ${i + 1} (${request.method} ${request.target})`;
      try {
        texts.push([decodeURIComponent(request.target), `${rq} target`]);
      } catch {
        texts.push([request.target, `${rq} target`]);
      }
      texts.push([Object.values(request.headers).join("\n"), `${rq} headers`]);
      texts.push(...textsOf(request.body, `${rq} body`));
      bodies.push(request.body);
      if (response) {
        texts.push([Object.values(response.headers).join("\n"), `${rq}, response headers`]);
        texts.push(...textsOf(response.body, `${rq}, response ${response.status} body`));
        bodies.push(response.body);
      }
      if (request.method === "PUT" && request.target.split("?")[0] === "/auth/session") {
        const parse = (b) => {
          try {
            return JSON.parse(b.toString("utf8"));
          } catch {
            return null;
          }
        };
        const j = parse(request.body);
        const r = response ? parse(response.body) : null;
        const str = (o, k) => o && typeof o[k] === "string" && o[k] !== "";
        let form = "other";
        if (j && str(j, "kid") && str(j, "enc") && str(j, "ct") && !("scram" in j)) {
          form = "sealed first";
          sealed.first++;
        } else if (j && str(j, "sid") && str(j, "ct") && !("scram" in j)) {
          form = "sealed second";
          sealed.second++;
        } else if (j && "scram" in j) {
          form = "clear";
          sealed.clearRequests++;
        }
        if (r && str(r, "ct") && !("scram" in r)) sealed.replies++;
        else if (r && "scram" in r) sealed.clearReplies++;
        sealed.loginPuts.push({ conn: c.id, form, requestBody: request.body.toString("utf8"), status: response?.status ?? null, responseBody: response?.body.toString("utf8") ?? null });
      }
    }
    const ws = [];
    for (const [side, bytes] of [["client", http.wsClient], ["server", http.wsServer]]) {
      if (!bytes) continue;
      let msgs = [];
      try {
        msgs = webSocketMessages(bytes).messages;
      } catch (e) {
        http.errors.push(`WebSocket ${side} frames: ${e instanceof Error ? e.message : e}`);
      }
      msgs.forEach((m, i) => {
        ws.push(m.payload);
        texts.push(...textsOf(m.payload, `${label}, WebSocket ${side} message ${i + 1}`));
      });
    }
    for (const [t, where] of texts) add(scramMessages(t, where), c);
    const login = http.exchanges.some((e) => e.request.target.startsWith("/auth/"));
    return { ...c, label, http, login, bodies, ws };
  });
  return { connections, found, transcripts: transcripts(found), sealed };
}

/**
 * Groups client-first, server-first and client-final by nonce into the
 * transcripts a password guess can be tested against.
 */
export function transcripts(found) {
  const out = [];
  for (const cf of found.filter((m) => m.kind === "client-final")) {
    const sf = found.find((m) => m.kind === "server-first" && m.nonce === cf.nonce);
    if (!sf) continue;
    const first = found.find((m) => m.kind === "client-first" && sf.nonce.startsWith(m.nonce) && sf.nonce.length > m.nonce.length);
    if (!first) continue;
    out.push({
      user: first.user,
      saslname: first.saslname,
      salt: Buffer.from(sf.salt, "base64"),
      iterations: sf.iterations,
      authMessage: `${first.bare},${sf.text},${cf.without}`,
      proof: Buffer.from(cf.proof, "base64"),
      where: [first.where, sf.where, cf.where],
    });
  }
  return out;
}

const hmac = (key, msg) => createHmac("sha256", key).update(msg).digest();

/**
 * The offline dictionary attack: for each transcript and each word,
 * SaltedPassword = PBKDF2(SASLprep(word), salt, i) → ClientKey → StoredKey
 * → ClientSignature; the word is the password when ClientKey XOR
 * ClientSignature is the recorded ClientProof.
 * @param {ReturnType<typeof transcripts>} ts
 * @param {string[]} words
 */
export function crack(ts, words) {
  const cracked = [];
  const salted = new Map();
  for (const t of ts) {
    for (const w of words) {
      let prepared;
      try {
        prepared = saslprep(w, { allowUnassigned: true });
      } catch {
        continue;
      }
      if (prepared === "") continue;
      const k = `${t.iterations}:${t.salt.toString("base64")}:${prepared}`;
      let sp = salted.get(k);
      if (!sp) {
        sp = pbkdf2Sync(Buffer.from(prepared, "utf8"), t.salt, t.iterations, 32, "sha256");
        salted.set(k, sp);
      }
      const clientKey = hmac(sp, "Client Key");
      const storedKey = createHash("sha256").update(clientKey).digest();
      const sig = hmac(storedKey, t.authMessage);
      const proof = Buffer.from(clientKey.map((b, i) => b ^ sig[i]));
      if (proof.length === t.proof.length && timingSafeEqual(proof, t.proof)) {
        cracked.push({ user: t.user, password: w, iterations: t.iterations, transcript: t });
        break;
      }
    }
  }
  return cracked;
}

/**
 * The forms a user name takes in text: raw, SASLprep'd, SCRAM saslname,
 * percent- and JSON-escaped, and hex / base64 / base64url at every alignment.
 * @param {string} name
 */
export function userNameForms(name) {
  const forms = new Map();
  const put = (form, s) => {
    if (s && !forms.has(s)) forms.set(s, form);
  };
  let prepared = name;
  try {
    prepared = saslprep(name, { allowUnassigned: false });
  } catch {
    /* keep it */
  }
  for (const [label, n] of [["", name], ["SASLprep'd ", prepared]]) {
    put(`${label}raw`, n);
    put(`${label}saslname`, n.replace(/=/g, "=3D").replace(/,/g, "=2C"));
    put(`${label}percent-encoded`, encodeURIComponent(n));
    put(`${label}JSON-escaped`, JSON.stringify(n).slice(1, -1).replace(/[\u0080-\uffff]/g, (ch) => `\\u${ch.charCodeAt(0).toString(16).padStart(4, "0")}`));
  }
  const out = [...forms].map(([s, form]) => ({ form, needle: Buffer.from(s, "utf8") }));
  for (const n of new Set([name, prepared])) {
    for (const e of encodings(Buffer.from(n, "utf8"))) if (e.form !== "raw") out.push({ form: `${n === name ? "" : "SASLprep'd "}${e.form}`, needle: e.needle });
  }
  return out;
}

/**
 * Where a user name appears in a connection: its raw bytes, its decoded
 * HTTP bodies and its unmasked WebSocket messages.
 * @param {ReturnType<typeof eavesdrop>["connections"][number]} conn
 * @param {string} name
 */
export function userNameHits(conn, name) {
  const hits = [];
  const corpora = [
    ["client bytes", conn.c2s],
    ["server bytes", conn.s2c],
    ...conn.bodies.map((b, i) => [`HTTP body ${i + 1}`, b]),
    ...conn.ws.map((b, i) => [`WebSocket message ${i + 1}`, b]),
  ];
  for (const { form, needle } of userNameForms(name)) {
    for (const [where, hay] of corpora) {
      const at = hay.indexOf(needle);
      if (at >= 0) hits.push({ form, where: `${conn.label}, ${where}`, context: hay.subarray(Math.max(0, at - 40), at + needle.length + 40).toString("latin1") });
    }
  }
  return hits;
}

/** A word list file: one word a line; blank lines and `#` comments skipped. */
export function readWords(file) {
  return readFileSync(file, "utf8")
    .split("\n")
    .map((l) => l.replace(/\r$/, ""))
    .filter((l) => l !== "" && !l.startsWith("#"));
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const [file, wordFile, ...names] = process.argv.slice(2);
  if (!file) {
    console.error("usage: node test/e2e/eavesdropper.mjs <capture.pcap> [words.txt] [user name…]");
    process.exit(2);
  }
  const r = eavesdrop(readFileSync(file));
  console.log(`${r.connections.length} TCP connections, ${r.connections.filter((c) => c.login).length} with /auth/`);
  for (const c of r.connections) {
    console.log(`  ${c.label}: ${c.c2s.length} + ${c.s2c.length} bytes${c.gaps.length ? `, gaps ${JSON.stringify(c.gaps)}` : ""}`);
    for (const e of c.http.exchanges) console.log(`    ${e.request.method} ${e.request.target} → ${e.response?.status ?? "no response"}`);
    for (const e of c.http.errors) console.log(`    ! ${e}`);
  }
  console.log(`login PUTs: ${r.sealed.first} sealed first, ${r.sealed.second} sealed second, ${r.sealed.replies} sealed replies, ${r.sealed.clearRequests} clear requests, ${r.sealed.clearReplies} clear replies`);
  for (const m of r.found) console.log(`SCRAM ${m.kind}: ${m.text}\n    in ${m.where}`);
  console.log(`${r.transcripts.length} transcripts`);
  if (wordFile) {
    const words = readWords(wordFile);
    for (const x of crack(r.transcripts, words)) console.log(`CRACKED: user ${JSON.stringify(x.user)} password ${JSON.stringify(x.password)} (i=${x.iterations})`);
  }
  for (const n of names) for (const c of r.connections) for (const h of userNameHits(c, n)) console.log(`user name ${JSON.stringify(n)} as ${h.form} in ${h.where}: …${h.context}…`);
}
