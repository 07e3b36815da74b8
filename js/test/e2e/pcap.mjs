// Minimal pcap reader, TCP reassembly and WebSocket (RFC 6455) frame parser
// for the wire test. Reports anything that would make the capture
// incomplete (missing handshake, gaps, missing FIN/RST) instead of guessing.
// startCapture runs tcpdump for the tests that make captures.
import { spawn } from "node:child_process";

const LINKTYPE_NULL = 0;
const LINKTYPE_ETHERNET = 1;
const LINKTYPE_LINUX_SLL = 113;
const LINKTYPE_LINUX_SLL2 = 276;

/** @param {Buffer} buf */
export function parsePcap(buf) {
  if (buf.length < 24) throw new Error("pcap file shorter than its header");
  const magicLE = buf.readUInt32LE(0);
  let le;
  if (magicLE === 0xa1b2c3d4 || magicLE === 0xa1b23c4d) le = true;
  else if (buf.readUInt32BE(0) === 0xa1b2c3d4 || buf.readUInt32BE(0) === 0xa1b23c4d) le = false;
  else throw new Error("not a pcap file (pcapng is not supported: capture with tcpdump -w)");
  const u32 = (o) => (le ? buf.readUInt32LE(o) : buf.readUInt32BE(o));
  const snaplen = u32(16);
  const linktype = u32(20) & 0xffff;
  const packets = [];
  let o = 24;
  while (o + 16 <= buf.length) {
    const incl = u32(o + 8);
    const orig = u32(o + 12);
    if (o + 16 + incl > buf.length) throw new Error(`pcap truncated inside packet ${packets.length + 1}`);
    packets.push({ data: buf.subarray(o + 16, o + 16 + incl), truncated: incl < orig });
    o += 16 + incl;
  }
  if (o !== buf.length) throw new Error(`pcap has ${buf.length - o} trailing bytes (partial record)`);
  return { linktype, snaplen, packets };
}

/** @param {Buffer} d @param {number} linktype */
function networkLayer(d, linktype) {
  switch (linktype) {
    case LINKTYPE_ETHERNET: {
      let etherType = d.readUInt16BE(12);
      let off = 14;
      while (etherType === 0x8100) {
        etherType = d.readUInt16BE(off + 2);
        off += 4;
      }
      return { etherType, off };
    }
    case LINKTYPE_LINUX_SLL:
      return { etherType: d.readUInt16BE(14), off: 16 };
    case LINKTYPE_LINUX_SLL2:
      return { etherType: d.readUInt16BE(0), off: 20 };
    case LINKTYPE_NULL: {
      const family = d.readUInt32LE(0);
      return { etherType: family === 2 ? 0x0800 : 0x86dd, off: 4 };
    }
    default:
      throw new Error(`unsupported pcap link type ${linktype}`);
  }
}

/**
 * Decodes one packet down to TCP; null for anything else.
 * @param {Buffer} d @param {number} linktype
 */
export function decodeTcp(d, linktype) {
  const { etherType, off } = networkLayer(d, linktype);
  let src;
  let dst;
  let proto;
  let l4;
  let l4end;
  if (etherType === 0x0800) {
    const ihl = (d[off] & 0x0f) * 4;
    const total = d.readUInt16BE(off + 2);
    proto = d[off + 9];
    src = Array.from(d.subarray(off + 12, off + 16)).join(".");
    dst = Array.from(d.subarray(off + 16, off + 20)).join(".");
    l4 = off + ihl;
    l4end = off + total;
  } else if (etherType === 0x86dd) {
    proto = d[off + 6];
    const plen = d.readUInt16BE(off + 4);
    src = d.subarray(off + 8, off + 24).toString("hex");
    dst = d.subarray(off + 24, off + 40).toString("hex");
    l4 = off + 40;
    l4end = l4 + plen;
  } else {
    return null;
  }
  if (proto !== 6) return null;
  const sport = d.readUInt16BE(l4);
  const dport = d.readUInt16BE(l4 + 2);
  const seq = d.readUInt32BE(l4 + 4);
  const dataOff = (d[l4 + 12] >> 4) * 4;
  const flags = d[l4 + 13];
  return {
    src: `${src}:${sport}`,
    dst: `${dst}:${dport}`,
    seq,
    syn: (flags & 0x02) !== 0,
    ack: (flags & 0x10) !== 0,
    fin: (flags & 0x01) !== 0,
    rst: (flags & 0x04) !== 0,
    payload: d.subarray(l4 + dataOff, Math.min(l4end, d.length)),
    truncated: l4end > d.length,
  };
}

