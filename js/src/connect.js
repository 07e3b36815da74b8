// @ts-check
import { connectHere } from "./session.js";
import { NoSharedWorker, connectShared } from "./shared/tab.js";

/**
 * Logs in and opens a key-established, mutually authenticated session.
 * With `shared: true` the session runs in a SharedWorker that every page of
 * the origin shares (README "Shared mode"); where the page has none, it
 * runs here instead and `session.shared` is false.
 * @param {import("./session.js").ConnectOptions & { shared?: boolean, workerUrl?: string | URL, heartbeatInterval?: number }} opts
 */
export async function connect(opts) {
  if (opts && typeof opts === "object" && opts.shared === true) {
    try {
      return /** @type {any} */ (await connectShared(opts));
    } catch (e) {
      if (!(e instanceof NoSharedWorker)) throw e;
    }
  }
  return connectHere(opts);
}
