// roomcast browser SDK: an ES module with no build step and no dependencies.
//
//   import { connect } from "/roomcast.js";
//   const client = await connect({ url: location.origin, token });
//   await client.join("lobby");
//   await client.send("lobby", "hello");
//   for await (const ev of client.events()) console.log(ev);
//
// The wire protocol is roomcast/1 (see the relay's protocol documentation): postcard frames
// over WebTransport (the relay's QUIC port, HTTP/3) or over one WebSocket (`/ws`). Events have
// exactly the shape of the JSON lines `roomcast sub` prints.

// ---------------------------------------------------------------------------------------------
// postcard codec, driven by a schema that mirrors the Rust types (variant order is the wire
// order). Values use serde's JSON representation of those types: externally tagged enums
// ("Ping", {"Join": {...}}, {"Refused": {...}}), Result as {"Ok": v} / {"Err": e}, byte arrays
// as Uint8Array, integers as Numbers (exact up to 2^53).

// The largest frame the SDK reads from the relay: a `History` reply of 200 messages of the
// largest (admin) body, 128 KiB each, is about 25 MiB.
const MAX_FRAME_IN = 32 << 20;

const T = {
  u16: "u16", u32: "u32", u64: "u64", i32: "i32", bool: "bool", string: "string", bytes: "bytes",
  option: (t) => ({ option: t }),
  vec: (t) => ({ vec: t }),
  tuple: (...ts) => ({ tuple: ts }),
  struct: (fields) => ({ struct: fields }),
  // variants: [name, null (unit) | type (newtype) | {struct: ...}]
  enumOf: (variants) => ({ enum: variants }),
  result: (ok, err) => ({ enum: [["Ok", ok], ["Err", err]] }),
};

