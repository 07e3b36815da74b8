// @ts-check
// sm-worker.js: the SharedWorker script of sm.js's shared mode (README
// "Shared mode"). Served by the gateway at /sm-worker.js and shipped in the
// npm package as dist/sm-worker.js; a page starts it with
// `connect({ shared: true })`. A classic script (not a module), so every
// browser with SharedWorker can run it.
import { createHub } from "./hub.js";

const hub = createHub();
/** @type {any} */ (globalThis).addEventListener("connect", (/** @type {MessageEvent} */ ev) => {
  for (const port of ev.ports) hub.attach(port);
});
