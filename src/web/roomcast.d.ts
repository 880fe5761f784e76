// Type declarations of the roomcast browser SDK (/roomcast.js).

export type Transport = "auto" | "webtransport" | "websocket";

export interface ConnectOptions {
  /** The relay's public web address; default: the page's origin. */
  url?: string;
  /** A client token (`roomcast token --user U`), or `dev:<user>` on a relay in dev_mode; or a
   *  function giving one, called for every (re)connect, so an expiring token can be renewed. */
  token: string | (() => string | Promise<string>);
  /** Default "auto": WebTransport where the browser has it, else WebSocket. */
  transport?: Transport;
  /** Over WebTransport, take low-priority messages as datagrams (default true). */
  datagrams?: boolean;
  /** Reconnect (with resume) when the connection drops; default true. */
  reconnect?: boolean;
  /** Give up reconnecting after this long, ms (default 60000). */
  reconnectForMs?: number;
  /** Per-transport connect timeout, ms (default 5000). */
  connectTimeoutMs?: number;
  /** Events buffered for the iterator before low-priority ones are dropped as a gap. */
  eventBuffer?: number;
  /** Connection state changes. */
  onstate?: (state: "connected" | "reconnecting" | "closed") => void;
  /** A WebSocket constructor (outside browsers). */
  WebSocket?: unknown;
}

/** The JSON lines of `roomcast sub`, as objects. */
export type RoomEvent =
  | {
      event: "message"; room: string; seq: number; ts: number; from: string; type: string;
      class: "protected" | "normal" | "low"; datagram: boolean; body?: string; body_b64?: string;
    }
  | { event: "gap"; room: string; low: number; normal: number }
  | { event: "room_destroyed"; room: string; reason: "manual" | "idle" | "lifetime" | "scheduled" }
  | { event: "kicked"; room: string; reason: "banned" | "other_device" | "single_room" | "offline" }
  | { event: "resumed"; room: string; missed: number; last_seq: number }
  | { event: "resume_failed"; room: string; error: string; message: string }
  | { event: "notice"; notice: Record<string, unknown> }
  | { event: "closed"; code: number | null; reason: string };

export interface RoomInfo {
  id: string; name: string; epoch: number; created_ms: number; member_count: number;
  members: string[]; mute_all: boolean;
}
export interface Message {
  room: string; seq: number; ts: number; from: string; msg_type: string; body: Uint8Array;
  class: "Protected" | "Normal" | "Low";
}
export interface HistoryEntry { message: Message; recalled: boolean }
export interface Attribute { key: string; value: string; owner: string; auto_delete: boolean; set_ms: number }
export interface WireError { code: string; message: string }
export interface JoinInfo {
  room: RoomInfo; last_seq: number; muted: boolean; history: HistoryEntry[];
  attributes: Attribute[]; attr_version: number;
}
export interface AttributeResults { version: number; results: [string, WireError | null][] }

/** A refused request; `code` is the relay's stable error name, e.g. "ROOM_NOT_FOUND". */
export class RoomcastError extends Error {
  code: string;
  detail: string;
}

export const CloseCode: {
  NORMAL: 0; SHUTDOWN: 1; UNAUTHORIZED: 2; PROTOCOL: 3; TOO_SLOW: 4; INTERNAL: 5;
};

export class Client {
  /** The transport in use. */
  readonly transport: "webtransport" | "websocket";
  readonly user: string;
  readonly connId: number;
  join(room: string, opts?: { history?: number }): Promise<JoinInfo>;
  leave(room: string): Promise<void>;
  send(room: string, body: string | Uint8Array, opts?: { type?: string; low?: boolean }): Promise<{ seq: number; ts: number }>;
  roomInfo(room: string): Promise<RoomInfo>;
  setAttributes(room: string, entries: Record<string, string> | [string, string][], opts?: { autoDelete?: boolean; force?: boolean }): Promise<AttributeResults>;
  deleteAttributes(room: string, keys: string[], opts?: { force?: boolean }): Promise<AttributeResults>;
  getAttributes(room: string, keys?: string[]): Promise<{ version: number; attributes: Attribute[] }>;
  recall(room: string, seq: number): Promise<void>;
  history(room: string, opts?: { beforeSeq?: number; limit?: number }): Promise<HistoryEntry[]>;
  /** Rejoins the incarnation `epoch` of a room after a reconnect, from the newest seq received. */
  resume(room: string, epoch: number, lastSeq: number): Promise<JoinInfo>;
  ping(): Promise<void>;
  events(): AsyncIterable<RoomEvent>;
  [Symbol.asyncIterator](): AsyncIterator<RoomEvent>;
  close(): void;
}

export function connect(opts: ConnectOptions): Promise<Client>;

/** The postcard codec and schemas (for tools and tests). */
export const schemas: Record<"ClientFrame" | "ServerFrame" | "Event" | "Request" | "Response", unknown>;
export function encode(schema: unknown, value: unknown): Uint8Array;
export function decode(schema: unknown, bytes: Uint8Array): any;
export function toSubEvent(event: unknown, datagram?: boolean): RoomEvent | null;
