// The FFI flow test in C++17, the way an Unreal module would wrap roomcast.h: RAII owners for
// the client and its events, std::string views of rc_str. Same flow as flow.c, against the
// relay run.sh started (RC_SERVER, RC_CA, RC_HELPER). The first failed check exits 1.
#include "roomcast.h"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <fstream>
#include <sstream>
#include <string>
#include <utility>

static int passed = 0;

#define CHECK(cond, what)                                                               \
  do {                                                                                  \
    if (!(cond)) {                                                                      \
      std::fprintf(stderr, "FAIL flow.cpp:%d: %s\n  %s\n  last error: %s\n", __LINE__, \
                   #cond, std::string(what).c_str(), rc_last_error_message());          \
      std::exit(1);                                                                     \
    }                                                                                   \
    passed++;                                                                           \
  } while (0)

static std::string str(rc_str s) { return std::string(s.ptr, s.len); }

/// Owns one event; frees it when it goes out of scope.
class Event {
 public:
  Event() : ev_{} {}
  Event(const Event &) = delete;
  Event &operator=(const Event &) = delete;
  Event(Event &&o) noexcept : ev_(o.ev_) { o.ev_ = rc_event{}; }
  Event &operator=(Event &&o) noexcept {
    std::swap(ev_, o.ev_);
    return *this;
  }
  ~Event() {
    if (ev_._handle != 0) rc_event_free(&ev_);
  }
  rc_event *raw() { return &ev_; }
  const rc_event *operator->() const { return &ev_; }

 private:
  rc_event ev_;
};

static std::string helper;
static std::string ca_pem;
static std::string server;

static void run(const std::string &args) {
  std::string cmd = "'" + helper + "' " + args;
  CHECK(std::system(cmd.c_str()) == 0, "helper failed: " + cmd);
}

static std::string token_for(const std::string &user) {
  std::string cmd = "'" + helper + "' token " + user;
  FILE *p = popen(cmd.c_str(), "r");
  CHECK(p != nullptr, cmd);
  char buf[1024] = {0};
  CHECK(std::fgets(buf, sizeof buf, p) != nullptr, cmd);
  CHECK(pclose(p) == 0, cmd);
  std::string t(buf);
  while (!t.empty() && (t.back() == '\n' || t.back() == '\r')) t.pop_back();
  return t;
}

/// Owns one client; frees it (closing the connection) when it goes out of scope.
class Client {
 public:
  explicit Client(const std::string &token, uint32_t event_queue = 0) {
    rc_config cfg;
    CHECK(rc_config_init(&cfg) == RC_OK, "rc_config_init");
    cfg.server = server.c_str();
    cfg.ca_pem = ca_pem.c_str();
    cfg.token = token.c_str();
    cfg.event_queue = event_queue;
    CHECK(rc_client_open(&cfg, &c_) == RC_OK, "rc_client_open");
  }
  Client(const Client &) = delete;
  Client &operator=(const Client &) = delete;
  ~Client() { rc_client_free(c_); }
  rc_client *raw() { return c_; }

  /// The next event (stashed ones first), within a minute.
  Event next() {
    if (!stash_.empty()) {
      Event e = std::move(stash_.front());
      stash_.pop_front();
      return e;
    }
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (std::chrono::steady_clock::now() < deadline) {
      Event e;
      rc_status s = rc_client_wait(c_, e.raw(), 200);
      if (s == RC_OK) return e;
      CHECK(s == RC_EMPTY, rc_status_name(s));
    }
    CHECK(false, "no event within a minute");
    return Event();
  }

  Event expect(rc_event_kind kind) {
    Event e = next();
    CHECK(e->kind == kind, "expected kind " + std::to_string(kind) + ", got " +
                               std::to_string(e->kind) + " " + str(e->text));
    return e;
  }

  /// The reply to `id`, with `want` status; other events are stashed in order.
  Event reply(uint64_t id, rc_status want) {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (std::chrono::steady_clock::now() < deadline) {
      Event e;
      rc_status s = rc_client_wait(c_, e.raw(), 200);
      if (s == RC_EMPTY) continue;
      CHECK(s == RC_OK, rc_status_name(s));
      if (e->kind == RC_EVENT_REPLY && e->request_id == id) {
        CHECK(e->status == want, std::string("expected ") + rc_status_name(want) + ", got " +
                                     rc_status_name(e->status) + ": " + str(e->text));
        if (want != RC_OK) CHECK(e->text.len > 0, "a refusal carries a message");
        return e;
      }
      stash_.push_back(std::move(e));
    }
    CHECK(false, "no reply within a minute");
    return Event();
  }

  uint64_t send(const std::string &room, const std::string &body, bool low = false) {
    uint64_t id = 0;
    CHECK(rc_client_send(c_, room.c_str(), "chat", reinterpret_cast<const uint8_t *>(body.data()),
                         body.size(), low, &id) == RC_OK,
          "send");
    return id;
  }

  uint64_t join(const std::string &room, int32_t history) {
    uint64_t id = 0;
    CHECK(rc_client_join(c_, room.c_str(), history, &id) == RC_OK, "join");
    return id;
  }

  void expect_message(const std::string &room, const std::string &from, const std::string &body,
                      uint64_t seq) {
    Event e = expect(RC_EVENT_MESSAGE);
    CHECK(str(e->message.room) == room && str(e->message.from) == from &&
              str(e->message.body) == body,
          "message " + str(e->message.from) + ": " + str(e->message.body));
    CHECK(seq == 0 || e->message.seq == seq, "seq " + std::to_string(e->message.seq));
  }

 private:
  rc_client *c_ = nullptr;
  std::deque<Event> stash_;
};

int main() {
  const char *s = std::getenv("RC_SERVER");
  const char *h = std::getenv("RC_HELPER");
  const char *ca = std::getenv("RC_CA");
  CHECK(s && h && ca, "RC_SERVER, RC_HELPER and RC_CA are set by run.sh");
  server = s;
  helper = h;
  std::ifstream f(ca);
  std::stringstream pem;
  pem << f.rdbuf();
  ca_pem = pem.str();
  CHECK(rc_abi_version() == RC_ABI_VERSION && rc_event_size() == sizeof(rc_event),
        "the header matches the library");

  run("room cpp-lobby");
  run("room cpp-other");
  run("room cpp-doomed");
  for (int i = 1; i <= 3; i++) run("pub cpp-lobby bob h" + std::to_string(i));
  {
    Client c(token_for("alice"));
    CHECK(str(c.expect(RC_EVENT_CONNECTED)->user) == "alice", "connected");

    // A join and a send made back to back reach the relay in that order.
    uint64_t join = c.join("cpp-lobby", 10);
    uint64_t first = c.send("cpp-lobby", "right after the join");
    {
      Event r = c.reply(join, RC_OK);
      CHECK(r->last_seq == 3 && r->messages_len == 3, "history of 3");
      for (size_t i = 0; i < 3; i++)
        CHECK(str(r->messages[i].body) == "h" + std::to_string(i + 1), "history in order");
      CHECK(str(r->info.id) == "cpp-lobby", "room info");
    }
    CHECK(c.reply(first, RC_OK)->seq == 4, "the send after the join is accepted");
    c.expect_message("cpp-lobby", "alice", "right after the join", 4);

    c.reply(c.join("cpp-missing", -1), RC_ROOM_NOT_FOUND);
    c.reply(c.send("cpp-other", "x"), RC_NOT_IN_ROOM);
    CHECK(c.reply(c.send("cpp-lobby", "low-cpp", true), RC_OK)->seq == 5, "low send");
    {
      Event m = c.expect(RC_EVENT_MESSAGE);
      CHECK(m->message.msg_class == RC_CLASS_LOW && str(m->message.body) == "low-cpp", "own low");
    }
    for (int i = 1; i <= 5; i++) run("pub cpp-lobby bob n" + std::to_string(i));
    for (int i = 1; i <= 5; i++) c.expect_message("cpp-lobby", "bob", "n" + std::to_string(i), 5 + i);
    run("publow cpp-lobby bob low-native");
    {
      Event m = c.expect(RC_EVENT_MESSAGE);
      CHECK(m->message.datagram && str(m->message.body) == "low-native", "a datagram");
    }
    c.reply(c.join("cpp-doomed", -1), RC_OK);
    run("destroy cpp-doomed");
    {
      Event d = c.expect(RC_EVENT_ROOM_DESTROYED);
      CHECK(str(d->room) == "cpp-doomed" && d->reason == RC_DESTROY_MANUAL, "destroyed");
    }
    run("ban cpp-lobby alice");
    for (int seen = 0; seen < 2; seen++) {  // KICKED and the BANNED notice, in either order
      Event k = c.next();
      if (k->kind == RC_EVENT_KICKED) {
        CHECK(str(k->room) == "cpp-lobby" && k->reason == RC_KICK_BANNED, "kicked");
      } else {
        CHECK(k->kind == RC_EVENT_BANNED && str(k->users[0]) == "alice", "told of the ban");
      }
    }
    // Misuse: each a status, none a crash.
    {
      Event e;
      CHECK(rc_client_poll(nullptr, e.raw()) == RC_INVALID_HANDLE, "null handle");
      CHECK(rc_client_join(c.raw(), "\xff", -1, nullptr) == RC_INVALID_UTF8, "invalid UTF-8");
      std::string big(1 << 20, 'x');
      c.reply(c.send("cpp-other", big), RC_TOO_LARGE);
    }
    CHECK(rc_client_close(c.raw()) == RC_OK, "close");
    CHECK(rc_client_ping(c.raw(), nullptr) == RC_CLOSED, "a request after close");
    CHECK(c.expect(RC_EVENT_CLOSED)->status == RC_OK, "CLOSED last");
    Event after;
    CHECK(rc_client_poll(c.raw(), after.raw()) == RC_CLOSED, "nothing after CLOSED");
  }
  {
    Client bad("not-a-token");
    Event closed = bad.expect(RC_EVENT_CLOSED);
    CHECK(closed->status == RC_UNAUTHORIZED && closed->text.len > 0, "unauthorized");
  }
  CHECK(rc_events_outstanding() == 0, "every event freed by its owner");
  std::printf("flow.cpp: %d passed, 0 failed\n", passed);
  return 0;
}