const ERROR_CODES = [
  "BAD_REQUEST", "UNAUTHORIZED", "FORBIDDEN", "RATE_LIMITED", "TOO_LARGE", "ROOM_NOT_FOUND",
  "ROOM_EXISTS", "NOT_IN_ROOM", "BANNED", "MUTED", "TOO_MANY_ROOMS", "ATTR_LIMIT",
  "ATTR_NOT_OWNER", "ATTR_NOT_FOUND", "BATCH_TOO_LARGE", "MESSAGE_NOT_FOUND", "RECALL_FORBIDDEN",
  "SHED", "INTERNAL",
];
const unitEnum = (names) => T.enumOf(names.map((n) => [n, null]));
const ErrorCode = unitEnum(ERROR_CODES);
const WireError = T.struct([["code", ErrorCode], ["message", T.string]]);
const Class = unitEnum(["Protected", "Normal", "Low"]);
const DestroyReason = unitEnum(["Manual", "Idle", "Lifetime", "Scheduled"]);
const KickReason = unitEnum(["Banned", "OtherDevice", "SingleRoom", "Offline"]);
const Message = T.struct([
  ["room", T.string], ["seq", T.u64], ["ts", T.u64], ["from", T.string],
  ["msg_type", T.string], ["body", T.bytes], ["class", Class],
]);
const Attribute = T.struct([
  ["key", T.string], ["value", T.string], ["owner", T.string], ["auto_delete", T.bool],
  ["set_ms", T.u64],
]);
const HistoryEntry = T.struct([["message", Message], ["recalled", T.bool]]);
const RoomInfo = T.struct([
  ["id", T.string], ["name", T.string], ["epoch", T.u64], ["created_ms", T.u64],
  ["member_count", T.u64], ["members", T.vec(T.string)], ["mute_all", T.bool],
]);
const JoinInfo = T.struct([
  ["room", RoomInfo], ["last_seq", T.u64], ["muted", T.bool], ["history", T.vec(HistoryEntry)],
  ["attributes", T.vec(Attribute)], ["attr_version", T.u64],
]);
const room = ["room", T.string];
const Request = T.enumOf([
  ["Join", T.struct([room, ["history", T.i32]])],
  ["Leave", T.struct([room])],
  ["Send", T.struct([room, ["msg_type", T.string], ["body", T.bytes], ["low", T.bool]])],
  ["RoomInfo", T.struct([room])],
  ["Ping", null],
  ["SetAttributes", T.struct([
    room, ["entries", T.vec(T.tuple(T.string, T.string))], ["auto_delete", T.bool],
    ["force", T.bool],
  ])],
  ["DeleteAttributes", T.struct([room, ["keys", T.vec(T.string)], ["force", T.bool]])],
  ["GetAttributes", T.struct([room, ["keys", T.vec(T.string)]])],
  ["Recall", T.struct([room, ["seq", T.u64]])],
  ["History", T.struct([room, ["before_seq", T.u64], ["limit", T.u32]])],
  ["Resume", T.struct([room, ["epoch", T.u64], ["last_seq", T.u64]])],
]);
const ClientFrame = T.enumOf([
  ["Hello", T.struct([["version", T.u16], ["token", T.string]])],
  ["Request", T.struct([["id", T.u32], ["request", Request]])],
]);
const Response = T.enumOf([
  ["Joined", JoinInfo],
  ["Left", null],
  ["Sent", T.struct([["seq", T.u64], ["ts", T.u64]])],
  ["Info", RoomInfo],
  ["Pong", null],
  ["AttributeResults", T.struct([
    ["version", T.u64], ["results", T.vec(T.tuple(T.string, T.option(WireError)))],
  ])],
  ["Attributes", T.struct([["version", T.u64], ["attributes", T.vec(Attribute)]])],
  ["Recalled", null],
  ["History", T.vec(HistoryEntry)],
]);
const ServerFrame = T.enumOf([
  ["Welcome", T.struct([
    ["user", T.string], ["conn_id", T.u64], ["max_frame", T.u32], ["max_event", T.u32],
  ])],
  ["Refused", WireError],
  ["Reply", T.struct([["id", T.u32], ["result", T.result(Response, WireError)]])],
]);
const users = ["users", T.vec(T.string)];
const Event = T.enumOf([
  ["Ready", T.struct([["conn_id", T.u64]])],
  ["Message", Message],
  ["Gap", T.struct([room, ["low", T.u64], ["normal", T.u64]])],
  ["RoomDestroyed", T.struct([room, ["reason", DestroyReason]])],
  ["Kicked", T.struct([room, ["reason", KickReason]])],
  ["Resumed", T.struct([room, ["missed", T.u64], ["last_seq", T.u64]])],
  ["Muted", T.struct([room, users, ["until_ms", T.u64]])],
  ["Unmuted", T.struct([room, users])],
  ["MuteAll", T.struct([room])],
  ["MuteAllLifted", T.struct([room])],
  ["Banned", T.struct([room, users, ["until_ms", T.u64]])],
  ["Unbanned", T.struct([room, users])],
  ["MemberJoined", T.struct([room, ["user", T.string]])],
  ["MemberLeft", T.struct([room, ["user", T.string]])],
  ["MemberCount", T.struct([room, ["count", T.u64]])],
  ["Recalled", T.struct([room, ["seq", T.u64]])],
  ["AttributeChanged", T.struct([room, ["version", T.u64], ["attribute", Attribute]])],
  ["AttributeRemoved", T.struct([room, ["version", T.u64], ["key", T.string], ["auto", T.bool]])],
]);

/** The schemas of roomcast/1, by Rust type name. */
export const schemas = { ClientFrame, ServerFrame, Event, Request, Response };

/** Why bytes could not be decoded. */
export class DecodeError extends Error {}

const utf8 = new TextEncoder();
const utf8Strict = new TextDecoder("utf-8", { fatal: true });

class Writer {
  constructor() { this.buf = new Uint8Array(64); this.len = 0; }
  reserve(n) {
    if (this.len + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.len + n) size *= 2;
    const b = new Uint8Array(size);
    b.set(this.buf.subarray(0, this.len));
    this.buf = b;
  }
  byte(b) { this.reserve(1); this.buf[this.len++] = b; }
  bytes(a) { this.reserve(a.length); this.buf.set(a, this.len); this.len += a.length; }
  varint(n) {
    if (!Number.isSafeInteger(n) || n < 0) throw new RangeError(`not an unsigned integer: ${n}`);
    while (n >= 0x80) { this.byte((n % 0x80) | 0x80); n = Math.floor(n / 0x80); }
    this.byte(n);
  }
  finish() { return this.buf.slice(0, this.len); }
}