/**
 * Reassembles every TCP connection of the capture.
 * @returns {{ client: string, server: string, c2s: Buffer, s2c: Buffer, problems: string[] }[]}
 */
export function tcpConnections(pcap) {
  /** @type {Map<string, { segs: {seq:number, payload:Buffer}[], synSeq: number | null, finSeq: number | null, rst: boolean, src: string, dst: string, truncated: boolean }>} */
  const dirs = new Map();
  for (const p of pcap.packets) {
    const t = decodeTcp(p.data, pcap.linktype);
    if (!t) continue;
    const key = `${t.src}>${t.dst}`;
    let d = dirs.get(key);
    if (!d) {
      d = { segs: [], synSeq: null, finSeq: null, rst: false, src: t.src, dst: t.dst, truncated: false, clientSyn: false };
      dirs.set(key, d);
    }
    if (p.truncated || t.truncated) d.truncated = true;
    if (t.syn) {
      d.synSeq = t.seq;
      if (!t.ack) d.clientSyn = true;
    }
    if (t.rst) d.rst = true;
    if (t.payload.length > 0) d.segs.push({ seq: t.seq, payload: t.payload });
    if (t.fin) d.finSeq = (t.seq + t.payload.length) >>> 0;
  }
  const stream = (d, problems, label) => {
    if (!d) {
      problems.push(`${label}: no packets`);
      return Buffer.alloc(0);
    }
    if (d.truncated) problems.push(`${label}: packets truncated by the snap length`);
    if (d.synSeq === null) {
      problems.push(`${label}: no SYN (capture started late)`);
      return Buffer.concat(d.segs.map((s) => s.payload));
    }
    const isn = (d.synSeq + 1) >>> 0;
    const segs = d.segs.map((s) => ({ off: (s.seq - isn) >>> 0, payload: s.payload })).sort((a, b) => a.off - b.off);
    const parts = [];
    let len = 0;
    for (const s of segs) {
      if (s.off > len) {
        problems.push(`${label}: ${s.off - len} bytes missing at offset ${len}`);
        return Buffer.concat(parts);
      }
      const end = s.off + s.payload.length;
      if (end > len) {
        parts.push(s.payload.subarray(len - s.off));
        len = end;
      }
    }
    if (d.finSeq !== null) {
      const finOff = (d.finSeq - isn) >>> 0;
      if (finOff !== len) problems.push(`${label}: stream ends at ${len} but FIN says ${finOff}`);
    } else if (!d.rst) {
      problems.push(`${label}: neither FIN nor RST (capture stopped early?)`);
    }
    return Buffer.concat(parts);
  };
  const conns = [];
  for (const d of dirs.values()) {
    if (!d.clientSyn) continue;
    const back = dirs.get(`${d.dst}>${d.src}`);
    const problems = [];
    const c2s = stream(d, problems, `${d.src}→${d.dst}`);
    const s2c = stream(back, problems, `${d.dst}→${d.src}`);
    conns.push({ client: d.src, server: d.dst, c2s, s2c, problems });
  }
  // Directions whose connection has no client SYN at all.
  for (const d of dirs.values()) {
    const paired = conns.some((c) => `${c.client}>${c.server}` === `${d.src}>${d.dst}` || `${c.server}>${c.client}` === `${d.src}>${d.dst}`);
    if (!paired) conns.push({ client: d.src, server: d.dst, c2s: Buffer.alloc(0), s2c: Buffer.alloc(0), problems: [`${d.src}→${d.dst}: connection without a captured SYN`] });
  }
  return conns;
}

/**
 * Parses WebSocket frames (RFC 6455 §5.2), unmasking masked ones, and joins
 * fragments into messages.
 * @param {Buffer} bytes frames only (after the HTTP upgrade)
 * @returns {{ messages: { opcode: number, payload: Buffer, masked: boolean }[], rest: number }}
 */
