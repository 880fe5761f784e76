// The demo page: join a room, chat, see its members; low-priority messages and gaps are marked.
import { connect } from "/roomcast.js";

const $ = (id) => document.getElementById(id);
const log = $("log");
let client = null;
let room = null;
let refresh = null;
const members = new Set();

const params = new URLSearchParams(location.search);
for (const key of ["room", "user", "token", "transport"]) {
  if (params.has(key)) $(key).value = params.get(key);
}

function line(text, cls) {
  const li = document.createElement("li");
  li.textContent = text;
  if (cls) li.className = cls;
  log.append(li);
  log.scrollTop = log.scrollHeight;
  return li;
}

function showMembers(list, count) {
  members.clear();
  for (const m of list) members.add(m);
  render(count);
}

function render(count) {
  const ul = $("members");
  ul.replaceChildren(...[...members].sort().map((m) => {
    const li = document.createElement("li");
    li.textContent = m;
    return li;
  }));
  $("count").textContent = `(${count ?? members.size})`;
}

function setConnected(on) {
  for (const id of ["text", "low", "send"]) $(id).disabled = !on;
}

async function pump(c) {
  for await (const ev of c.events()) {
    switch (ev.event) {
      case "message": {
        const body = ev.body ?? `(${ev.body_b64.length} bytes of binary)`;
        const li = line(`[${ev.seq}] ${ev.from || "system"}: ${body}`, ev.class === "low" ? "low" : "");
        li.dataset.seq = ev.seq;
        li.dataset.class = ev.class;
        li.dataset.datagram = ev.datagram;
        break;
      }
      case "gap":
        line(`… ${ev.normal} messages and ${ev.low} low-priority ones skipped (this connection fell behind)`, "gap");
        break;
      case "kicked":
        line(`removed from ${ev.room}: ${ev.reason}`, "system");
        break;
      case "room_destroyed":
        line(`room ${ev.room} is gone (${ev.reason})`, "system");
        break;
      case "resumed":
        line(`reconnected to ${ev.room}; ${ev.missed} messages went out meanwhile`, "system");
        break;
      case "notice": {
        const [kind] = Object.keys(ev.notice);
        const n = ev.notice[kind];
        if (kind === "MemberJoined") { members.add(n.user); render(); }
        else if (kind === "MemberLeft") { members.delete(n.user); render(); }
        else if (kind === "MemberCount") render(n.count);
        line(`${kind} ${JSON.stringify(n)}`, "system");
        break;
      }
      case "closed":
        line(`connection closed: ${ev.reason}`, "error");
        setConnected(false);
        break;
    }
  }
}

$("join").addEventListener("submit", async (e) => {
  e.preventDefault();
  if (client) { client.close(); client = null; clearInterval(refresh); }
  const user = $("user").value.trim();
  room = $("room").value.trim();
  const token = $("token").value.trim() || `dev:${user}`;
  $("status").textContent = "connecting…";
  try {
    client = await connect({
      token,
      transport: $("transport").value,
      onstate: (s) => { $("status").textContent = `${s} over ${client ? client.transport : "…"} as ${user}`; },
    });
    const info = await client.join(room, { history: 20 });
    $("status").textContent = `connected over ${client.transport} as ${client.user}`;
    line(`joined ${room} (${info.room.member_count} members, last seq ${info.last_seq})`, "system");
    for (const h of info.history) {
      const m = h.message;
      const text = h.recalled ? "(recalled)" : new TextDecoder().decode(m.body);
      line(`[${m.seq}] ${m.from || "system"}: ${text}`, m.class === "Low" ? "low" : "");
    }
    showMembers(info.room.members, info.room.member_count);
    setConnected(true);
    refresh = setInterval(async () => {
      try { const r = await client.roomInfo(room); showMembers(r.members, r.member_count); } catch {}
    }, 5000);
    pump(client);
  } catch (err) {
    $("status").textContent = "not connected";
    line(`could not join: ${err.message}${err.code === "UNAUTHORIZED" ? " (paste a token from `roomcast token --user " + user + "`)" : ""}`, "error");
  }
});

$("say").addEventListener("submit", async (e) => {
  e.preventDefault();
  const text = $("text").value;
  if (!text || !client) return;
  $("text").value = "";
  try {
    await client.send(room, text, { low: $("low").checked });
  } catch (err) {
    line(`not sent: ${err.message}`, "error");
  }
});