class Reader {
  constructor(bytes) { this.b = bytes; this.pos = 0; }
  byte() {
    if (this.pos >= this.b.length) throw new DecodeError("unexpected end of frame");
    return this.b[this.pos++];
  }
  take(n) {
    if (this.pos + n > this.b.length) throw new DecodeError("unexpected end of frame");
    const s = this.b.subarray(this.pos, this.pos + n);
    this.pos += n;
    return s;
  }
  varint(maxBytes) {
    let n = 0, mul = 1;
    for (let i = 0; i < maxBytes; i++) {
      const b = this.byte();
      n += (b & 0x7f) * mul;
      if ((b & 0x80) === 0) {
        if (!Number.isSafeInteger(n)) throw new DecodeError("integer above 2^53");
        return n;
      }
      mul *= 0x80;
    }
    throw new DecodeError("varint too long");
  }
}

function encodeInto(w, type, v) {
  switch (type) {
    case "u16": case "u32": case "u64": w.varint(v); return;
    case "i32": {
      if (!Number.isInteger(v) || v < -(2 ** 31) || v >= 2 ** 31) throw new RangeError(`not an i32: ${v}`);
      w.varint(v >= 0 ? v * 2 : -v * 2 - 1);
      return;
    }
    case "bool": w.byte(v ? 1 : 0); return;
    case "string": { const b = utf8.encode(v); w.varint(b.length); w.bytes(b); return; }
    case "bytes": {
      const b = v instanceof Uint8Array ? v : Uint8Array.from(v);
      w.varint(b.length); w.bytes(b); return;
    }
  }
  if (type.option) {
    if (v === null || v === undefined) { w.byte(0); return; }
    w.byte(1); encodeInto(w, type.option, v); return;
  }
  if (type.vec) { w.varint(v.length); for (const x of v) encodeInto(w, type.vec, x); return; }
  if (type.tuple) { type.tuple.forEach((t, i) => encodeInto(w, t, v[i])); return; }
  if (type.struct) { for (const [name, t] of type.struct) encodeInto(w, t, v[name]); return; }
  if (type.enum) {
    const name = typeof v === "string" ? v : Object.keys(v)[0];
    const index = type.enum.findIndex(([n]) => n === name);
    if (index < 0) throw new RangeError(`unknown variant ${name}`);
    w.varint(index);
    const inner = type.enum[index][1];
    if (inner !== null) encodeInto(w, inner, v[name]);
    return;
  }
  throw new TypeError("bad schema");
}

function decodeFrom(r, type) {
  switch (type) {
    case "u16": return r.varint(3);
    case "u32": return r.varint(5);
    case "u64": return r.varint(10);
    case "i32": { const z = r.varint(5); return z % 2 === 0 ? z / 2 : -(z + 1) / 2; }
    case "bool": {
      const b = r.byte();
      if (b > 1) throw new DecodeError("bad bool");
      return b === 1;
    }
    case "string": {
      const n = r.varint(10);
      try { return utf8Strict.decode(r.take(n)); } catch (e) {
        if (e instanceof DecodeError) throw e;
        throw new DecodeError("invalid UTF-8");
      }
    }
    case "bytes": return r.take(r.varint(10)).slice();
  }
  if (type.option) {
    const tag = r.byte();
    if (tag === 0) return null;
    if (tag !== 1) throw new DecodeError("bad option");
    return decodeFrom(r, type.option);
  }
  if (type.vec) {
    const n = r.varint(10);
    if (n > r.b.length - r.pos) throw new DecodeError("sequence longer than the frame");
    const out = [];
    for (let i = 0; i < n; i++) out.push(decodeFrom(r, type.vec));
    return out;
  }
  if (type.tuple) return type.tuple.map((t) => decodeFrom(r, t));
  if (type.struct) {
    const out = {};
    for (const [name, t] of type.struct) out[name] = decodeFrom(r, t);
    return out;
  }
  if (type.enum) {
    const index = r.varint(5);
    const variant = type.enum[index];
    if (!variant) throw new DecodeError(`unknown variant ${index}`);
    const [name, inner] = variant;
    return inner === null ? name : { [name]: decodeFrom(r, inner) };
  }
  throw new TypeError("bad schema");
}

