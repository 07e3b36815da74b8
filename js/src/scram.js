// @ts-check
// SCRAM-SHA-256-PLUS client (RFC 5802 / RFC 7677) with wsgate's channel
// binding `wsgate-v1` (docs/protocol.md §4). Pure message logic over a crypto backend.

import { b64, b64u, concat, equalBytes, fromB64OrNull, utf8 } from "./bytes.js";
import { WsgateError, serverError } from "./errors.js";
import { SaslprepError, saslprep } from "./saslprep.js";

/** @typedef {import("./crypto/index.js").Backend} Backend */

export const GS2_HEADER = "p=wsgate-v1,,";
export const MIN_ITERATIONS = 4096;
export const MAX_ITERATIONS = 10_000_000;
export const MIN_SALT_LEN = 16;

/**
 * SASLprep (stored-strings rules) then SCRAM saslname escaping.
 * @param {string} username
 * @returns {{ prepared: string, saslname: string }}
 */
export function saslname(username) {
  let prepared;
  try {
    prepared = saslprep(username, { allowUnassigned: false });
  } catch (e) {
    if (e instanceof SaslprepError) throw new WsgateError("invalid_username", `The user name cannot be used: it ${e.message}.`);
    throw e;
  }
  if (prepared.length === 0) throw new WsgateError("invalid_username", "The user name is empty.");
  return { prepared, saslname: prepared.replace(/=/g, "=3D").replace(/,/g, "=2C") };
}

/**
 * SASLprep (query rules) of a password, as UTF-8 bytes.
 * @param {string} password
 */
export function preparePassword(password) {
  let prepared;
  try {
    prepared = saslprep(password, { allowUnassigned: true });
  } catch (e) {
    if (e instanceof SaslprepError) throw new WsgateError("invalid_password", `The password cannot be used: it ${e.message}.`);
    throw e;
  }
  if (prepared.length === 0) throw new WsgateError("invalid_password", "The password is empty.");
  return utf8(prepared);
}

/**
 * The client-first-message.
 * @param {string} username
 * @param {string} cnonce b64u client nonce
 * @param {string} [gs2Header]
 */
export function clientFirst(username, cnonce, gs2Header = GS2_HEADER) {
  const { prepared, saslname: name } = saslname(username);
  const clientFirstBare = `n=${name},r=${cnonce}`;
  return { user: prepared, clientFirstBare, clientFirst: gs2Header + clientFirstBare };
}

/**
 * Parses and checks the server-first-message.
 * @param {string} serverFirst
 * @param {string} cnonce
 * @param {{ minIterations?: number, maxIterations?: number, minSaltLen?: number }} [limits]
 */
export function parseServerFirst(serverFirst, cnonce, limits = {}) {
  const minIt = limits.minIterations ?? MIN_ITERATIONS;
  const maxIt = limits.maxIterations ?? MAX_ITERATIONS;
  const minSalt = limits.minSaltLen ?? MIN_SALT_LEN;
  if (typeof serverFirst !== "string") throw new WsgateError("protocol_error", "The server's login reply has no SCRAM message.");
  if (serverFirst.startsWith("m=")) throw new WsgateError("protocol_error", "The server asked for a SCRAM extension this client does not support.");
  const parts = serverFirst.split(",");
  if (parts.length < 3 || !parts[0].startsWith("r=") || !parts[1].startsWith("s=") || !parts[2].startsWith("i=")) {
    throw new WsgateError("protocol_error", "The server's SCRAM message is malformed.");
  }
  const nonce = parts[0].slice(2);
  if (!nonce.startsWith(cnonce) || nonce.length <= cnonce.length) {
    throw new WsgateError("protocol_error", "The server's SCRAM nonce does not extend ours; refusing to continue.");
  }
  if (!/^[\x21-\x2b\x2d-\x7e]+$/.test(nonce)) throw new WsgateError("protocol_error", "The server's SCRAM nonce has invalid characters.");
  const salt = fromB64OrNull(parts[1].slice(2));
  if (!salt || salt.length < minSalt) throw new WsgateError("protocol_error", `The server sent an invalid salt (need base64, at least ${minSalt} bytes).`);
  const itText = parts[2].slice(2);
  if (!/^[1-9][0-9]{0,9}$/.test(itText)) throw new WsgateError("protocol_error", "The server sent an invalid iteration count.");
  const iterations = Number(itText);
  if (iterations < minIt || iterations > maxIt) {
    throw new WsgateError(
      "protocol_error",
      `The server asked for ${iterations} PBKDF2 iterations; this client accepts ${minIt} to ${maxIt}. Refusing to log in.`,
    );
  }
  return { nonce, salt, iterations };
}

