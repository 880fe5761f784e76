// The SDK's postcard codec against the vectors the Rust encoder produced
// (tests/browser/vectors.json, kept current by `cargo test --test sdk_vectors`).
// Run: node --test tests/browser/codec.test.mjs
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { schemas, encode, decode, toSubEvent, FrameSplitter, frame, DecodeError } from "../../src/web/roomcast.js";

const vectors = JSON.parse(readFileSync(new URL("./vectors.json", import.meta.url), "utf8"));
const hex = (b) => Buffer.from(b).toString("hex");
const bytes = (h) => new Uint8Array(Buffer.from(h, "hex"));
// serde's JSON has byte arrays as arrays of numbers; the SDK has Uint8Array.
const plain = (v) => JSON.parse(JSON.stringify(v, (_, x) => (x instanceof Uint8Array ? [...x] : x)));

test("vectors cover every kind", () => {
  const kinds = new Set(vectors.map((v) => v.kind));
  assert.deepEqual([...kinds].sort(), ["ClientFrame", "Event", "ServerFrame"]);
  assert.ok(vectors.length > 40);
});

for (const [i, v] of vectors.entries()) {
  const name = `${v.kind} #${i} ${JSON.stringify(v.value).slice(0, 60)}`;
  test(`decodes ${name}`, () => {
    assert.deepEqual(plain(decode(schemas[v.kind], bytes(v.hex))), v.value);
  });
  test(`encodes ${name}`, () => {
    const value = JSON.parse(JSON.stringify(v.value), (k, x) =>
      k === "body" && Array.isArray(x) ? Uint8Array.from(x) : x);
    assert.equal(hex(encode(schemas[v.kind], value)), v.hex);
  });
}

test("truncated frames, trailing bytes and unknown variants are decode errors", () => {
  const v = vectors.find((x) => x.kind === "Event" && x.value.Message);
  const b = bytes(v.hex);
  assert.throws(() => decode(schemas.Event, b.subarray(0, b.length - 1)), DecodeError);
  assert.throws(() => decode(schemas.Event, Uint8Array.from([...b, 0])), DecodeError);
  assert.throws(() => decode(schemas.Event, Uint8Array.from([99])), DecodeError);
});

test("length-delimited frames split across chunks", () => {
  const a = frame(Uint8Array.from([1, 2, 3]));
  const b = frame(Uint8Array.from([4]));
  const all = Uint8Array.from([...a, ...b]);
  const s = new FrameSplitter(1024);
  assert.deepEqual(s.push(all.subarray(0, 2)), []);
  const got = [...s.push(all.subarray(2, 8)), ...s.push(all.subarray(8))];
  assert.deepEqual(got.map((x) => [...x]), [[1, 2, 3], [4]]);
  assert.throws(() => new FrameSplitter(2).push(frame(Uint8Array.from([1, 2, 3]))), DecodeError);
});

test("events have the shape roomcast sub prints", () => {
  const msg = vectors.find((x) => x.kind === "Event" && x.value.Message && x.value.Message.class === "Low");
  const ev = toSubEvent(decode(schemas.Event, bytes(msg.hex)), true);
  assert.deepEqual(ev, {
    event: "message", room: "lobby", seq: 300, ts: 1795671510989, from: "bob", type: "chat",
    class: "low", datagram: true, body: "ünïcode",
  });
  const bin = vectors.find((x) => x.kind === "Event" && x.value.Message && x.value.Message.class === "Normal");
  assert.equal(toSubEvent(decode(schemas.Event, bytes(bin.hex))).body_b64, "gIE=");
  const kicked = vectors.find((x) => x.kind === "Event" && x.value.Kicked);
  assert.deepEqual(toSubEvent(decode(schemas.Event, bytes(kicked.hex))), { event: "kicked", room: "lobby", reason: "other_device" });
  const muted = vectors.find((x) => x.kind === "Event" && x.value.Muted);
  assert.deepEqual(toSubEvent(decode(schemas.Event, bytes(muted.hex))), { event: "notice", notice: muted.value });
  const ready = vectors.find((x) => x.kind === "Event" && x.value.Ready);
  assert.equal(toSubEvent(decode(schemas.Event, bytes(ready.hex))), null);
});