/** postcard bytes of `value` (serde JSON representation) as `schema`. */
export function encode(schema, value) {
  const w = new Writer();
  encodeInto(w, schema, value);
  return w.finish();
}

/** Decodes one postcard body as `schema`; trailing bytes are an error. */
export function decode(schema, bytes) {
  const r = new Reader(bytes);
  const v = decodeFrom(r, schema);
  if (r.pos !== bytes.length) throw new DecodeError("trailing bytes after the frame");
  return v;
}

/** A length-delimited frame: u32 big-endian length, then the body. */
export function frame(body) {
  const out = new Uint8Array(4 + body.length);
  new DataView(out.buffer).setUint32(0, body.length);
  out.set(body, 4);
  return out;
}

/** Splits bytes into length-delimited frame bodies; keeps an incomplete tail for later. */
export class FrameSplitter {
  constructor(max) { this.max = max; this.buf = new Uint8Array(0); }
  push(chunk) {
    if (this.buf.length === 0) this.buf = chunk;
    else {
      const b = new Uint8Array(this.buf.length + chunk.length);
      b.set(this.buf); b.set(chunk, this.buf.length);
      this.buf = b;
    }
    const out = [];
    let pos = 0;
    while (this.buf.length - pos >= 4) {
      const len = new DataView(this.buf.buffer, this.buf.byteOffset + pos, 4).getUint32(0);
      if (len === 0 || len > this.max) throw new DecodeError(`frame of ${len} bytes (max ${this.max})`);
      if (this.buf.length - pos - 4 < len) break;
      out.push(this.buf.subarray(pos + 4, pos + 4 + len));
      pos += 4 + len;
    }
    this.buf = this.buf.subarray(pos);
    return out;
  }
}

// ---------------------------------------------------------------------------------------------
// Events in the shape of `roomcast sub`'s JSON lines.

const lower = (s) => s.replace(/[A-Z]/g, (c, i) => (i ? "_" : "") + c.toLowerCase());

function bodyFields(body) {
  try { return { body: utf8Strict.decode(body) }; } catch {
    let s = "";
    for (const b of body) s += String.fromCharCode(b);
    return { body_b64: btoa(s) };
  }
}

/** A delivered message as `roomcast sub` prints it. */
export function messageEvent(m, datagram) {
  return {
    event: "message", room: m.room, seq: m.seq, ts: m.ts, from: m.from, type: m.msg_type,
    class: lower(m.class), datagram, ...bodyFields(m.body),
  };
}

/** The sub-shaped object for a decoded protocol Event, or null for `Ready`. */
export function toSubEvent(ev, datagram = false) {
  if (ev === "Ready" || ev.Ready) return null;
  const [name] = Object.keys(ev);
  const v = ev[name];
  switch (name) {
    case "Message": return messageEvent(v, datagram);
    case "Gap": return { event: "gap", room: v.room, low: v.low, normal: v.normal };
    case "RoomDestroyed": return { event: "room_destroyed", room: v.room, reason: lower(v.reason) };
    case "Kicked": return { event: "kicked", room: v.room, reason: lower(v.reason) };
    case "Resumed": return { event: "resumed", room: v.room, missed: v.missed, last_seq: v.last_seq };
    default: return { event: "notice", notice: ev };
  }
}

// ---------------------------------------------------------------------------------------------
// The client.

/** A request the relay refused: `code` is its stable error name, e.g. `ROOM_NOT_FOUND`. */
export class RoomcastError extends Error {
  constructor(code, message) { super(`${code}: ${message}`); this.code = code; this.detail = message; }
}

