// herald.d.ts: the types of herald.js, the Herald browser client (served beside it at
// /herald.d.ts). The guide is docs/CLIENT.md; the wire contract is docs/PROTOCOL.md.
//
//   // @deno-types="https://chat.example.com/herald.d.ts"   (or a `declare module` / paths entry)
//   import { Herald } from "https://chat.example.com/herald.js";
//
// Every name herald.js exports is declared here (a test in crates/herald-edge/tests/pages.rs
// checks it). Interfaces named here without a runtime counterpart (Subscription, Message, ...)
// describe objects the library hands out; they cannot be constructed or used with `instanceof`.

/** The library's version (the wire contract is docs/PROTOCOL.md). */
export const VERSION: string;

// ---------------------------------------------------------------------------------- data

/**
 * A place in a channel's history: after `offset` in generation `epoch`. Offsets grow by exactly
 * 1 per publish and only compare within one epoch. A channel nobody has published to is at
 * `{epoch: "", offset: 0}`.
 */
export interface Position {
  /** One generation of the channel's history (8 letters/digits; `""` before the first publish). */
  epoch: string;
  /** The offset of the last message at or before this position (0: none yet). */
  offset: number;
}

/** What `Subscription.ready` resolves with: where the subscription stands once confirmed. */
export interface SubscriptionReady extends Position {
  /**
   * `true` when nothing was missed: either no `since` was given, or every message after it was
   * (or is being) delivered. `false` when history no longer held them (`onReset` fired too).
   */
  recovered: boolean;
}

/** A publication delivered on a channel (`onMessage`, history pages). */
export interface Message<T = unknown> {
  /** Always `"message"`. */
  op: "message";
  /** The channel it was published to. */
  channel: string;
  /** The generation of the channel's history it belongs to. */
  epoch: string;
  /** Its offset in that epoch: the subscription's previous offset + 1. */
  offset: number;
  /**
   * The broker's accept time (Unix ms). Absent on binary messages received over WebSocket
   * (the binary frame carries only channel, offset and payload).
   */
  ts?: number;
  /**
   * The published JSON value. Binary publications arrive as a `Uint8Array` on every transport
   * (SSE and poll carry them as `{"$binary": "<base64>"}`, which herald.js decodes): on a
   * channel that carries bytes, use `Message<Uint8Array>` (or a union) as `T`.
   */
  data: T;
  /** The publishing connection's id; absent for API publishes and binary WebSocket frames. */
  from?: string;
  /** The publisher's authenticated user; absent for anonymous and API publishes and binary WebSocket frames. */
  user?: string;
}

/** What a publish resolves with: the position the message got. */
export interface PublishAck extends Position {}

/** One client present in a channel (`presence()`). */
export interface PresenceEntry {
  /** The connection id. */
  client: string;
  /** Its user (`""` when anonymous). */
  user: string;
  /** The edge it is connected to. */
  node: string;
  /** The `info` claim of its connection token, when it has one. */
  info?: unknown;
}

/** A `join` or `leave` event (namespaces with `join_leave = true`). */
export interface PresenceEvent extends PresenceEntry {
  /** Which event this is. */
  op: "join" | "leave";
  /** The channel joined or left. */
  channel: string;
}

/** A page of a channel's history; `epoch` and `offset` are the channel's current position (its newest offset). */
export interface HistoryPage<T = unknown> extends Position {
  /** The channel read. */
  channel: string;
  /**
   * `false` when history no longer holds everything after the requested `since` (another
   * epoch, expired or trimmed): the page then has no messages. Never a page with a silent gap.
   */
  recovered: boolean;
  /** `true` when the page was cut short: ask again with `since` at its last message. */
  more: boolean;
  /** The messages, in offset order. */
  messages: Message<T>[];
}

/** Passed to `onReset`: the subscription's position was replaced, and messages may be missing. */
export interface ResetInfo extends Position {
  /** The channel whose position was reset. */
  channel: string;
  /**
   * `true` when it answers this client's own (re)subscribe (a resume that could not recover);
   * `false` when the server or the gap filler said so on a live subscription.
   */
  solicited: boolean;
  /** The position the subscription had before (what was delivered up to). */
  previous: Position | null;
}

// ---------------------------------------------------------------------------------- errors

/**
 * What `HeraldError.reason` may be: the wire's error name (docs/PROTOCOL.md's error table), one
 * of the client's own reasons, `"http_<status>"` for an HTTP error without a Herald body (a
 * proxy's page), or `"error"`.
 */
