// A plain WebSocket echo server on the npm `ws` package: the "popular peer"
// baseline of `wsgate bench echo` (its "node ws:// (peer)" row). The bench
// starts it under `taskset -c 0` like a gateway and reads its CPU time from
// /proc/<pid>/stat.
//
//   node js/bench/ws-echo-peer.mjs [PORT] [--exit-with-stdin]
//
// Listens on 127.0.0.1:PORT (default 0: a free port), on any path, and
// prints the port it got as the first line of stdout. With
// --exit-with-stdin it exits when its stdin closes: the bench holds that
// pipe, so the peer goes with the bench however the bench ends. Every message comes
// back as it came (binary stays binary). No compression, like the other
// echo endpoints; messages up to 64 MiB, like the gateway's /raw-echo.
// Needs `cd js && npm ci` (the `ws` devDependency).

import { WebSocketServer } from "ws";

const MAX_MESSAGE = 64 * 1024 * 1024;

const args = process.argv.slice(2);
const lifeline = args.includes("--exit-with-stdin");
const arg = args.find((a) => !a.startsWith("--")) ?? "0";
const port = Number(arg);
if (!/^\d+$/.test(arg) || port > 65535) {
  console.error(`ws-echo-peer: bad port ${JSON.stringify(arg)}`);
  process.exit(2);
}

const server = new WebSocketServer({
  host: "127.0.0.1",
  port,
  perMessageDeflate: false,
  maxPayload: MAX_MESSAGE,
  clientTracking: false,
});

server.on("connection", (ws) => {
  ws.on("message", (data, isBinary) => ws.send(data, { binary: isBinary }));
  // A client that vanishes mid-run is the bench stopping, not a failure.
  ws.on("error", () => {});
});

server.on("listening", () => {
  const address = server.address();
  const bound = typeof address === "string" ? address : address.port;
  process.stdout.write(`${bound}\n`);
});

server.on("error", (e) => {
  console.error(`ws-echo-peer: ${e.message}`);
  process.exit(1);
});

for (const signal of ["SIGTERM", "SIGINT"]) {
  process.on(signal, () => process.exit(0));
}

if (lifeline) {
  process.stdin.on("end", () => process.exit(0));
  process.stdin.on("error", () => process.exit(0));
  process.stdin.resume();
}
