// @ts-check

/**
 * Every failure sm.js reports is a WsgateError: an Error with a stable
 * machine-readable `code` and a message a person can act on.
 */
export class WsgateError extends Error {
  /**
   * @param {string} code stable code, e.g. "invalid-proof", "closed"
   * @param {string} message human-readable explanation
   * @param {{ status?: number, retryAfter?: number, cause?: unknown, serverMessage?: string }} [extra]
   */
  constructor(code, message, extra = {}) {
    super(message, extra.cause !== undefined ? { cause: extra.cause } : undefined);
    this.name = "WsgateError";
    /** @type {string} */
    this.code = code;
    if (extra.status !== undefined) /** @type {number | undefined} */ this.status = extra.status;
    if (extra.retryAfter !== undefined) /** @type {number | undefined} */ this.retryAfter = extra.retryAfter;
    if (extra.serverMessage !== undefined) /** @type {string | undefined} */ this.serverMessage = extra.serverMessage;
  }
}

/** Messages for codes a server can put in an ERR response or SCRAM `e=`. */
const KNOWN = /** @type {Record<string, string>} */ ({
  "invalid-proof": "Wrong user name or password.",
  "channel-bindings-dont-match":
    "The login was refused because the server saw a different IP address or public key than the browser bound into the login (a proxy or a changed server key). Try again; if it persists, check for a proxy that changes your address.",
  "server-does-support-channel-binding": "The server requires channel binding; this client did not send it.",
  "unsupported-channel-binding-type": "The server does not support the wsgate-v1 channel binding.",
  "extensions-not-supported": "The server refused a SCRAM extension.",
  "invalid-username-encoding": "The user name is not valid.",
  "invalid-encoding": "The server could not parse the login message.",
  "other-error": "The login exchange expired or was already used; please log in again.",
  encryption_required: "This route or channel is sensitive: send it with { sensitive: true }.",
  not_found: "No such route or channel on this server.",
  forbidden: "You are not allowed to use this route or channel.",
  busy: "Too many requests in flight on this connection; try again shortly.",
  rate_limited: "Too many attempts; wait before trying again.",
});

/**
 * Builds the error for a code the server sent.
 * @param {string} code @param {string} [serverMessage]
 */
export function serverError(code, serverMessage) {
  const base = KNOWN[code];
  let msg;
  if (base) msg = serverMessage && serverMessage !== base ? `${base} (server: ${serverMessage})` : base;
  else msg = serverMessage ? `The server answered ${code}: ${serverMessage}` : `The server answered ${code}.`;
  return new WsgateError(code, msg, serverMessage ? { serverMessage } : {});
}