export type HeraldErrorReason =
  // the client's own
  | "timeout"
  | "closed"
  | "queue_full"
  | "unknown_outcome"
  | "network"
  | "token"
  | "resync"
  | "error"
  // the server's (docs/PROTOCOL.md)
  | "internal"
  | "unauthorized"
  | "permission_denied"
  | "unknown_op"
  | "bad_request"
  | "invalid_channel"
  | "bad_cursor"
  | "message_too_large"
  | "limit_exceeded"
  | "already_subscribed"
  | "not_subscribed"
  | "unavailable"
  | "rate_limited"
  | "token_expired"
  | `http_${number}`
  | (string & {});

/** The fields a `HeraldError` is made with. */
export interface HeraldErrorInit {
  /** The server's error code (100–113) or close code; 0 when none. */
  code?: number;
  /** See `HeraldErrorReason`. Default `"error"`. */
  reason?: HeraldErrorReason;
  /** The HTTP status of an SSE/poll request that failed; 0 otherwise. */
  status?: number;
  /** Trying again later may succeed. */
  temporary?: boolean;
  /** Seconds the server asked to wait (`Retry-After`); 0 when it did not say. */
  retryAfter?: number;
  /** The request may or may not have taken effect. */
  unknownOutcome?: boolean;
}

/**
 * An error from the server (`code` and `reason` as in docs/PROTOCOL.md's error table, or a close
 * code) or from the client (`reason`: "timeout", "closed", "queue_full", "unknown_outcome",
 * "network", "token", "resync").
 */
export class HeraldError extends Error {
  constructor(message: string, init?: HeraldErrorInit);
  /** Always `"HeraldError"`. */
  name: "HeraldError";
  /** The server's error code (e.g. 102 permission_denied, 111 unavailable) or close code; 0 when none. */
  code: number;
  /** What went wrong, as a name (see `HeraldErrorReason`). */
  reason: HeraldErrorReason;
  /** The HTTP status when an HTTP request (SSE/poll transports) failed; 0 otherwise. */
  status: number;
  /** Trying again later may succeed (a broker hiccup, a timeout, a lost connection). */
  temporary: boolean;
  /** Seconds the server asked to wait before trying again (`Retry-After`); 0 when it did not say. */
  retryAfter: number;
  /** The request may or may not have taken effect (its connection died with it in flight). */
  unknownOutcome: boolean;
  /**
   * Set on an HTTP error (SSE/poll): the POST reached another edge than the stream's, which
   * refused it (nothing was published). Used internally to move the stream; rarely seen.
   */
  moved?: boolean;
}

// ---------------------------------------------------------------------------------- options

/** A transport, in the order herald.js prefers them by default. */
export type TransportName = "websocket" | "sse" | "poll";

/**
 * The connection's state: `"connecting"` (a transport is being opened), `"connected"` (welcomed;
 * subscriptions are (re)sent and publishes flow), `"disconnected"` (lost; a reconnect is
 * scheduled) or `"closed"` (for good: `close()` was called or the server closed with a terminal
 * code).
 */
export type HeraldState = "connecting" | "connected" | "disconnected" | "closed";

/**
 * A connection token: a JWT string, or a function returning one (called at connect, again when the
 * token expires (close code 4010), before it expires (from its `exp` claim), and once after a
 * 4501 refusal).
 */
export type TokenSource = string | (() => string | Promise<string>);

/** A channel token (for namespaces that require one): a string, or a function of the channel. */
export type ChannelTokenSource = string | ((channel: string) => string | Promise<string>);

/** The options of `new Herald(url, options)`; every one is optional. */
export interface HeraldOptions {
  /** The connection token (see `TokenSource`). Without one the connection is anonymous. */
  token?: TokenSource | null;
  /** The transports to try, in order. Default `["websocket", "sse", "poll"]`. */
  transports?: TransportName[];
  /** Ms for a transport to say welcome (or answer its first poll) before the next is tried. Default 5000. */
  connectTimeout?: number;
  /** Ms for a reply to one request (a WebSocket op, a POST, a GET). Default 10000. */
  requestTimeout?: number;
  /** Seconds a long poll waits; 0: short polling every `pollInterval`. Default 25. */
  pollTimeout?: number;
  /** Ms between short polls (when `pollTimeout` is 0). Default 1000. */
  pollInterval?: number;
  /** The backoff base, ms. Default 500. */
  minReconnectDelay?: number;
  /** The backoff cap, ms. Default 20000. */
  maxReconnectDelay?: number;
  /** Ms on a fallback transport before the better one is tried again; 0: never. Default 60000. */
  retryBetterTransportAfter?: number;
  /** Publishes that may wait for a connection (or for their fate to be known); more are refused at once (`queue_full`). Default 1000. */
  maxPendingPublishes?: number;
  /** Ms a publish may wait for a connection and its ack. Default 30000. */
  publishTimeout?: number;
  /** Messages held per channel while a gap is filled from history; past it the connection resumes anew. Default 10000. */
  maxBuffered?: number;
  /** Ms to wait for the pong of an application ping (WebSocket) before the connection counts as dead. Default 10000. */
  pongTimeout?: number;
  /** Display name of an anonymous connection (`?user=` on every transport), when no token is used. */
  user?: string;
  /** `false`: do not connect until `connect()` is called. Default `true`. */
  autoConnect?: boolean;
}

