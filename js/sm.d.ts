// Type declarations for sm.js, the wsgate browser module (served by the
// gateway at /sm.js). Hand-written; test/types-check.ts and
// test/bundle.test.js keep it in line with the implementation.

/** Stable error codes sm.js itself produces. Server ERR codes and SCRAM `e=` values pass through as they are. */
export type WsgateErrorCode =
  | "invalid-proof"
  | "invalid-server-signature"
  | "channel-bindings-dont-match"
  | "other-error"
  | "rate_limited"
  | "bad_seal"
  | "sealed_login_required"
  | "unavailable"
  | "server_key_mismatch"
  | "session_expired"
  | "closed"
  | "timeout"
  | "network_error"
  | "protocol_error"
  | "encryption_required"
  | "not_found"
  | "forbidden"
  | "busy"
  | "invalid_argument"
  | "invalid_username"
  | "invalid_password"
  | "invalid_json"
  | "too_large"
  | "unsupported"
  | "internal_error"
  | (string & {});

/** Every failure is a WsgateError: `code` is stable, `message` says what to do. */
export declare class WsgateError extends Error {
  constructor(code: string, message: string, extra?: { status?: number; retryAfter?: number; cause?: unknown; serverMessage?: string });
  readonly name: "WsgateError";
  code: WsgateErrorCode;
  /** HTTP status, for login failures. */
  status?: number;
  /** Seconds to wait, for `rate_limited` and `unavailable`. */
  retryAfter?: number;
  /** The server's own message, for ERR responses. */
  serverMessage?: string;
}

export type ConnectionState = "connecting" | "open" | "reconnecting" | "closed";

/** What the frame hook learns about each WebSocket message (null if it does not parse). */
export interface FrameInfo {
  type: number;
  /** "HELLO", "KEY_INIT", "KEY_ACK", "REQUEST", "RESPONSE", "SUBSCRIBE", "UNSUBSCRIBE", "PUBLISH", "EVENT", "EVENT_AT", "RESYNC", "PRESENCE", "PRESENCE_EVENT", "LOGOUT" */
  typeName: string;
  flags: number;
  id: number;
  name: string;
  /** ENC flag: the body is encrypted. */
  encrypted: boolean;
  /** Integrity-protected (every frame after KEY_INIT / from KEY_ACK on). */
  protected: boolean;
}

export interface ConnectOptions {
  username: string;
  /** Required, except with `shared: true` when a session of this user at this gateway is live in the shared worker (it is joined). */
  password?: string;
  /**
   * Run the session in a SharedWorker shared by every page of this origin (README "Shared mode"): one
   * WebSocket, one login, one subscription per channel; secrets stay in the worker. Where the page has no
   * SharedWorker, the session runs in the page and `session.shared` is false. Cannot be combined with
   * `onFrame`, `fetch`, `WebSocket` or `testHooks`.
   */
  shared?: boolean;
  /** Shared mode: URL of sm-worker.js, same origin as the page. Default: next to this module (`./sm-worker.js`). */
  workerUrl?: string | URL;
  /** Shared mode: ms between the page's heartbeats to the worker, default 15000; a page silent for 8 intervals is let go. */
  heartbeatInterval?: number;
  /** http(s) base URL of the gateway; default: the page's origin. The ws(s) URL is derived (`<base>/ws`). */
  url?: string;
  /** Expected fingerprint(s) of the server key: b64u(SHA-256(pk)), 43 characters. */
  pin?: string | string[];
  /** Crypto backend. "auto" (default): Web Crypto when `crypto.subtle` exists, else the noble pure-JS primitives. */
  crypto?: "auto" | "webcrypto" | "noble";
  /** Sees every WebSocket message exactly as it crosses the wire (what an intermediary sees). */
  onFrame?: (direction: "in" | "out", bytes: Uint8Array, info: FrameInfo | null) => void;
  /** Reconnect with backoff after a connection loss (default true). */
  reconnect?: boolean;
  /** ms, default 30000. */
  requestTimeout?: number;
  /** ms to wait for HELLO and KEY_ACK, default 10000. */
  handshakeTimeout?: number;
  /** ms for each login HTTP request, default 30000. */
  httpTimeout?: number;
  /** Requests in flight on one connection (default 64); more wait for a free slot. */
  maxInFlight?: number;
  /** Longest reconnect delay in ms, default 10000. */
  maxReconnectDelay?: number;
  /** Requests larger than this (bytes on the wire) fail locally with `too_large`; default 1 MiB, the gateway's default limit. */
  maxMessageSize?: number;
  /**
   * When the server no longer knows the session (close 4401, e.g. a gateway restarted with an
   * in-memory state store), log in again with the cached SCRAM SaltedPassword instead of ending
   * with `session_expired`. Default false. A session ended on purpose (4001) is never renewed.
   */
  autoRelogin?: boolean;
  /**
   * Keep SCRAM's SaltedPassword (never the password) in memory for the session's life, so that a
   * changed IP or server key, or `autoRelogin`, logs in again without asking. Default true. false:
   * it is zeroed as soon as the login succeeds, and such a change ends the session. Either way it
   * is zeroed when the session closes.
   */
  keepCredentials?: boolean;
  /** fetch implementation (default: globalThis.fetch). */
  fetch?: typeof fetch;
  /** WebSocket implementation (default: globalThis.WebSocket). */
  WebSocket?: typeof WebSocket;
  /**
   * For tests only: exposes the session's secrets. Works only with the sources or a test build
   * (`node build.mjs out.js --test-hooks`); the published bundle ignores it.
   */
  testHooks?: {
    onSecrets?: (s: {
      sessionId: string;
      sessionKey: Uint8Array;
      dynamicPassword: Uint8Array;
      c2sKey: Uint8Array;
      s2cKey: Uint8Array;
      helloNonce: Uint8Array;
    }) => void;
  };
}

