// @ts-check
/**
 * sm.js — the wsgate browser module.
 *
 *   import { connect } from "/sm.js";
 *   const s = await connect({ username, password });
 *   const bytes = await s.request("sys.echo", "hello", { sensitive: true });
 *
 * See README.md for the full API.
 */

export { Session } from "./session.js";
export { connect } from "./connect.js";
export { SharedSession } from "./shared/tab.js";
export { WsgateError } from "./errors.js";
export { hasSubtle } from "./crypto/index.js";

/** Protocol version this module speaks. */
export const PROTOCOL = "wsgate-v1";