/** The options in force: `HeraldOptions` with the defaults filled in. */
export interface HeraldResolvedOptions extends Required<Omit<HeraldOptions, "token" | "user" | "autoConnect">> {
  token?: TokenSource | null;
  user?: string;
  autoConnect?: boolean;
}

/** The options of `subscribe(channel, options)`. Callbacks are called with the Subscription as `this`. */
export interface SubscribeOptions<T = unknown> {
  /**
   * Resume after this position (e.g. one saved in localStorage from `sub.position`): every later
   * message still in history is delivered first. Without it the subscription starts from now.
   */
  since?: Position | null;
  /** A channel token, for namespaces that require one. */
  token?: ChannelTokenSource;
  /** Each message of the channel, once, in offset order. */
  onMessage?(this: Subscription<T>, message: Message<T>): void;
  /** A client joined the channel (namespaces with `join_leave = true`). */
  onJoin?(this: Subscription<T>, event: PresenceEvent): void;
  /** A client left the channel (namespaces with `join_leave = true`). */
  onLeave?(this: Subscription<T>, event: PresenceEvent): void;
  /**
   * Messages may have been missed (history no longer held them, or its epoch changed): reload
   * the channel's state from the application. Delivery goes on from `info`'s position. This is
   * the only way loss is ever signalled.
   */
  onReset?(this: Subscription<T>, info: ResetInfo): void;
  /** The subscription failed for good (refused, channel token failed, connection closed for good). */
  onError?(this: Subscription<T>, error: HeraldError): void;
}

/** What `publish(channel, data, options)` accepts. */
export interface PublishOptions {
  /** Do not deliver this message back to this connection (the channel's own deliveries wait for the ack). */
  skipSelf?: boolean;
  /** Ms this publish may wait for a connection and its ack; default the `publishTimeout` option. */
  timeout?: number;
}

/** What `history(channel, options)` accepts. */
export interface HistoryOptions {
  /** Messages after this position; without it, the latest. */
  since?: Position;
  /** At most this many messages (≤ 10000 and the namespace's history size). */
  limit?: number;
  /** A channel token (a string), for namespaces that require one. */
  token?: string;
}

/** What `presence(channel, options)` accepts. */
export interface PresenceOptions {
  /** A channel token (a string), for namespaces that require one. */
  token?: string;
}

// ---------------------------------------------------------------------------------- subscription

/** A subscription to one channel, made by `Herald.subscribe`. */
export interface Subscription<T = unknown> {
  /** The channel. */
  readonly channel: string;
  /**
   * Resolves once the server first confirms the subscription (on this or a later connection);
   * rejects with a `HeraldError` when it fails for good (then `onError` is called too).
   */
  readonly ready: Promise<SubscriptionReady>;
  /**
   * The last delivered position (save it to resume with `since`); `since` until the first
   * confirmation, or null when there was none.
   */
  readonly position: Position | null;
  /** `false` once unsubscribed or failed. */
  readonly active: boolean;
  /** The server confirmed it on the current connection. */
  readonly established: boolean;
  /** The options it was made with. */
  readonly options: SubscribeOptions<T>;
  /** The channel token source, when any. */
  readonly token: ChannelTokenSource | undefined;
  /** The client it belongs to. */
  readonly herald: Herald;
  /** Stops the subscription (and tells the server). The channel may then be subscribed again. */
  unsubscribe(): void;
}

// ---------------------------------------------------------------------------------- client

/** The events of `Herald.on` and their payloads. */
export interface HeraldEventMap {
  /** The connection's state changed. */
  state: HeraldState;
  /** Another transport is in use. */
  transport: TransportName;
  /**
   * Something went wrong that the client handles by itself (a lost connection, a refused token
   * function, a resync); for logging. Terminal failures also end in state `"closed"`.
   */
  error: HeraldError;
  /** A server-wide broadcast (`POST /api/broadcast` without channels): its `data`. Not recoverable. */
  broadcast: unknown;
  /** A client joined any subscribed channel. */
  join: PresenceEvent;
  /** A client left any subscribed channel. */
  leave: PresenceEvent;
}