export function webSocketMessages(bytes) {
  const messages = [];
  let o = 0;
  let partial = null;
  while (o + 2 <= bytes.length) {
    const b0 = bytes[o];
    const b1 = bytes[o + 1];
    const fin = (b0 & 0x80) !== 0;
    const opcode = b0 & 0x0f;
    const masked = (b1 & 0x80) !== 0;
    let len = b1 & 0x7f;
    let p = o + 2;
    if (len === 126) {
      if (p + 2 > bytes.length) break;
      len = bytes.readUInt16BE(p);
      p += 2;
    } else if (len === 127) {
      if (p + 8 > bytes.length) break;
      len = Number(bytes.readBigUInt64BE(p));
      p += 8;
    }
    let key = null;
    if (masked) {
      if (p + 4 > bytes.length) break;
      key = bytes.subarray(p, p + 4);
      p += 4;
    }
    if (p + len > bytes.length) break;
    const payload = Buffer.from(bytes.subarray(p, p + len));
    if (key) for (let i = 0; i < payload.length; i++) payload[i] ^= key[i & 3];
    o = p + len;
    if (opcode === 0) {
      if (!partial) throw new Error("continuation frame without a start");
      partial.payload = Buffer.concat([partial.payload, payload]);
      if (fin) {
        messages.push(partial);
        partial = null;
      }
    } else if (opcode >= 8 || fin) {
      messages.push({ opcode, payload, masked });
    } else {
      partial = { opcode, payload, masked };
    }
  }
  return { messages, rest: bytes.length - o };
}

/** Splits an HTTP/1.1 upgrade exchange from the WebSocket bytes after it. */
export function afterHttpHeader(stream) {
  const end = stream.indexOf("\r\n\r\n");
  if (end < 0) return null;
  return { head: stream.subarray(0, end).toString("latin1"), body: stream.subarray(end + 4) };
}

/**
 * The forms a secret could take in text: raw, hex (both cases), and base64 /
 * base64url at each of the three byte alignments it could have inside a
 * longer encoded value.
 * @param {Buffer} secret
 * @returns {{ form: string, needle: Buffer }[]}
 */
export function encodings(secret) {
  const out = [
    { form: "raw", needle: secret },
    { form: "hex", needle: Buffer.from(secret.toString("hex")) },
    { form: "HEX", needle: Buffer.from(secret.toString("hex").toUpperCase()) },
  ];
  for (const k of [0, 1, 2]) {
    const padded = Buffer.concat([Buffer.alloc(k), secret]);
    for (const [form, alphabet] of [["base64", "base64"], ["base64url", "base64url"]]) {
      const s = padded.toString(alphabet).replace(/=+$/, "");
      // Drop the characters that mix in the k prefix bytes and the last
      // group, which mixes in whatever follows the secret.
      const start = Math.ceil((k * 8) / 6);
      const end = s.length - 4;
      if (end - start >= 6) out.push({ form: `${form}@${k}`, needle: Buffer.from(s.slice(start, end)) });
    }
  }
  return out;
}

/**
 * Starts tcpdump on lo for one TCP port (root needed) and resolves once it
 * is listening. kill() is for cleanup after a failure; stop() ends the
 * capture cleanly and returns tcpdump's counters.
 * @param {number} port @param {string} file
 */
export async function startCapture(port, file) {
  const proc = spawn("tcpdump", ["-i", "lo", "--immediate-mode", "-U", "-B", "16384", "-s", "0", "-n", "-w", file, "tcp", "port", String(port)], { stdio: ["ignore", "ignore", "pipe"] });
  let err = "";
  proc.stderr.on("data", (d) => (err += d.toString()));
  const exited = new Promise((r) => proc.on("exit", (code, sig) => r({ code, sig })));
  await new Promise((resolve, reject) => {
    const t = setInterval(() => {
      if (err.includes("listening on lo")) {
        clearInterval(t);
        resolve();
      }
    }, 20);
    exited.then(() => {
      clearInterval(t);
      reject(new Error(`tcpdump exited before listening: ${err}`));
    });
    setTimeout(() => {
      clearInterval(t);
      reject(new Error(`tcpdump did not start: ${err}`));
    }, 10_000);
  });
  return {
    kill: () => proc.kill("SIGKILL"),
    /** SIGINT makes tcpdump flush, print its counters and exit. */
    async stop() {
      proc.kill("SIGINT");
      const { code, sig } = await exited;
      const num = (re) => {
        const m = re.exec(err);
        return m ? Number(m[1]) : NaN;
      };
      return {
        code,
        sig,
        stderr: err,
        captured: num(/(\d+) packets? captured/),
        received: num(/(\d+) packets? received by filter/),
        dropped: num(/(\d+) packets? dropped by kernel/),
      };
    },
  };
}