/** roomcast's close codes, by number. */
export const CloseCode = { NORMAL: 0, SHUTDOWN: 1, UNAUTHORIZED: 2, PROTOCOL: 3, TOO_SLOW: 4, INTERNAL: 5 };

const PROTOCOL_VERSION = 1;
const WS_CONTROL = 0, WS_EVENTS = 1;

function hexBytes(hex) {
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.slice(2 * i, 2 * i + 2), 16);
  return out;
}

/** A bounded queue behind the async iterator of events. */
class EventQueue {
  constructor(limit) { this.items = []; this.waiters = []; this.limit = limit; this.ended = false; this.droppedLow = new Map(); }
  get full() { return this.items.length >= this.limit; }
  push(ev) {
    if (this.ended) return;
    // Over the limit, low-priority messages are dropped and reported as a gap once there is
    // room again; everything else is kept.
    if (this.full && ev.event === "message" && ev.class === "low") {
      this.droppedLow.set(ev.room, (this.droppedLow.get(ev.room) || 0) + 1);
      return;
    }
    this.flushDropped();
    this.deliver(ev);
  }
  flushDropped() {
    if (this.full || this.droppedLow.size === 0) return;
    for (const [room, low] of this.droppedLow) this.deliver({ event: "gap", room, low, normal: 0 });
    this.droppedLow.clear();
  }
  deliver(ev) {
    const w = this.waiters.shift();
    if (w) w({ value: ev, done: false }); else this.items.push(ev);
  }
  end(last) {
    if (this.ended) return;
    if (last) this.deliver(last);
    this.ended = true;
    for (const w of this.waiters.splice(0)) w({ value: undefined, done: true });
  }
  next() {
    if (this.items.length) {
      const value = this.items.shift();
      this.flushDropped();
      return Promise.resolve({ value, done: false });
    }
    if (this.ended) return Promise.resolve({ value: undefined, done: true });
    return new Promise((resolve) => this.waiters.push(resolve));
  }
}

/** The relay's connection info (`/roomcast.json`) for `base`. */
async function relayInfo(base) {
  const r = await fetch(new URL("/roomcast.json", base), { cache: "no-store" });
  if (!r.ok) throw new Error(`GET /roomcast.json: ${r.status}`);
  return r.json();
}

/** One transport session: WebTransport or WebSocket, with the same callbacks. */
async function openWebTransport(base, info, opts, onControl, onEvent) {
  const u = new URL(base);
  const wt = info.webtransport;
  const target = `https://${u.hostname.includes(":") && !u.hostname.startsWith("[") ? `[${u.hostname}]` : u.hostname}:${wt.port}${wt.path}${opts.datagrams === false ? "?datagrams=0" : ""}`;
  const options = {};
  if (wt.cert_sha256 && wt.cert_sha256.length) {
    options.serverCertificateHashes = wt.cert_sha256.map((h) => ({ algorithm: "sha-256", value: hexBytes(h) }));
  }
  const session = new WebTransport(target, options);
  await session.ready;
  const bidi = await session.createBidirectionalStream();
  const writer = bidi.writable.getWriter();
  const pump = async (readable, max, handle) => {
    const reader = readable.getReader();
    const split = new FrameSplitter(max);
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      for (const body of split.push(value)) await handle(body);
    }
  };
  pump(bidi.readable, MAX_FRAME_IN, onControl).catch(() => {});
  (async () => {
    const uni = session.incomingUnidirectionalStreams.getReader();
    const { value: stream } = await uni.read();
    if (stream) await pump(stream, MAX_FRAME_IN, (b) => onEvent(b, false));
  })().catch(() => {});
  (async () => {
    const dgrams = session.datagrams.readable.getReader();
    for (;;) {
      const { value, done } = await dgrams.read();
      if (done) return;
      await onEvent(value, true);
    }
  })().catch(() => {});
  return {
    kind: "webtransport",
    send: (body) => writer.write(frame(body)),
    close: (code, reason) => { try { session.close({ closeCode: code, reason }); } catch {} },
    closed: session.closed.then(
      (info) => ({ code: info.closeCode ?? null, reason: info.reason || "" }),
      (e) => ({ code: null, reason: String((e && e.message) || e) }),
    ),
  };
}

