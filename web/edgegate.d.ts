// Type declarations for the edgegate browser SDK (web/edgegate.js).

export type Transport = 'webtransport' | 'websocket';
export type State = 'connecting' | 'connected' | 'reconnecting' | 'closed';
export type DeliveryMode = 'reliable' | 'datagram' | 'latest';
/** u64 values: a number when it is a safe integer, else a bigint. */
export type U64 = number | bigint;

export interface Position { epoch: U64; offset: U64 }

export interface ConnectOptions {
  /** JWT; empty for anonymous. */
  token?: string;
  /** 'auto' (default) races WebTransport against WebSocket. */
  transport?: 'auto' | Transport;
  /** Head start given to WebTransport before WebSocket is tried (ms, default 500). */
  webtransportHeadStartMs?: number;
  connectTimeoutMs?: number;
  requestTimeoutMs?: number;
  /** Publishes kept while disconnected (default 1000); the oldest is dropped with a 'dropped' event. */
  maxQueuedPublishes?: number;
  backoffMinMs?: number;
  backoffMaxMs?: number;
  pingIntervalMs?: number;
  /** 'auto' pins the dev node's self-signed certificate from /cert.sha256 (http:// URLs only). */
  certHash?: 'auto' | string | null;
}

export interface Message {
  channel: string;
  mode: DeliveryMode;
  epoch: U64;
  offset: U64;
  time_ms: U64;
  key: string | null;
  publisher: string | null;
  data: Uint8Array;
  /** `data` as UTF-8. */
  readonly text: string;
}

export interface SnapshotEntry { key: string | null; offset: U64; time_ms: U64; data: Uint8Array; readonly text: string }
export interface Member { sessionId: string; user: string; info: string | null; infoBytes: Uint8Array }
export interface PresenceEvent { type: 'join' | 'leave'; member: Member }
export interface ResyncInfo { channel: string; position: Position; reason: string }
export interface DroppedInfo { channel: string; count: number; reason: 'server' | 'offline-queue' }

export interface SubscribeOptions {
  onMessage?: (m: Message) => void;
  onSnapshot?: (entries: SnapshotEntry[], position: Position) => void;
  /** Setting it asks for join/leave events. */
  onPresence?: (e: PresenceEvent) => void;
  /** History could not cover a reconnect gap, or the channel has a new epoch: load state again. */
  onResync?: (info: ResyncInfo) => void;
  onError?: (e: Error) => void;
  /** Only deliver messages of this mode. */
  mode?: DeliveryMode;
  /** Presence info to join with (text, bytes or JSON-able). */
  presence?: string | Uint8Array | object;
}

export interface Subscription {
  channel: string;
  /** Resolves with the server's `Subscribed` reply (null when subscribed while disconnected). */
  ready: Promise<{ position: Position; recovered: boolean } | null>;
  unsubscribe(): Promise<void>;
}

export class EdgegateError extends Error { code: number; reason: string }

export interface Gateway {
  readonly state: State;
  readonly transport: Transport | null;
  /** Round-trip time in ms, from client pings. */
  readonly rtt: number | null;
  readonly welcome: { session_id: string; node_id: string; region: string; heartbeat_ms: number } | null;
  subscribe(channel: string, opts?: SubscribeOptions): Subscription;
  unsubscribe(channel: string): Promise<void>;
  /** Resolves with the position assigned (null for datagrams). */
  publish(channel: string, data: string | Uint8Array | ArrayBuffer | object, opts?: { mode?: DeliveryMode; key?: string }): Promise<Position | null>;
  presence(channel: string): Promise<Member[]>;
  history(channel: string, opts?: { since?: Position | null; limit?: number }): Promise<{ position: Position; complete: boolean; messages: Message[] }>;
  refresh(token: string): Promise<void>;
  on(event: 'state', fn: (state: State, transport: Transport | null) => void): () => void;
  on(event: 'resync', fn: (info: ResyncInfo) => void): () => void;
  on(event: 'dropped', fn: (info: DroppedInfo) => void): () => void;
  on(event: 'error', fn: (e: Error) => void): () => void;
  on(event: 'rtt', fn: (ms: number) => void): () => void;
  on(event: 'goingaway' | 'disconnect' | 'tokenexpiring', fn: (info: unknown) => void): () => void;
  close(): void;
}

export function connect(url: string, opts?: ConnectOptions): Promise<Gateway>;

export function encodeClient(frame: { type: string; [field: string]: unknown }): Uint8Array;
export function decodeServer(bytes: Uint8Array, maxFrame?: number): { type: string; [field: string]: unknown };
export class DecodeError extends Error {}