/** A connection to a Herald cluster that survives edges, proxies and networks. */
export class Herald {
  /**
   * @param url The edge (or the proxy in front of the edges), e.g. `"https://chat.example.com"`
   *   or a path prefix; the page's own location when omitted. Its query and hash are ignored.
   * @param options See `HeraldOptions`.
   * @throws HeraldError (`bad_request`) for an unknown transport name.
   */
  constructor(url?: string | URL | null, options?: HeraldOptions);

  /** The options in force (defaults filled in). */
  readonly options: HeraldResolvedOptions;
  /** The connection's state. */
  readonly state: HeraldState;
  /** The transport in use, or null before the first connect. */
  readonly transport: TransportName | null;
  /** The edge that welcomed us (WebSocket, SSE) or answered last (poll); null before. */
  readonly node: string | null;
  /** Our connection id on that edge (WebSocket, SSE; null on poll and while disconnected). */
  readonly client: string | null;
  /** The user the server says we are (`""` when anonymous); null until a welcome names it (never on poll). */
  readonly user: string | null;

  /** Listens for an event; returns a function that stops listening. */
  on<K extends keyof HeraldEventMap>(event: K, listener: (value: HeraldEventMap[K]) => void): () => void;
  /** Stops a listener added with `on`. */
  off<K extends keyof HeraldEventMap>(event: K, listener: (value: HeraldEventMap[K]) => void): void;

  /** Connects (done by the constructor unless `autoConnect: false`); nothing when already connecting or connected. */
  connect(): void;
  /** Closes the connection for good; publishes not yet sent are rejected (`closed`), those in flight with `unknown_outcome`. */
  close(): void;

  /**
   * Subscribes to `channel`. It is (re)sent on every connection and resumes from its own position.
   * @throws HeraldError (`already_subscribed`, code 109) when `channel` already has a subscription.
   */
  subscribe<T = unknown>(channel: string, options?: SubscribeOptions<T>): Subscription<T>;
  /** The subscription to `channel`, or null. */
  getSubscription<T = unknown>(channel: string): Subscription<T> | null;

  /**
   * Publishes `data` (any JSON value; bytes only over WebSocket). Resolves with the message's
   * position; rejects with a `HeraldError`. While disconnected it waits (at most
   * `maxPendingPublishes`, for `publishTimeout`); it is never sent twice.
   */
  publish(channel: string, data: unknown, options?: PublishOptions): Promise<PublishAck>;
  /** Who is in `channel` (waits up to `requestTimeout` for a connection). Poll clients are never listed. */
  presence(channel: string, options?: PresenceOptions): Promise<PresenceEntry[]>;
  /** A page of `channel`'s history after `since` (or the latest); waits up to `requestTimeout` for a connection. */
  history<T = unknown>(channel: string, options?: HistoryOptions): Promise<HistoryPage<T>>;
}

// ---------------------------------------------------------------------------------- pure parts

/**
 * Full-jitter exponential backoff: uniform in [0, min(cap, base · 2^attempt)), ms.
 * @param attempt 0 for the first retry (negative counts as 0).
 * @param base Default 500 (`minReconnectDelay`).
 * @param cap Default 20000 (`maxReconnectDelay`).
 * @param random A source of numbers in [0, 1); default `Math.random`.
 */
export function backoff(attempt: number, base?: number, cap?: number, random?: () => number): number;

/**
 * Where a message at (`epoch`, `offset`) stands against a channel position: "deliver" (the next
 * offset), "duplicate" (at or before the position), "gap" (offsets are missing before it),
 * "epoch" (another generation of history: the position is void) or "adopt" (no position, or the
 * channel had no history yet).
 */
export function classify(
  position: Position | null | undefined,
  epoch: string,
  offset: number,
): "deliver" | "duplicate" | "gap" | "epoch" | "adopt";

/** The cursor the server reads (SSE `since`, poll `cursor`) for `positions`, keyed by channel. */
export function encodeCursor(positions: Record<string, Position>): string;

/** The positions in a server cursor, keyed by channel, or null when it is not one this version can read. */
export function decodeCursor(cursor: string): Record<string, Position> | null;

/** The `exp` claim of a JWT (Unix seconds), or 0 when it has none or is not a JWT. */
export function tokenExpiry(token: string): number;

export default Herald;