async function openWebSocket(base, info, opts, onControl, onEvent) {
  const u = new URL(info.websocket.path, base);
  u.protocol = u.protocol === "https:" ? "wss:" : "ws:";
  const Ws = opts.WebSocket || globalThis.WebSocket;
  const ws = new Ws(u.toString());
  ws.binaryType = "arraybuffer";
  let chain = Promise.resolve();
  let closedResolve;
  const closed = new Promise((r) => (closedResolve = r));
  ws.onclose = (e) => {
    const code = e.code === 1000 ? 0 : e.code >= 4000 && e.code < 5000 ? e.code - 4000 : null;
    closedResolve({ code, reason: e.reason || `WebSocket closed (${e.code})` });
  };
  ws.onmessage = (e) => {
    const data = new Uint8Array(e.data);
    // Handled in arrival order, one message after the other.
    chain = chain.then(async () => {
      const split = new FrameSplitter(MAX_FRAME_IN);
      const bodies = split.push(data.subarray(1));
      if (data[0] === WS_CONTROL) for (const b of bodies) await onControl(b);
      else if (data[0] === WS_EVENTS) for (const b of bodies) await onEvent(b, false);
    }).catch(() => ws.close(4003, "unreadable frame"));
  };
  await new Promise((resolve, reject) => {
    ws.onopen = resolve;
    ws.onerror = () => reject(new Error(`WebSocket to ${u} failed`));
    closed.then((c) => reject(new Error(`WebSocket closed: ${c.reason}`)));
  });
  return {
    kind: "websocket",
    send: (body) => ws.send(body),
    close: (code, reason) => ws.close(code === 0 ? 1000 : 4000 + code, reason),
    closed,
  };
}

/**
 * A connected client. Create it with {@link connect}.
 */
export class Client {
  constructor(opts) {
    this.opts = opts;
    this.queue = new EventQueue(opts.eventBuffer || 8192);
    this.pending = new Map();
    /** Joined rooms, resumed after a reconnect: room -> {epoch, lastSeq, dgrams}. */
    this.rooms = new Map();
    this.nextId = 1;
    this.closing = false;
    this.transport = null;
    this.user = null;
    this.connId = null;
    /** Called with "connected", "reconnecting" or "closed". */
    this.onstate = opts.onstate || (() => {});
  }

  async open() {
    const base = this.opts.url;
    const info = await relayInfo(base);
    this.info = info;
    const want = this.opts.transport || "auto";
    const tries = want === "auto"
      ? (typeof WebTransport === "function" ? ["webtransport", "websocket"] : ["websocket"])
      : [want];
    let lastError;
    for (const kind of tries) {
      try {
        await this.openWith(kind, base, info);
        return;
      } catch (e) {
        lastError = e;
      }
    }
    throw lastError;
  }

  async openWith(kind, base, info) {
    let welcome;
    const welcomed = new Promise((resolve, reject) => (welcome = { resolve, reject }));
    const onControl = async (body) => {
      const f = decode(ServerFrame, body);
      if (f.Welcome) welcome.resolve(f.Welcome);
      else if (f.Refused) welcome.reject(new RoomcastError(f.Refused.code, f.Refused.message));
      else if (f.Reply) {
        const p = this.pending.get(f.Reply.id);
        if (!p) return;
        this.pending.delete(f.Reply.id);
        if (f.Reply.result.Ok !== undefined) p.resolve(f.Reply.result.Ok);
        else p.reject(new RoomcastError(f.Reply.result.Err.code, f.Reply.result.Err.message));
      }
    };
    const onEvent = async (body, datagram) => {
      let ev;
      try { ev = decode(Event, body); } catch { return; } // an unknown (newer) event: skipped
      const sub = toSubEvent(ev, datagram);
      if (sub && this.track(sub)) this.queue.push(sub);
    };
    const open = kind === "webtransport" ? openWebTransport : openWebSocket;
    const timeout = this.opts.connectTimeoutMs || 5000;
    let timer;
    const link = await Promise.race([
      open(base, info, this.opts, onControl, onEvent),
      new Promise((_, reject) => (timer = setTimeout(() => reject(new Error(`${kind}: no connection within ${timeout} ms`)), timeout))),
    ]).finally(() => clearTimeout(timer));
    link.closed.then((c) => welcome.reject(new RoomcastError(c.code === 2 ? "UNAUTHORIZED" : "CLOSED", c.reason)));
    const token = typeof this.opts.token === "function" ? await this.opts.token() : this.opts.token;
    await link.send(encode(ClientFrame, { Hello: { version: PROTOCOL_VERSION, token } }));
    const w = await welcomed;
    this.link = link;
    this.transport = kind;
    this.user = w.user;
    this.connId = w.conn_id;
    this.onstate("connected");
    link.closed.then((c) => this.lost(link, c));
  }

