// The wire test's own tools (test/e2e/pcap.mjs) must be able to see what
// they look for, or a clean result would prove nothing.
import { test } from "node:test";
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { encodings, parsePcap, tcpConnections, webSocketMessages } from "./e2e/pcap.mjs";

test("encodings find a secret embedded in longer hex / base64 / base64url text at any alignment", () => {
  const secret = randomBytes(32);
  for (let k = 0; k < 6; k++) {
    for (let tail = 0; tail < 4; tail++) {
      const blob = Buffer.concat([randomBytes(k), secret, randomBytes(tail)]);
      for (const text of [blob.toString("base64"), blob.toString("base64url"), blob.toString("hex"), blob.toString("hex").toUpperCase()]) {
        const hay = Buffer.from(`{"x":"${text}"}`);
        assert.ok(encodings(secret).some(({ needle }) => hay.includes(needle)), `k=${k} tail=${tail} ${text}`);
      }
    }
  }
  assert.ok(!encodings(secret).some(({ needle }) => Buffer.from(randomBytes(64).toString("base64")).includes(needle)));
});

function wsFrame(opcode, payload, mask) {
  const head = [0x80 | opcode];
  const len = payload.length;
  if (len < 126) head.push((mask ? 0x80 : 0) | len);
  else head.push((mask ? 0x80 : 0) | 126, len >> 8, len & 0xff);
  if (!mask) return Buffer.concat([Buffer.from(head), payload]);
  const key = randomBytes(4);
  const masked = Buffer.from(payload.map((b, i) => b ^ key[i & 3]));
  return Buffer.concat([Buffer.from(head), key, masked]);
}

test("webSocketMessages unmasks client frames and reports partial ones", () => {
  const a = Buffer.from("hello plain marker");
  const b = randomBytes(300);
  const bytes = Buffer.concat([wsFrame(2, a, true), wsFrame(2, b, true), wsFrame(8, Buffer.from([3, 232]), true)]);
  assert.ok(!bytes.includes(a), "masked on the wire");
  const { messages, rest } = webSocketMessages(bytes);
  assert.equal(rest, 0);
  assert.deepEqual(messages.map((m) => m.opcode), [2, 2, 8]);
  assert.deepEqual(messages[0].payload, a);
  assert.deepEqual(messages[1].payload, b);
  assert.equal(webSocketMessages(bytes.subarray(0, bytes.length - 1)).rest > 0, true);
});

/** A pcap (Ethernet, IPv4, TCP) from [from, seq, flags, payload] tuples. */
function pcap(packets) {
  const hdr = Buffer.alloc(24);
  hdr.writeUInt32LE(0xa1b2c3d4, 0);
  hdr.writeUInt16LE(2, 4);
  hdr.writeUInt16LE(4, 6);
  hdr.writeUInt32LE(262144, 16);
  hdr.writeUInt32LE(1, 20);
  const recs = packets.map(([fromClient, seq, flags, payload]) => {
    const eth = Buffer.alloc(14);
    eth.writeUInt16BE(0x0800, 12);
    const ip = Buffer.alloc(20);
    ip[0] = 0x45;
    ip.writeUInt16BE(20 + 20 + payload.length, 2);
    ip[9] = 6;
    Buffer.from([127, 0, 0, 1]).copy(ip, 12);
    Buffer.from([127, 0, 0, 1]).copy(ip, 16);
    const tcp = Buffer.alloc(20);
    tcp.writeUInt16BE(fromClient ? 50000 : 8080, 0);
    tcp.writeUInt16BE(fromClient ? 8080 : 50000, 2);
    tcp.writeUInt32BE(seq >>> 0, 4);
    tcp[12] = 5 << 4;
    tcp[13] = flags;
    const frame = Buffer.concat([eth, ip, tcp, payload]);
    const rec = Buffer.alloc(16);
    rec.writeUInt32LE(frame.length, 8);
    rec.writeUInt32LE(frame.length, 12);
    return Buffer.concat([rec, frame]);
  });
  return Buffer.concat([hdr, ...recs]);
}

const SYN = 0x02;
const ACK = 0x10;
const FIN = 0x01;
const PSH = 0x08;

test("tcpConnections reassembles streams and reports gaps, late starts and missing FINs", () => {
  const e = Buffer.alloc(0);
  const good = [
    [true, 1000, SYN, e],
    [false, 5000, SYN | ACK, e],
    [true, 1001, ACK | PSH, Buffer.from("GET /ws ")],
    [true, 1009, ACK | PSH, Buffer.from("HTTP...")],
    [true, 1009, ACK | PSH, Buffer.from("HTTP...")], // retransmission
    [false, 5001, ACK | PSH, Buffer.from("reply")],
    [true, 1016, FIN | ACK, e],
    [false, 5006, FIN | ACK, e],
  ];
  const c = tcpConnections(parsePcap(pcap(good)));
  assert.equal(c.length, 1);
  assert.deepEqual(c[0].problems, []);
  assert.equal(c[0].c2s.toString(), "GET /ws HTTP...");
  assert.equal(c[0].s2c.toString(), "reply");

  const gap = good.filter((_, i) => i !== 2);
  assert.match(tcpConnections(parsePcap(pcap(gap)))[0].problems.join(), /8 bytes missing at offset 0/);
  const noFin = good.slice(0, 6);
  assert.match(tcpConnections(parsePcap(pcap(noFin)))[0].problems.join(), /neither FIN nor RST/);
  const late = good.slice(2);
  assert.match(tcpConnections(parsePcap(pcap(late))).flatMap((x) => x.problems).join(), /without a captured SYN/);
  const file = pcap(good);
  assert.throws(() => parsePcap(file.subarray(0, file.length - 3)), /truncated|trailing/);
});