export interface RequestOptions {
  /** Encrypt the request and its response (ENC). */
  sensitive?: boolean;
  /** ms; default the session's requestTimeout. */
  timeout?: number;
}

export interface EventMeta {
  channel: string;
  /** The event was encrypted on the wire (sensitive channel). */
  encrypted: boolean;
  /** History channels only: this event's offset in the stream (the first event of an epoch is 1). */
  offset?: number;
  /** History channels only: the stream's epoch. */
  epoch?: string;
}

/** A position in a history channel's stream (docs/protocol.md §6.5): JSON-safe, e.g. for sessionStorage. */
export interface Position {
  /** b64u */
  epoch: string;
  /** Events published in this epoch up to here (0: none yet). */
  offset: number;
}

/** Events may be missing before the position; the app refetches its state (e.g. POST /api/history). */
export interface GapDetail {
  channel: string;
  /**
   * "not_recovered": a subscription with `since` (a reconnect, or a stored position) could not be
   * replayed (another epoch, or older than the history keeps); "resync": the server sent RESYNC;
   * "skip": an event arrived past the next offset.
   */
  reason: "not_recovered" | "resync" | "skip";
  /** Where events continue: the next one has offset + 1. */
  epoch: string;
  offset: number;
  /** The last position delivered (or asked for) before the gap; null if none. */
  previous: Position | null;
}

/** A subscription with `since` resumed: the missed events are replayed to the handler next. */
export interface RecoveredDetail {
  channel: string;
  epoch: string;
  /** The stream's position when the subscription took effect. */
  offset: number;
  since: Position;
  /** Events replayed (offsets since.offset + 1 … offset). */
  missed: number;
}

/** A user became present on the channel (`join`) or stopped being present (`leave`): docs/protocol.md §6.6. */
export type PresenceEvent = { join: string; leave?: undefined } | { leave: string; join?: undefined };

export interface PresenceMeta {
  channel: string;
  /** The PRESENCE_EVENT was encrypted on the wire (sensitive channel). */
  encrypted: boolean;
}

export interface PresenceUser {
  user: string;
  /** That user's connections subscribed to the channel, on every node. */
  connections: number;
}

/** The answer to `presence(channel)`. */
export interface PresenceList {
  /** Sorted by user. */
  users: PresenceUser[];
  /** The server cut the list at its limit (`max_presence_list`): more users are present. */
  truncated: boolean;
}

