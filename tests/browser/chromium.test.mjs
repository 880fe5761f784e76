// A real headless Chromium against a real `roomcast serve`, with native `roomcast pub` and
// `roomcast sub` processes in the same room. Over WebTransport and then over WebSocket the page
// loads the SDK from the relay, joins, receives in order and with the same seq numbers what
// `pub` sends, sends what `sub` receives (event objects compared with sub's JSON lines), gets a
// low-priority message as a datagram over WebTransport, and sees a kick and a room destruction.
//
// Run (after `cargo build --bin roomcast`):  cd tests/browser && npm ci && node --test
// ROOMCAST_BIN overrides the binary (default ../../target/debug/roomcast); CHROMIUM the browser
// (default /usr/bin/chromium).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync, writeFileSync, readFileSync, existsSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const BIN = process.env.ROOMCAST_BIN || new URL("../../target/debug/roomcast", import.meta.url).pathname;
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const SAFETY_MS = 20000;

let dir, serve, browser, info, adminKey;
const children = [];

/** Polls `cond` until it is truthy or SAFETY_MS pass (a safety net, not synchronisation). */
async function until(what, cond) {
  const end = Date.now() + SAFETY_MS;
  for (;;) {
    const v = await cond();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

function run(args) {
  return execFileSync(BIN, [...args, "--data", join(dir, "data")], { encoding: "utf8", timeout: SAFETY_MS });
}

/** A long-running roomcast command whose stdout lines are collected. */
function start(args) {
  const child = spawn(BIN, args, { stdio: ["ignore", "pipe", "pipe"] });
  children.push(child);
  child.lines = [];
  child.stderrText = "";
  let buf = "";
  child.stdout.on("data", (d) => {
    buf += d;
    let i;
    while ((i = buf.indexOf("\n")) >= 0) {
      child.lines.push(JSON.parse(buf.slice(0, i)));
      buf = buf.slice(i + 1);
    }
  });
  child.stderr.on("data", (d) => (child.stderrText += d));
  child.exited = new Promise((r) => child.on("exit", (code) => r(code)));
  return child;
}

async function admin(method, path, body) {
  const r = await fetch(`http://${info.admin}${path}`, {
    method,
    headers: { authorization: `Bearer ${adminKey}`, "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await r.text();
  assert.ok(r.ok, `${method} ${path}: ${r.status} ${text}`);
  return text ? JSON.parse(text) : null;
}

function pub(room, user, body, low = false) {
  const out = run(["pub", "--room", room, "--user", user, ...(low ? ["--low"] : []), body]);
  return JSON.parse(out);
}

before(async () => {
  assert.ok(existsSync(BIN), `${BIN} is missing: run cargo build --bin roomcast first`);
  dir = mkdtempSync(join(tmpdir(), "roomcast-chromium-"));
  writeFileSync(join(dir, "config.toml"), `
[server]
quic = "127.0.0.1:0"
admin = "127.0.0.1:0"
data = "${join(dir, "data")}"
`);
  serve = start(["serve", "--config", join(dir, "config.toml")]);
  const file = join(dir, "data", "server.json");
  info = await until("server.json", () => existsSync(file) && JSON.parse(readFileSync(file, "utf8")));
  adminKey = readFileSync(join(dir, "data", "admin.key"), "utf8").trim();
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
      "--disable-component-update", "--disable-sync", "--disable-default-apps",
      "--disable-domain-reliability", "--metrics-recording-only",
    ],
  });
});

after(async () => {
  if (browser) await browser.close();
  for (const c of children) c.kill("SIGTERM");
  await Promise.all(children.map((c) => c.exited));
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/** A page on the relay's demo origin with the SDK connected over `transport`. */
async function page(transport, user) {
  const token = run(["token", "--user", user]).trim();
  const p = await browser.newPage();
  const logs = [];
  p.on("console", (m) => logs.push(m.text()));
  p.on("pageerror", (e) => logs.push(String(e)));
  await p.goto(`http://127.0.0.1:${info.web.split(":").pop()}/`);
  const got = await p.evaluate(async ({ token, transport }) => {
    const sdk = await import("/roomcast.js");
    const client = await sdk.connect({ token, transport, reconnect: false });
    window.client = client;
    window.events = [];
    (async () => { for await (const ev of client.events()) window.events.push(ev); })();
    return { transport: client.transport, user: client.user };
  }, { token, transport }).catch((e) => { throw new Error(`${e.message}\npage log:\n${logs.join("\n")}`); });
  assert.deepEqual(got, { transport, user });
  p.logs = logs;
  return p;
}

const events = (p) => p.evaluate(() => window.events);

for (const transport of ["webtransport", "websocket"]) {
  test(`a page over ${transport} talks with native pub and sub`, async () => {
    const room = `room-${transport}`;
    await admin("POST", "/v1/rooms", { id: room });
    const p = await page(transport, `web-${transport}`);
    const joined = await p.evaluate((room) => window.client.join(room).then((j) => j.room.id), room);
    assert.equal(joined, room);

    const sub = start(["sub", "--data", join(dir, "data"), "--room", room, "--user", "native-sub", "--count", "5", "--timeout", "20"]);
    await until("sub to join", () => sub.lines.some((l) => l.event === "joined"));

    // Native pub -> page, in order, with pub's seq numbers.
    const sent = [pub(room, "native-pub", "one"), pub(room, "native-pub", "two"), pub(room, "native-pub", "low one", true)];
    const fromPub = await until("the page to get pub's messages", async () => {
      const got = (await events(p)).filter((e) => e.event === "message" && e.from === "native-pub");
      return got.length === 3 && got;
    });
    assert.deepEqual(fromPub.map((e) => e.seq), sent.map((s) => s.seq));
    assert.deepEqual(fromPub.map((e) => e.body), ["one", "two", "low one"]);
    assert.deepEqual(fromPub.map((e) => e.class), ["normal", "normal", "low"]);
    if (transport === "webtransport") {
      assert.equal(fromPub[2].datagram, true, "a low-priority message arrives as a WebTransport datagram");
    } else {
      assert.equal(fromPub[2].datagram, false, "a WebSocket has no datagram lane");
    }

    // Page -> native sub.
    const mine = await p.evaluate(async (room) => [
      await window.client.send(room, "from the page"),
      await window.client.send(room, "page bytes", { type: "note" }),
    ], room);
    assert.equal(await sub.exited, 0, `sub failed: ${sub.stderrText}`);
    const subMessages = sub.lines.filter((l) => l.event === "message");
    assert.equal(subMessages.length, 5);
    const pageMessages = (await events(p)).filter((e) => e.event === "message");
    // The same events in the same shape: sub's JSON lines and the page's objects, seq by seq.
    for (const line of subMessages) {
      const mirror = pageMessages.find((e) => e.seq === line.seq);
      assert.ok(mirror, `the page got seq ${line.seq}`);
      if (line.class === "low" && transport === "websocket") {
        assert.deepEqual({ ...mirror, datagram: line.datagram }, line);
      } else {
        assert.deepEqual(mirror, line);
      }
    }
    assert.deepEqual(subMessages.slice(3).map((l) => [l.seq, l.body, l.type]),
      [[mine[0].seq, "from the page", "chat"], [mine[1].seq, "page bytes", "note"]]);

    // A kick (a ban with notify) and a room destruction reach the page.
    await admin("POST", `/v1/rooms/${room}/bans`, { user_ids: [`web-${transport}`], minutes: 5 });
    await until("the kick", async () => (await events(p)).some((e) => e.event === "kicked" && e.room === room && e.reason === "banned"));
    const room2 = `${room}-2`;
    await admin("POST", "/v1/rooms", { id: room2 });
    await p.evaluate((r) => window.client.join(r), room2);
    await admin("DELETE", `/v1/rooms/${room2}`);
    await until("the destruction", async () => (await events(p)).some((e) => e.event === "room_destroyed" && e.room === room2 && e.reason === "manual"));
    await p.evaluate(() => window.client.close());
    await until("the close", async () => (await events(p)).some((e) => e.event === "closed"));
    await p.close();
  });
}

for (const transport of ["webtransport", "websocket"]) {
  test(`a page over ${transport} reconnects after a drop and resumes with the missed count`, async () => {
    const room = `resume-${transport}`;
    const user = `resumer-${transport}`;
    await admin("POST", "/v1/rooms", { id: room });
    const token = run(["token", "--user", user]).trim();
    const p = await browser.newPage();
    await p.goto(`http://127.0.0.1:${info.web.split(":").pop()}/`);
    await p.evaluate(async ({ token, transport, room }) => {
      const sdk = await import("/roomcast.js");
      window.states = [];
      let calls = 0;
      // The second connect waits for the test: messages go out while the user is offline.
      window.gate = new Promise((r) => (window.release = r));
      const client = await sdk.connect({
        transport,
        token: async () => (calls++ === 0 ? token : window.gate.then(() => token)),
        onstate: (s) => window.states.push(s),
      });
      window.client = client;
      window.events = [];
      (async () => { for await (const ev of client.events()) window.events.push(ev); })();
      await client.join(room);
    }, { token, transport, room });
    // Drop the connection under the SDK (as a network loss would; code 1 is not final).
    await p.evaluate(() => window.client.link.close(1, "dropped"));
    await until("the SDK to reconnect", () => p.evaluate(() => window.states.includes("reconnecting")));
    const missed = [pub(room, "native-pub", "while away 1"), pub(room, "native-pub", "while away 2")];
    await p.evaluate(() => window.release());
    const resumed = await until("resumed", async () => (await events(p)).find((e) => e.event === "resumed"));
    assert.deepEqual(resumed, { event: "resumed", room, missed: 2, last_seq: missed[1].seq });
    assert.equal(await p.evaluate(() => window.client.transport), transport);
    // The resumed membership delivers again.
    const after = pub(room, "native-pub", "back");
    await until("a message after the resume", async () => (await events(p)).some((e) => e.seq === after.seq));
    await p.evaluate(() => window.client.close());
    await p.close();
  });
}

test("a page whose relay restarts resumes its room with what was published meanwhile", async () => {
  // A relay of its own, restarted on the same data folder and port (over WebSocket: the killed
  // relay's socket ends at once).
  const own = mkdtempSync(join(tmpdir(), "roomcast-restart-"));
  const data = join(own, "data");
  const file = join(data, "server.json");
  const serveOn = async (quic) => {
    writeFileSync(join(own, "config.toml"), `[server]\nquic = "${quic}"\nadmin = "127.0.0.1:0"\ndata = "${data}"\n`);
    rmSync(file, { force: true });
    const child = start(["serve", "--config", join(own, "config.toml")]);
    const at = await until("server.json", () => existsSync(file) && JSON.parse(readFileSync(file, "utf8")));
    return { child, at };
  };
  const cli = (args) => execFileSync(BIN, [...args, "--data", data], { encoding: "utf8", timeout: SAFETY_MS });
  const publish = (body) => JSON.parse(cli(["pub", "--room", "restart", "--user", "native-pub", body]));
  let relay = await serveOn("127.0.0.1:0");
  const key = readFileSync(join(data, "admin.key"), "utf8").trim();
  const made = await fetch(`http://${relay.at.admin}/v1/rooms`, {
    method: "POST", headers: { authorization: `Bearer ${key}` }, body: JSON.stringify({ id: "restart" }),
  });
  assert.equal(made.status, 201);
  const token = cli(["token", "--user", "restarted"]).trim();
  const web = relay.at.web.split(":").pop();
  const p = await browser.newPage();
  await p.goto(`http://127.0.0.1:${web}/`);
  await p.evaluate(async ({ token }) => {
    const sdk = await import("/roomcast.js");
    let calls = 0;
    // The reconnect waits for the test: messages go out on the restarted relay meanwhile.
    window.gate = new Promise((r) => (window.release = r));
    const client = await sdk.connect({
      transport: "websocket",
      token: async () => (calls++ === 0 ? token : window.gate.then(() => token)),
    });
    window.client = client;
    window.events = [];
    (async () => { for await (const ev of client.events()) window.events.push(ev); })();
    await client.join("restart");
  }, { token });
  const before = publish("before");
  await until("the first message", async () => (await events(p)).some((e) => e.seq === before.seq));
  relay.child.kill("SIGKILL");
  await relay.child.exited;
  relay = await serveOn(`127.0.0.1:${web}`);
  const meanwhile = [publish("meanwhile 1"), publish("meanwhile 2")];
  await p.evaluate(() => window.release());
  await until("the replay", async () => (await events(p)).some((e) => e.seq === meanwhile[1].seq));
  const after = (await events(p)).slice((await events(p)).findIndex((e) => e.seq === before.seq) + 1);
  const resumedAt = after.findIndex((e) => e.event === "resumed");
  assert.deepEqual(after[resumedAt], { event: "resumed", room: "restart", missed: 0, last_seq: meanwhile[1].seq });
  const seqs = after.filter((e) => e.event === "message").map((e) => e.seq);
  assert.deepEqual(seqs, meanwhile.map((m) => m.seq), JSON.stringify(after));
  assert.ok(after.findIndex((e) => e.event === "message") > resumedAt, JSON.stringify(after));
  await p.evaluate(() => window.client.close());
  await p.close();
  relay.child.kill("SIGTERM");
  await relay.child.exited;
  rmSync(own, { recursive: true, force: true });
});

test("the demo page, with transport auto, chats over WebTransport", async () => {
  const token = run(["token", "--user", "demo-user"]).trim();
  const d = await browser.newPage();
  await admin("POST", "/v1/rooms", { id: "demo" });
  const web = info.web.split(":").pop();
  await d.goto(`http://127.0.0.1:${web}/?room=demo&user=demo-user&token=${encodeURIComponent(token)}`);
  await d.click("#connect");
  await d.waitForSelector("#text:not([disabled])", { timeout: SAFETY_MS });
  assert.match(await d.textContent("#status"), /over webtransport as demo-user/);
  await d.fill("#text", "hello from the demo");
  await d.click("#send");
  pub("demo", "native-pub", "a low one", true);
  await d.waitForSelector("#log li.low", { timeout: SAFETY_MS });
  const items = await d.$$eval("#log li", (lis) => lis.map((li) => li.textContent));
  assert.ok(items.some((t) => /demo-user: hello from the demo/.test(t)), items.join("\n"));
  assert.match(await d.textContent("#members"), /demo-user/);
  if (process.env.SCREENSHOT) await d.screenshot({ path: process.env.SCREENSHOT });
  await d.close();
});