  /** The connection ended: fail what waits, reconnect unless that is pointless. */
  lost(link, c) {
    if (this.link !== link) return;
    for (const p of this.pending.values()) p.reject(new RoomcastError("CLOSED", c.reason));
    this.pending.clear();
    const final = this.closing || this.opts.reconnect === false
      || c.code === CloseCode.NORMAL || c.code === CloseCode.UNAUTHORIZED || c.code === CloseCode.PROTOCOL;
    if (final) {
      this.onstate("closed");
      this.queue.end({ event: "closed", code: c.code, reason: c.reason });
      return;
    }
    this.onstate("reconnecting");
    this.reconnect(c);
  }

  async reconnect(c) {
    // Memberships kept through the relay's offline grace period resume on the new connection
    // with a `resumed` event telling how many messages were missed; the others (the relay
    // restarted) are resumed with `Resume`, which replays what the relay can.
    let delay = 250;
    const deadline = Date.now() + (this.opts.reconnectForMs || 60000);
    while (!this.closing && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, delay));
      try {
        const info = await relayInfo(this.opts.url);
        await this.openWith(this.transport, this.opts.url, info);
        await this.resumeAll();
        return;
      } catch (e) {
        if (e instanceof RoomcastError && e.code === "UNAUTHORIZED") break;
        delay = Math.min(delay * 2, 5000);
      }
    }
    this.onstate("closed");
    this.queue.end({ event: "closed", code: c.code, reason: c.reason });
  }

  async request(request) {
    if (!this.link) throw new RoomcastError("CLOSED", "not connected");
    const id = this.nextId;
    this.nextId = this.nextId >= 0xffffffff ? 1 : this.nextId + 1;
    const reply = new Promise((resolve, reject) => this.pending.set(id, { resolve, reject }));
    await this.link.send(encode(ClientFrame, { Request: { id, request } }));
    return reply;
  }

  /** Joins a room; `history`: -1 none, 0 the relay's default, up to its maximum. */
  async join(room, { history = -1 } = {}) {
    const r = await this.request({ Join: { room, history } });
    const known = this.rooms.get(room);
    const epoch = r.Joined.room.epoch;
    const had = known && known.epoch === epoch ? known.lastSeq : 0;
    this.rooms.set(room, { epoch, lastSeq: Math.max(had, r.Joined.last_seq), dgrams: new Set() });
    return r.Joined;
  }
  /** Leaves a room. */
  async leave(room) {
    await this.request({ Leave: { room } });
    this.rooms.delete(room);
  }
  /** Sends a string or bytes; returns `{seq, ts}`. */
  async send(room, body, { type = "chat", low = false } = {}) {
    const bytes = typeof body === "string" ? utf8.encode(body) : body;
    const r = await this.request({ Send: { room, msg_type: type, body: bytes, low } });
    return r.Sent;
  }
  /** Room info with up to 20 members. */
  async roomInfo(room) { return (await this.request({ RoomInfo: { room } })).Info; }
  /** Sets up to 10 attributes (`{key: value}` or `[[key, value]]`). */
  async setAttributes(room, entries, { autoDelete = false, force = false } = {}) {
    const list = Array.isArray(entries) ? entries : Object.entries(entries);
    return (await this.request({ SetAttributes: { room, entries: list, auto_delete: autoDelete, force } })).AttributeResults;
  }
  /** Deletes up to 10 attributes. */
  async deleteAttributes(room, keys, { force = false } = {}) {
    return (await this.request({ DeleteAttributes: { room, keys, force } })).AttributeResults;
  }
  /** Reads attributes (all when `keys` is empty). */
  async getAttributes(room, keys = []) {
    return (await this.request({ GetAttributes: { room, keys } })).Attributes;
  }
  /** Recalls one of this user's messages. */
  async recall(room, seq) { await this.request({ Recall: { room, seq } }); }
  /** A page of history, oldest first: up to `limit` messages before `beforeSeq` (0: newest). */
  async history(room, { beforeSeq = 0, limit = 20 } = {}) {
    return (await this.request({ History: { room, before_seq: beforeSeq, limit } })).History;
  }
  /**
   * Rejoins the incarnation `epoch` of a room after a reconnect, having received its messages
   * up to `lastSeq`: a `resumed` event follows (with what cannot be replayed), then every other
   * message after `lastSeq` in order, then live traffic.
   */
  async resume(room, epoch, lastSeq) {
    return (await this.request({ Resume: { room, epoch, last_seq: lastSeq } })).Joined;
  }
  /**
   * After a reconnect: resumes every joined room from the newest seq received on the stream; a
   * room that cannot be resumed is told as a `resume_failed` event.
   */
  async resumeAll() {
    for (const [room, m] of [...this.rooms]) {
      try {
        await this.resume(room, m.epoch, m.lastSeq);
      } catch (e) {
        // The connection went again: the next reconnect resumes.
        if (!(e instanceof RoomcastError) || e.code === "CLOSED") return;
        this.rooms.delete(room);
        this.queue.push({ event: "resume_failed", room, error: e.code, message: e.detail });
      }
    }
  }
  /**
   * Follows each joined room's newest seq from the stream (which is in order); false for a
   * datagram that came already and a replay repeats.
   */
  track(ev) {
    const m = this.rooms.get(ev.room);
    if (!m) return true;
    if (ev.event === "message") {
      if (ev.datagram) {
        if (ev.seq <= m.lastSeq) return true;
        if (m.dgrams.has(ev.seq)) return false;
        m.dgrams.add(ev.seq);
        if (m.dgrams.size > 4096) m.dgrams.delete(m.dgrams.values().next().value);
        return true;
      }
      const came = m.dgrams.delete(ev.seq);
      if (ev.seq > m.lastSeq) m.lastSeq = ev.seq;
      for (const s of m.dgrams) if (s <= m.lastSeq) m.dgrams.delete(s);
      return !came;
    }
    if (ev.event === "kicked" || ev.event === "room_destroyed") this.rooms.delete(ev.room);
    return true;
  }
  /** A round trip. */
  async ping() { await this.request("Ping"); }

  /** Events, as an async iterator of objects shaped like `roomcast sub`'s JSON lines. */
  events() {
    return { [Symbol.asyncIterator]: () => ({ next: () => this.queue.next() }) };
  }
  [Symbol.asyncIterator]() { return this.events()[Symbol.asyncIterator](); }

  /** Closes the connection; the events end with a `closed` event. */
  close() {
    this.closing = true;
    if (this.link) this.link.close(CloseCode.NORMAL, "client closed");
    else this.queue.end({ event: "closed", code: CloseCode.NORMAL, reason: "client closed" });
  }
}

/**
 * Connects to a relay. `url` is the relay's public web address (default: this page's origin);
 * `transport` is "auto" (WebTransport where the browser has it, else WebSocket),
 * "webtransport" or "websocket".
 */
export async function connect(opts) {
  const o = { url: globalThis.location ? location.origin : undefined, transport: "auto", ...opts };
  if (!o.url) throw new Error("connect: url is required outside a page");
  if (typeof o.token !== "string" && typeof o.token !== "function") throw new Error("connect: token is required");
  const client = new Client(o);
  await client.open();
  return client;
}