export interface SubscribeOptions extends RequestOptions {
  /** Resume from a stored position (used when the session tracks none for the channel yet). null: none. */
  since?: Position | null;
  /** Called (before later events) when events may have been missed. */
  onGap?: (d: GapDetail) => void;
  /** Called when a subscription with `since` resumed without loss. */
  onRecovered?: (d: RecoveredDetail) => void;
  /**
   * Channels with presence: receive `{join: user}` / `{leave: user}`. The channel's SUBSCRIBE asks for
   * presence events (`"presence_events": true`) while any of its handlers has this, across reconnects too.
   * Events missed while the connection was down are not replayed: call `presence()` again on reconnect.
   */
  presence?: ((d: PresenceEvent, meta: PresenceMeta) => void) | null;
}

/** Calling it unsubscribes (that handler). */
export interface Subscription {
  (): Promise<void>;
  readonly channel: string;
  /** History channels: the last position delivered to the handlers (still readable after unsubscribing or close()); otherwise null. */
  readonly position: Position | null;
}

export interface StateDetail {
  state: ConnectionState;
  previous: ConnectionState;
  /** Why the connection went down or the session closed. */
  error?: WsgateError;
}

export interface SessionDetail {
  sessionId: string;
  user: string;
  ip: string;
}

export interface ErrorDetail {
  error: WsgateError;
  channel?: string;
}

/** Request data: bytes as they are, strings as UTF-8, anything else as UTF-8 JSON. */
export type RequestData = Uint8Array | ArrayBuffer | ArrayBufferView | string | number | boolean | null | object | undefined;

export declare class Session extends EventTarget {
  protected constructor();
  /** User name as the server stores it (SASLprep'd). */
  readonly user: string | null;
  /** IP address the server sees; the session is bound to it. */
  readonly ip: string | null;
  readonly sessionId: string | null;
  /** ms since the epoch. */
  readonly expiresAt: number | null;
  /** Fingerprint of the server key the session is bound to. */
  readonly keyFingerprint: string | null;
  readonly backend: "webcrypto" | "noble";
  readonly state: ConnectionState;
  /** true: the session runs in the shared worker (`connect({ shared: true })`); false: in this page. */
  readonly shared: boolean;

  request(route: string, data?: RequestData, opts?: RequestOptions): Promise<Uint8Array>;
  /** Like request(), parsing the response as JSON (empty response: null). */
  requestJson<T = any>(route: string, data?: RequestData, opts?: RequestOptions): Promise<T>;
  /** Resolves with the new event's position on a history channel, null on others. */
  publish(channel: string, data?: RequestData, opts?: RequestOptions): Promise<Position | null>;
  /**
   * Resolves once the server confirmed; calling the result unsubscribes. Restored after reconnects;
   * on history channels from the last position delivered: every event once, in order, or `onGap`.
   */
  subscribe(channel: string, handler: (data: Uint8Array, meta: EventMeta) => void, opts?: SubscribeOptions): Promise<Subscription>;
  /**
   * Who is present on a channel with presence (docs/protocol.md §6.6), fleet-wide, sorted by user.
   * Allowed to whoever may subscribe to it; `not_found` on a channel without presence.
   */
  presence(channel: string, opts?: RequestOptions): Promise<PresenceList>;
  /** Ends the session on the server, then closes. */
  logout(opts?: { timeout?: number }): Promise<void>;
  /** Closes without logging out. */
  close(): void;
  /** Skips the current reconnect delay. */
  reconnectNow(): void;

  on(type: "state", fn: (d: StateDetail) => void): () => void;
  on(type: "session", fn: (d: SessionDetail) => void): () => void;
  on(type: "error", fn: (d: ErrorDetail) => void): () => void;
}

/**
 * A Session that runs in the shared worker (`connect({ shared: true })`): the same members; `close()`
 * detaches this page only, `logout()` ends the session for every page.
 */
export declare class SharedSession extends Session {
  readonly shared: true;
}

/** Logs in (SCRAM-SHA-256-PLUS, mutual authentication) and opens a key-established connection. */
export declare function connect(opts: ConnectOptions): Promise<Session>;

/** Whether this page has Web Crypto's subtle API (secure contexts only). */
export declare function hasSubtle(): boolean;

/** "wsgate-v1" */
export declare const PROTOCOL: string;
