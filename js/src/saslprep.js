// @ts-check
// SASLprep (RFC 4013), the stringprep (RFC 3454) profile for user names and
// passwords, on String.prototype.normalize("NFKC") and the RFC 3454 tables
// (generated into saslprep-tables.js from Unicode 3.2.0).
//
// - "query" rules (passwords): unassigned code points are allowed.
// - "stored" rules (user names): unassigned code points are refused.

import { A1, B1, C12, D1, D2, PROHIBITED } from "./saslprep-tables.js";

/**
 * @param {number[]} table flat [start, end, start, end, ...] sorted ranges
 * @param {number} cp
 */
function inTable(table, cp) {
  let lo = 0;
  let hi = table.length / 2 - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    if (cp < table[2 * mid]) hi = mid - 1;
    else if (cp > table[2 * mid + 1]) lo = mid + 1;
    else return true;
  }
  return false;
}

/** Thrown for strings SASLprep refuses. */
export class SaslprepError extends Error {
  /** @param {string} message */
  constructor(message) {
    super(message);
    this.name = "SaslprepError";
  }
}

/**
 * Code points of a JS string; a lone surrogate comes out as its own code unit
 * (and is then refused as RFC 3454 C.5).
 * @param {string} s
 */
function codePoints(s) {
  /** @type {number[]} */
  const out = [];
  for (const ch of s) out.push(/** @type {number} */ (ch.codePointAt(0)));
  return out;
}

/**
 * SASLprep a string.
 * @param {string} input
 * @param {{ allowUnassigned?: boolean }} [opts] allowUnassigned: true for query
 *   rules (passwords), false (default) for stored-strings rules (user names)
 * @returns {string}
 */
export function saslprep(input, opts = {}) {
  if (typeof input !== "string") throw new TypeError("SASLprep input must be a string");
  // RFC 4013 §2.1 Mapping: non-ASCII spaces (C.1.2) to SPACE, B.1 to nothing.
  // (U+200B is in both tables; like the Rust `stringprep` crate, the space
  // mapping applies first.)
  /** @type {number[]} */
  const mapped = [];
  for (const cp of codePoints(input)) {
    if (inTable(C12, cp)) mapped.push(0x20);
    else if (!inTable(B1, cp)) mapped.push(cp);
  }
  // Lone surrogates cannot go through normalize() meaningfully: refuse (C.5).
  for (const cp of mapped) {
    if (cp >= 0xd800 && cp <= 0xdfff) throw new SaslprepError("contains a lone surrogate (prohibited, RFC 3454 C.5)");
  }
  // §2.2 Normalization: Unicode NFKC.
  const normalized = String.fromCodePoint(...mapped).normalize("NFKC");
  const out = codePoints(normalized);
  // §2.3 Prohibited output.
  for (const cp of out) {
    if (inTable(PROHIBITED, cp)) {
      throw new SaslprepError(`contains a prohibited character U+${cp.toString(16).toUpperCase().padStart(4, "0")}`);
    }
  }
  // §2.4 Bidirectional characters (RFC 3454 §6).
  const hasRAL = out.some((cp) => inTable(D1, cp));
  if (hasRAL) {
    if (out.some((cp) => inTable(D2, cp))) {
      throw new SaslprepError("mixes right-to-left and left-to-right characters");
    }
    if (!inTable(D1, out[0]) || !inTable(D1, out[out.length - 1])) {
      throw new SaslprepError("right-to-left text must start and end with a right-to-left character");
    }
  }
  // §2.5 Unassigned code points (stored strings only).
  if (!opts.allowUnassigned) {
    for (const cp of out) {
      if (inTable(A1, cp)) {
        throw new SaslprepError(`contains U+${cp.toString(16).toUpperCase().padStart(4, "0")}, unassigned in Unicode 3.2`);
      }
    }
  }
  return normalized;
}