/**
 * `cbind-data` of docs/protocol.md §4.3.
 * @param {string} ip the `ip` string of the first reply
 * @param {string} keyFp fp of the current server key (43 b64u chars)
 */
export function cbindData(ip, keyFp) {
  return `ip=${ip};key=${keyFp}`;
}

/** @param {Backend} backend @param {Uint8Array} pk */
export async function keyFingerprint(backend, pk) {
  return b64u(await backend.sha256(pk));
}

/** @param {Backend} backend @param {Uint8Array} pk */
export async function keyId(backend, pk) {
  return b64u((await backend.sha256(pk)).subarray(0, 8));
}

/**
 * SaltedPassword = PBKDF2-HMAC-SHA-256(SASLprep(password), salt, i).
 * @param {Backend} backend @param {Uint8Array} preparedPassword @param {Uint8Array} salt @param {number} iterations
 */
export function saltedPassword(backend, preparedPassword, salt, iterations) {
  return backend.pbkdf2Sha256(preparedPassword, salt, iterations, 32);
}

/**
 * Computes the client-final-message and everything derived with it.
 * @param {Backend} backend
 * @param {{ clientFirstBare: string, serverFirst: string, nonce: string, gs2Header?: string, cbindData?: string, saltedPassword: Uint8Array }} p
 */
export async function clientFinal(backend, p) {
  const gs2 = p.gs2Header ?? GS2_HEADER;
  const c = b64(utf8(gs2 + (p.cbindData ?? "")));
  const clientFinalWithoutProof = `c=${c},r=${p.nonce}`;
  const authMessage = `${p.clientFirstBare},${p.serverFirst},${clientFinalWithoutProof}`;
  const am = utf8(authMessage);
  const clientKey = await backend.hmacSha256(p.saltedPassword, utf8("Client Key"));
  const storedKey = await backend.sha256(clientKey);
  const clientSignature = await backend.hmacSha256(storedKey, am);
  const clientProof = new Uint8Array(32);
  for (let i = 0; i < 32; i++) clientProof[i] = clientKey[i] ^ clientSignature[i];
  const serverKey = await backend.hmacSha256(p.saltedPassword, utf8("Server Key"));
  const serverSignature = await backend.hmacSha256(serverKey, am);
  const sessionKey = await backend.hmacSha256(clientKey, concat(utf8("wsgate-v1 session"), am));
  return {
    clientFinal: `${clientFinalWithoutProof},p=${b64(clientProof)}`,
    clientFinalWithoutProof,
    authMessage,
    clientKey,
    storedKey,
    serverKey,
    clientProof,
    serverSignature,
    sessionKey,
  };
}

/**
 * Checks the server-final-message: `v=` must carry our expected
 * ServerSignature (mutual authentication); `e=` is the server's refusal.
 * @param {string} serverFinal @param {Uint8Array} expected
 */
export function verifyServerFinal(serverFinal, expected) {
  if (typeof serverFinal !== "string") throw new WsgateError("protocol_error", "The server's login reply has no SCRAM message.");
  if (serverFinal.startsWith("e=")) throw serverError(serverFinal.slice(2).split(",")[0]);
  const m = /^v=([^,]*)/.exec(serverFinal);
  const got = m ? fromB64OrNull(m[1]) : null;
  if (!got || !equalBytes(got, expected)) {
    throw new WsgateError(
      "invalid-server-signature",
      "The server could not prove it knows your credentials (ServerSignature mismatch): it may be an impostor. The session was not used.",
    );
  }
}
