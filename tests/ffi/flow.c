/* The FFI flow test in C99: every acceptance point of the C ABI against a real `roomcast serve`
 * (started by run.sh), with the native `roomcast pub` and the admin API driven through
 * helper.sh. Every check is an assertion: the first that fails prints what and exits 1.
 * Run under valgrind by run.sh. Environment: RC_SERVER, RC_CA (PEM file), RC_HELPER. */
#define _POSIX_C_SOURCE 200809L
#include "roomcast.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int passed = 0;

#define CHECK(cond, ...)                                                        \
  do {                                                                          \
    if (!(cond)) {                                                              \
      fprintf(stderr, "FAIL flow.c:%d: %s\n  ", __LINE__, #cond);               \
      fprintf(stderr, __VA_ARGS__);                                             \
      fprintf(stderr, "\n  last error: %s\n", rc_last_error_message());         \
      exit(1);                                                                  \
    }                                                                           \
    passed++;                                                                   \
  } while (0)

/* Valgrind runs this program about 30 times slower than native: a generous bound that only
 * turns a hang into a failure. */
#define WAIT_MS 60000

static const char *helper;
static char ca_pem[16384];
static const char *server;

static void run(const char *fmt, ...) {
  char cmd[1024];
  va_list ap;
  int n;
  va_start(ap, fmt);
  n = snprintf(cmd, sizeof cmd, "'%s' ", helper);
  vsnprintf(cmd + n, sizeof cmd - (size_t)n, fmt, ap);
  va_end(ap);
  CHECK(system(cmd) == 0, "helper failed: %s", cmd);
}

static void token_for(const char *user, char *out, size_t cap) {
  char cmd[512];
  FILE *p;
  size_t n;
  snprintf(cmd, sizeof cmd, "'%s' token %s", helper, user);
  p = popen(cmd, "r");
  CHECK(p != NULL, "popen %s", cmd);
  CHECK(fgets(out, (int)cap, p) != NULL, "no token from %s", cmd);
  CHECK(pclose(p) == 0, "%s failed", cmd);
  n = strlen(out);
  while (n > 0 && (out[n - 1] == '\n' || out[n - 1] == '\r')) out[--n] = 0;
}

static int str_is(rc_str s, const char *want) {
  return s.ptr != NULL && s.len == strlen(want) && memcmp(s.ptr, want, s.len) == 0 &&
         s.ptr[s.len] == 0;
}

static const char *kind_name(rc_event_kind k) {
  static const char *names[] = {"NONE", "CONNECTED", "REPLY", "MESSAGE", "GAP",
                                "ROOM_DESTROYED", "KICKED", "RESUMED", "MUTED", "UNMUTED",
                                "MUTE_ALL", "MUTE_ALL_LIFTED", "BANNED", "UNBANNED",
                                "MEMBER_JOINED", "MEMBER_LEFT", "MEMBER_COUNT", "RECALLED",
                                "ATTRIBUTE_CHANGED", "ATTRIBUTE_REMOVED", "CLOSED",
                                "RECONNECTED", "RESUME_FAILED"};
  return k <= RC_EVENT_RESUME_FAILED ? names[k] : "?";
}

/* Events taken while waiting for a reply, handed out first by next_event. */
static rc_event stash[64];
static int stashed = 0;

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

/* The next event (stashed ones first), waiting up to WAIT_MS. */
static void next_event(rc_client *c, rc_event *ev) {
  double deadline = now_ms() + WAIT_MS;
  rc_status s;
  if (stashed > 0) {
    *ev = stash[0];
    memmove(stash, stash + 1, sizeof(rc_event) * (size_t)(--stashed));
    return;
  }
  do {
    s = rc_client_wait(c, ev, 200);
    if (s == RC_OK) return;
    CHECK(s == RC_EMPTY, "rc_client_wait: %s", rc_status_name(s));
  } while (now_ms() < deadline);
  CHECK(0, "no event within %d ms", WAIT_MS);
}

static void expect_event(rc_client *c, rc_event *ev, rc_event_kind kind) {
  next_event(c, ev);
  CHECK(ev->kind == kind, "expected %s, got %s (status %s, text %.*s)", kind_name(kind),
        kind_name(ev->kind), rc_status_name(ev->status), (int)ev->text.len, ev->text.ptr);
}

/* Waits for the reply to `id`; other events are stashed in order for next_event. */
static void wait_reply(rc_client *c, uint64_t id, rc_event *ev) {
  double deadline = now_ms() + WAIT_MS;
  do {
    rc_status s = rc_client_wait(c, ev, 200);
    if (s == RC_OK) {
      if (ev->kind == RC_EVENT_REPLY && ev->request_id == id) return;
      CHECK(stashed < 64, "too many events while waiting for a reply");
      stash[stashed++] = *ev;
    } else {
      CHECK(s == RC_EMPTY, "rc_client_wait: %s", rc_status_name(s));
    }
  } while (now_ms() < deadline);
  CHECK(0, "no reply to request %llu within %d ms", (unsigned long long)id, WAIT_MS);
}

static void expect_reply(rc_client *c, uint64_t id, rc_status want, rc_event *ev) {
  wait_reply(c, id, ev);
  CHECK(ev->status == want, "request %llu: expected %s, got %s: %.*s", (unsigned long long)id,
        rc_status_name(want), rc_status_name(ev->status), (int)ev->text.len, ev->text.ptr);
  if (want != RC_OK) {
    CHECK(ev->text.len > 0, "a refusal carries a message");
  }
}

static void free_event(rc_event *ev) {
  rc_status s = rc_event_free(ev);
  CHECK(s == RC_OK, "rc_event_free: %s", rc_status_name(s));
}

static rc_client *open_client(const char *token, uint32_t event_queue) {
  rc_config cfg;
  rc_client *c = NULL;
  rc_status s;
  CHECK(rc_config_init(&cfg) == RC_OK, "rc_config_init");
  cfg.server = server;
  cfg.ca_pem = ca_pem;
  cfg.token = token;
  cfg.event_queue = event_queue;
  s = rc_client_open(&cfg, &c);
  CHECK(s == RC_OK && c != NULL, "rc_client_open: %s", rc_status_name(s));
  return c;
}

static void expect_message(rc_client *c, const char *room, const char *from, const char *body,
                           rc_event *ev) {
  expect_event(c, ev, RC_EVENT_MESSAGE);
  CHECK(str_is(ev->message.room, room) && str_is(ev->room, room), "room %.*s",
        (int)ev->message.room.len, ev->message.room.ptr);
  CHECK(str_is(ev->message.from, from), "from %.*s", (int)ev->message.from.len,
        ev->message.from.ptr);
  CHECK(str_is(ev->message.body, body), "expected body %s, got %.*s", body,
        (int)ev->message.body.len, ev->message.body.ptr);
}

/* The other requests: room info, attributes (and their events), recall, history, leave. */
static void other_requests(rc_client *c) {
  rc_event ev;
  uint64_t id, version, seq;
  rc_key_value kv;
  const char *keys[1] = {"score"};
  run("room c-attrs");
  CHECK(rc_client_join(c, "c-attrs", -1, &id) == RC_OK, "join c-attrs");
  expect_reply(c, id, RC_OK, &ev);
  free_event(&ev);

  CHECK(rc_client_room_info(c, "c-attrs", &id) == RC_OK, "room info");
  expect_reply(c, id, RC_OK, &ev);
  CHECK(ev.request_kind == RC_REQUEST_ROOM_INFO && str_is(ev.info.id, "c-attrs") &&
            ev.info.member_count == 1 && ev.info.members_len == 1 &&
            str_is(ev.info.members[0], "alice") && !ev.info.mute_all,
        "info of %s: %llu members", ev.info.id.ptr, (unsigned long long)ev.info.member_count);
  free_event(&ev);

  kv.key = "score";
  kv.value = "3:1";
  CHECK(rc_client_set_attributes(c, "c-attrs", &kv, 1, false, false, &id) == RC_OK, "set");
  expect_reply(c, id, RC_OK, &ev);
  CHECK(ev.results_len == 1 && str_is(ev.results[0].key, "score") &&
            ev.results[0].status == RC_OK && ev.version > 0,
        "set results: %zu", ev.results_len);
  version = ev.version;
  free_event(&ev);
  expect_event(c, &ev, RC_EVENT_ATTRIBUTE_CHANGED);
  CHECK(str_is(ev.room, "c-attrs") && str_is(ev.attribute.key, "score") &&
            str_is(ev.attribute.value, "3:1") && str_is(ev.attribute.owner, "alice") &&
            ev.version == version,
        "changed %s=%s v%llu", ev.attribute.key.ptr, ev.attribute.value.ptr,
        (unsigned long long)ev.version);
  free_event(&ev);

  CHECK(rc_client_get_attributes(c, "c-attrs", keys, 1, &id) == RC_OK, "get");
  expect_reply(c, id, RC_OK, &ev);
  CHECK(ev.attributes_len == 1 && str_is(ev.attributes[0].value, "3:1") &&
            str_is(ev.attributes[0].owner, "alice") && ev.attributes[0].set_ms > 0,
        "get: %zu attributes", ev.attributes_len);
  free_event(&ev);

  CHECK(rc_client_delete_attributes(c, "c-attrs", keys, 1, false, &id) == RC_OK, "delete");
  expect_reply(c, id, RC_OK, &ev);
  CHECK(ev.results_len == 1 && ev.results[0].status == RC_OK, "deleted");
  free_event(&ev);
  expect_event(c, &ev, RC_EVENT_ATTRIBUTE_REMOVED);
  CHECK(str_is(ev.attribute.key, "score") && !ev.attribute.auto_delete, "removed %s",
        ev.attribute.key.ptr);
  free_event(&ev);
  CHECK(rc_client_delete_attributes(c, "c-attrs", keys, 1, false, &id) == RC_OK, "delete again");
  expect_reply(c, id, RC_OK, &ev);
  CHECK(ev.results_len == 1 && ev.results[0].status == RC_ATTR_NOT_FOUND &&
            ev.results[0].text.len > 0,
        "per-key refusal: %s", rc_status_name(ev.results[0].status));
  free_event(&ev);

  CHECK(rc_client_send(c, "c-attrs", "chat", (const uint8_t *)"oops", 4, false, &id) == RC_OK,
        "send");
  expect_reply(c, id, RC_OK, &ev);
  seq = ev.seq;
  free_event(&ev);
  expect_message(c, "c-attrs", "alice", "oops", &ev);
  free_event(&ev);
  CHECK(rc_client_recall(c, "c-attrs", seq, &id) == RC_OK, "recall");
  expect_reply(c, id, RC_OK, &ev);
  free_event(&ev);
  expect_event(c, &ev, RC_EVENT_RECALLED);
  CHECK(str_is(ev.room, "c-attrs") && ev.seq == seq, "recalled %llu",
        (unsigned long long)ev.seq);
  free_event(&ev);
  CHECK(rc_client_history(c, "c-attrs", 0, 10, &id) == RC_OK, "history");
  expect_reply(c, id, RC_OK, &ev);
  CHECK(ev.request_kind == RC_REQUEST_HISTORY && ev.messages_len == 1 &&
            ev.messages[0].seq == seq && ev.messages[0].recalled && ev.messages[0].body.len == 0,
        "history: %zu messages", ev.messages_len);
  free_event(&ev);

  CHECK(rc_client_leave(c, "c-attrs", &id) == RC_OK, "leave");
  expect_reply(c, id, RC_OK, &ev);
  CHECK(ev.request_kind == RC_REQUEST_LEAVE, "a leave reply");
  free_event(&ev);
  CHECK(rc_client_send(c, "c-attrs", "chat", (const uint8_t *)"x", 1, false, &id) == RC_OK,
        "send after leave");
  expect_reply(c, id, RC_NOT_IN_ROOM, &ev);
  free_event(&ev);
  printf("other requests: ok\n");
}

static void flow(void) {
  char alice[1024];
  rc_client *c;
  rc_event ev;
  uint64_t id, seq;
  int i;

  run("room c-lobby");
  run("room c-other");
  run("room c-doomed");
  for (i = 1; i <= 3; i++) run("pub c-lobby bob h%d", i);

  token_for("alice", alice, sizeof alice);
  c = open_client(alice, 0);
  expect_event(c, &ev, RC_EVENT_CONNECTED);
  CHECK(str_is(ev.user, "alice") && ev.conn_id > 0, "connected as %s", ev.user.ptr);
  free_event(&ev);

  /* join with history */
  CHECK(rc_client_join(c, "c-lobby", 10, &id) == RC_OK, "join");
  expect_reply(c, id, RC_OK, &ev);
  CHECK(ev.request_kind == RC_REQUEST_JOIN && str_is(ev.room, "c-lobby"), "a join reply");
  CHECK(str_is(ev.info.id, "c-lobby") && ev.info.member_count >= 1, "room info %s",
        ev.info.id.ptr);
  CHECK(ev.last_seq == 3 && ev.messages_len == 3, "last_seq %llu, %zu history",
        (unsigned long long)ev.last_seq, ev.messages_len);
  for (i = 0; i < 3; i++) {
    char want[8];
    snprintf(want, sizeof want, "h%d", i + 1);
    CHECK(str_is(ev.messages[i].body, want) && ev.messages[i].seq == (uint64_t)i + 1 &&
              str_is(ev.messages[i].from, "bob") && !ev.messages[i].recalled,
          "history[%d] = %s", i, ev.messages[i].body.ptr);
  }
  free_event(&ev);

  /* the relay's refusals, as status codes with messages */
  CHECK(rc_client_join(c, "c-missing", -1, &id) == RC_OK, "join missing");
  expect_reply(c, id, RC_ROOM_NOT_FOUND, &ev);
  CHECK(strstr(ev.text.ptr, "ROOM_NOT_FOUND") != NULL, "message %s", ev.text.ptr);
  free_event(&ev);
  CHECK(rc_client_send(c, "c-other", "chat", (const uint8_t *)"x", 1, false, &id) == RC_OK,
        "send to a room not joined");
  expect_reply(c, id, RC_NOT_IN_ROOM, &ev);
  free_event(&ev);

  /* normal and low sends: replies with seq, and the client's own copies */
  CHECK(rc_client_send(c, "c-lobby", "chat", (const uint8_t *)"from-c", 6, false, &id) == RC_OK,
        "send");
  expect_reply(c, id, RC_OK, &ev);
  CHECK(ev.request_kind == RC_REQUEST_SEND && ev.seq == 4 && ev.ts_ms > 0, "seq %llu",
        (unsigned long long)ev.seq);
  free_event(&ev);
  expect_message(c, "c-lobby", "alice", "from-c", &ev);
  CHECK(ev.message.seq == 4 && ev.message.msg_class == RC_CLASS_NORMAL && !ev.message.datagram,
        "normal message");
  free_event(&ev);
  CHECK(rc_client_send(c, "c-lobby", "chat", (const uint8_t *)"low-c", 5, true, &id) == RC_OK,
        "low send");
  expect_reply(c, id, RC_OK, &ev);
  CHECK(ev.seq == 5, "seq %llu", (unsigned long long)ev.seq);
  free_event(&ev);
  expect_message(c, "c-lobby", "alice", "low-c", &ev);
  CHECK(ev.message.msg_class == RC_CLASS_LOW, "class %u", ev.message.msg_class);
  free_event(&ev);

  /* every message of a native `roomcast pub`, in order */
  for (i = 1; i <= 5; i++) run("pub c-lobby bob n%d", i);
  for (i = 1, seq = 6; i <= 5; i++, seq++) {
    char want[8];
    snprintf(want, sizeof want, "n%d", i);
    expect_message(c, "c-lobby", "bob", want, &ev);
    CHECK(ev.message.seq == seq && ev.message.ts_ms > 0, "seq %llu, want %llu",
          (unsigned long long)ev.message.seq, (unsigned long long)seq);
    free_event(&ev);
  }
  /* a low message arrives as a datagram */
  run("publow c-lobby bob low-native");
  expect_message(c, "c-lobby", "bob", "low-native", &ev);
  CHECK(ev.message.datagram && ev.message.msg_class == RC_CLASS_LOW, "datagram %d class %u",
        ev.message.datagram, ev.message.msg_class);
  free_event(&ev);

  /* RoomDestroyed */
  CHECK(rc_client_join(c, "c-doomed", -1, &id) == RC_OK, "join c-doomed");
  expect_reply(c, id, RC_OK, &ev);
  free_event(&ev);
  run("destroy c-doomed");
  expect_event(c, &ev, RC_EVENT_ROOM_DESTROYED);
  CHECK(str_is(ev.room, "c-doomed") && ev.reason == RC_DESTROY_MANUAL, "destroyed %s",
        ev.room.ptr);
  free_event(&ev);

  /* Kicked after a ban (the banned user is also told of the ban itself, in either order) */
  run("ban c-lobby alice");
  {
    int kicked = 0, told = 0;
    while (!(kicked && told)) {
      next_event(c, &ev);
      if (ev.kind == RC_EVENT_KICKED) {
        CHECK(!kicked && str_is(ev.room, "c-lobby") && ev.reason == RC_KICK_BANNED,
              "kicked from %s", ev.room.ptr);
        kicked = 1;
      } else {
        CHECK(ev.kind == RC_EVENT_BANNED && !told, "expected KICKED or BANNED, got %s",
              kind_name(ev.kind));
        CHECK(str_is(ev.room, "c-lobby") && ev.users_len == 1 && str_is(ev.users[0], "alice") &&
                  ev.until_ms > 0,
              "banned %zu users", ev.users_len);
        told = 1;
      }
      free_event(&ev);
    }
  }
  CHECK(rc_client_join(c, "c-lobby", -1, &id) == RC_OK, "rejoin");
  expect_reply(c, id, RC_BANNED, &ev);
  free_event(&ev);

  other_requests(c);

  /* a 1 MiB body: refused before it is sent, and the connection lives on */
  {
    size_t big = 1u << 20;
    uint8_t *body = calloc(big, 1);
    CHECK(body != NULL, "calloc");
    CHECK(rc_client_send(c, "c-other", "chat", body, big, false, &id) == RC_OK, "send 1 MiB");
    free(body);
    expect_reply(c, id, RC_TOO_LARGE, &ev);
    free_event(&ev);
    CHECK(rc_client_ping(c, &id) == RC_OK, "ping");
    expect_reply(c, id, RC_OK, &ev);
    free_event(&ev);
  }

  /* close: requests after it are refused, CLOSED is the last event */
  CHECK(rc_client_close(c) == RC_OK, "close");
  CHECK(rc_client_close(c) == RC_CLOSED, "a second close");
  CHECK(rc_client_ping(c, &id) == RC_CLOSED && id == 0, "a request after close");
  CHECK(strlen(rc_last_error_message()) > 0, "with a message");
  expect_event(c, &ev, RC_EVENT_CLOSED);
  CHECK(ev.status == RC_OK, "closed by the application: %s", rc_status_name(ev.status));
  free_event(&ev);
  CHECK(rc_client_poll(c, &ev) == RC_CLOSED && ev.kind == RC_EVENT_NONE, "poll after CLOSED");
  CHECK(rc_client_wait(c, &ev, 5000) == RC_CLOSED, "wait after CLOSED returns at once");
  CHECK(rc_client_free(c) == RC_OK, "free");
  CHECK(rc_client_free(c) == RC_INVALID_HANDLE, "a second free");
  CHECK(rc_client_poll(c, &ev) == RC_INVALID_HANDLE, "poll after free");
  printf("flow: ok\n");
}

static void unauthorized(void) {
  rc_client *c = open_client("not-a-token", 0);
  rc_event ev;
  uint64_t id;
  /* A request made while connecting is answered with the connect's failure, before CLOSED. */
  CHECK(rc_client_ping(c, &id) == RC_OK, "ping while connecting");
  expect_event(c, &ev, RC_EVENT_REPLY);
  CHECK(ev.request_id == id && ev.status == RC_UNAUTHORIZED, "reply %s",
        rc_status_name(ev.status));
  free_event(&ev);
  expect_event(c, &ev, RC_EVENT_CLOSED);
  CHECK(ev.status == RC_UNAUTHORIZED && ev.close_code == RC_CLOSE_UNAUTHORIZED, "%s",
        rc_status_name(ev.status));
  CHECK(strstr(ev.text.ptr, "UNAUTHORIZED") != NULL, "message: %s", ev.text.ptr);
  free_event(&ev);
  CHECK(rc_client_join(c, "c-lobby", -1, &id) == RC_CLOSED, "a request after CLOSED");
  CHECK(rc_client_free(c) == RC_OK, "free");
  printf("unauthorized: ok\n");
}

/* The event queue's bound: low datagrams that find it full are dropped, counted and reported
 * as a Gap; none goes missing silently. */
static void overflow(void) {
  char carol[1024];
  rc_client *c;
  rc_event ev;
  uint64_t id, got = 0, gaps = 0, lost = 0;
  const uint64_t sent = 30;
  double deadline;
  run("room c-flood");
  token_for("carol", carol, sizeof carol);
  c = open_client(carol, 4);
  expect_event(c, &ev, RC_EVENT_CONNECTED);
  free_event(&ev);
  CHECK(rc_client_join(c, "c-flood", -1, &id) == RC_OK, "join");
  expect_reply(c, id, RC_OK, &ev);
  free_event(&ev);
  run("flood c-flood %d", (int)sent); /* not polling meanwhile: the queue holds 4 */
  deadline = now_ms() + WAIT_MS;
  while (got + lost < sent && now_ms() < deadline) {
    if (rc_client_wait(c, &ev, 200) != RC_OK) continue;
    if (ev.kind == RC_EVENT_MESSAGE) {
      CHECK(ev.message.msg_class == RC_CLASS_LOW, "a flood message is low");
      got++;
    } else {
      CHECK(ev.kind == RC_EVENT_GAP && str_is(ev.room, "c-flood"), "got %s",
            kind_name(ev.kind));
      gaps++;
      lost += ev.low + ev.normal;
    }
    free_event(&ev);
  }
  CHECK(got + lost == sent, "received %llu + reported lost %llu != sent %llu",
        (unsigned long long)got, (unsigned long long)lost, (unsigned long long)sent);
  CHECK(gaps > 0 && lost > 0, "a full queue of 4 drops some of %llu and says so",
        (unsigned long long)sent);
  CHECK(rc_client_free(c) == RC_OK, "free an open client");
  printf("overflow: %llu received, %llu reported in %llu gaps\n", (unsigned long long)got,
         (unsigned long long)lost, (unsigned long long)gaps);
}

static void misuse(void) {
  char dave[1024];
  rc_config cfg;
  rc_client *c = NULL;
  rc_event ev, copy;
  uint64_t id = 99;
  const char *bad_utf8 = "\xff\xfe";
  rc_key_value kv;

  CHECK(rc_abi_version() == RC_ABI_VERSION, "ABI version %u", rc_abi_version());
  CHECK(rc_event_size() == sizeof(rc_event) && rc_config_size() == sizeof(rc_config),
        "struct sizes agree with the header");
  CHECK(strcmp(rc_status_name(RC_ROOM_NOT_FOUND), "ROOM_NOT_FOUND") == 0, "status names");
  CHECK(strcmp(rc_status_name(12345), "UNKNOWN") == 0, "an unknown status");

  /* null and invalid handles */
  CHECK(rc_client_poll(NULL, &ev) == RC_INVALID_HANDLE && ev.kind == RC_EVENT_NONE, "null");
  CHECK(strstr(rc_last_error_message(), "null") != NULL, "%s", rc_last_error_message());
  CHECK(rc_client_poll((rc_client *)(uintptr_t)0xdeadbeef, &ev) == RC_INVALID_HANDLE, "made up");
  CHECK(rc_client_join(NULL, "r", -1, &id) == RC_INVALID_HANDLE && id == 0, "null client");
  CHECK(rc_client_send(NULL, "r", "chat", NULL, 0, false, NULL) == RC_INVALID_HANDLE, "send");
  CHECK(rc_client_close(NULL) == RC_INVALID_HANDLE && rc_client_free(NULL) == RC_INVALID_HANDLE,
        "close and free null");
  CHECK(rc_event_free(NULL) == RC_INVALID_ARGUMENT, "free a null event");
  CHECK(rc_config_init(NULL) == RC_INVALID_ARGUMENT, "init a null config");

  /* configs */
  CHECK(rc_client_open(NULL, &c) == RC_INVALID_ARGUMENT && c == NULL, "null config");
  memset(&cfg, 0, sizeof cfg);
  CHECK(rc_client_open(&cfg, &c) == RC_INVALID_ARGUMENT, "a config without rc_config_init");
  rc_config_init(&cfg);
  cfg.token = "t";
  CHECK(rc_client_open(&cfg, &c) == RC_INVALID_ARGUMENT, "no server");
  cfg.server = "no-port";
  CHECK(rc_client_open(&cfg, &c) == RC_INVALID_ARGUMENT, "no port");
  cfg.server = server;
  cfg.token = bad_utf8;
  CHECK(rc_client_open(&cfg, &c) == RC_INVALID_UTF8, "token not UTF-8");
  CHECK(rc_client_open(&cfg, NULL) == RC_INVALID_ARGUMENT, "null out");

  /* a CA that is not PEM, and the system roots (which do not hold the development CA) */
  cfg.token = "t";
  cfg.ca_pem = "not a pem";
  CHECK(rc_client_open(&cfg, &c) == RC_OK, "open starts");
  expect_event(c, &ev, RC_EVENT_CLOSED);
  CHECK(ev.status == RC_TLS, "bad CA: %s", rc_status_name(ev.status));
  free_event(&ev);
  rc_client_free(c);
  cfg.ca_pem = NULL;
  CHECK(rc_client_open(&cfg, &c) == RC_OK, "open with system roots");
  expect_event(c, &ev, RC_EVENT_CLOSED);
  CHECK(ev.status == RC_CONNECT || ev.status == RC_TLS, "system roots: %s %s",
        rc_status_name(ev.status), ev.text.ptr);
  free_event(&ev);
  rc_client_free(c);

  token_for("dave", dave, sizeof dave);
  c = open_client(dave, 0);
  expect_event(c, &ev, RC_EVENT_CONNECTED);

  /* double free of an event, and of a copy */
  copy = ev;
  free_event(&ev);
  CHECK(ev.kind == RC_EVENT_NONE && ev.user.len == 0, "a freed event is reset");
  CHECK(rc_event_free(&ev) == RC_INVALID_HANDLE, "double free");
  CHECK(rc_event_free(&copy) == RC_INVALID_HANDLE, "free of a freed copy");
  CHECK(strstr(rc_last_error_message(), "already freed") != NULL, "%s",
        rc_last_error_message());

  /* bad arguments */
  CHECK(rc_client_join(c, NULL, -1, &id) == RC_INVALID_ARGUMENT && id == 0, "null room");
  CHECK(rc_client_join(c, bad_utf8, -1, &id) == RC_INVALID_UTF8, "room not UTF-8");
  CHECK(rc_client_send(c, "r", bad_utf8, (const uint8_t *)"x", 1, false, &id) == RC_INVALID_UTF8,
        "type not UTF-8");
  CHECK(rc_client_send(c, "r", "chat", NULL, 5, false, &id) == RC_INVALID_ARGUMENT, "null body");
  CHECK(rc_client_send(c, "r", "chat", (const uint8_t *)"x", (size_t)1 << 40, false, &id) ==
            RC_TOO_LARGE,
        "a body length past any limit is refused unread");
  kv.key = "k";
  kv.value = bad_utf8;
  CHECK(rc_client_set_attributes(c, "r", &kv, 1, false, false, &id) == RC_INVALID_UTF8,
        "attribute value not UTF-8");
  CHECK(rc_client_set_attributes(c, "r", NULL, 2, false, false, &id) == RC_INVALID_ARGUMENT,
        "null entries");
  CHECK(rc_client_poll(c, NULL) == RC_INVALID_ARGUMENT, "null event");
  /* none of these made a request: the next event is the ping's reply */
  CHECK(rc_client_ping(c, &id) == RC_OK, "ping");
  expect_event(c, &ev, RC_EVENT_REPLY);
  CHECK(ev.request_id == id && ev.status == RC_OK, "only the ping was sent");
  free_event(&ev);
  CHECK(rc_client_free(c) == RC_OK, "free");
  printf("misuse: ok\n");
}

/* Runs `relay.sh ARGS` and reads its "QUIC ADMIN" line. */
static void relay(const char *args, char *quic, char *admin) {
  char cmd[1024], line[256];
  FILE *p;
  snprintf(cmd, sizeof cmd, "'%s' %s", getenv("RC_RELAY"), args);
  p = popen(cmd, "r");
  CHECK(p != NULL, "popen %s", cmd);
  CHECK(fgets(line, sizeof line, p) != NULL, "no addresses from %s", cmd);
  CHECK(pclose(p) == 0, "%s failed", cmd);
  CHECK(sscanf(line, "%63s %63s", quic, admin) == 2, "relay.sh printed %s", line);
}

/* Failover: a relay of its own (relay.sh) is SIGKILLed while the client is in a room, and
 * started again on the same data folder and port. The client (reconnect_for_ms) reconnects
 * to it, resumes the room with the exact `missed` (0: the message published after the
 * restart is in history, so the resume replays it), and then gets live traffic; its own
 * requests work on the new connection. The helper runs against this relay from here on. */
static void failover(void) {
  char dir[256], quic[64], admin[64], again[64], args[2048], path[600], tok[1024];
  static char pem[16384];
  rc_config cfg;
  rc_client *c = NULL;
  rc_event ev;
  uint64_t id, before, replayed;
  FILE *f;
  size_t n;
  CHECK(getenv("RC_RELAY") && getenv("RC_FO_DIR"), "RC_RELAY and RC_FO_DIR are set by run.sh");
  snprintf(dir, sizeof dir, "%s", getenv("RC_FO_DIR"));
  snprintf(args, sizeof args, "start '%s'", dir);
  relay(args, quic, admin);
  snprintf(path, sizeof path, "%s/data", dir);
  CHECK(setenv("RC_DATA", path, 1) == 0 && setenv("RC_SERVER", quic, 1) == 0 &&
            setenv("RC_ADMIN", admin, 1) == 0,
        "setenv");
  snprintf(path, sizeof path, "%s/data/ca.pem", dir);
  f = fopen(path, "rb");
  CHECK(f != NULL, "open %s", path);
  n = fread(pem, 1, sizeof pem - 1, f);
  fclose(f);
  pem[n] = 0;
  token_for("fran", tok, sizeof tok);
  run("room c-failover");

  CHECK(rc_config_init(&cfg) == RC_OK, "rc_config_init");
  CHECK(cfg.reconnect_for_ms == 0, "failover is off by default (%u)", cfg.reconnect_for_ms);
  cfg.server = quic;
  cfg.ca_pem = pem;
  cfg.token = tok;
  cfg.reconnect_for_ms = 60000;
  CHECK(rc_client_open(&cfg, &c) == RC_OK, "rc_client_open");
  expect_event(c, &ev, RC_EVENT_CONNECTED);
  CHECK(str_is(ev.user, "fran"), "user %s", ev.user.ptr);
  free_event(&ev);
  CHECK(rc_client_join(c, "c-failover", -1, &id) == RC_OK, "join");
  expect_reply(c, id, RC_OK, &ev);
  free_event(&ev);
  run("pub c-failover gus before-the-crash");
  expect_message(c, "c-failover", "gus", "before-the-crash", &ev);
  before = ev.message.seq;
  free_event(&ev);

  snprintf(args, sizeof args, "'%s' kill '%s'", getenv("RC_RELAY"), dir);
  CHECK(system(args) == 0, "%s", args);
  snprintf(args, sizeof args, "start '%s' %s", dir, quic);
  relay(args, again, admin);
  CHECK(strcmp(again, quic) == 0, "restarted on %s, not %s", again, quic);
  CHECK(setenv("RC_ADMIN", admin, 1) == 0, "setenv");
  /* Published on the restarted relay, before or after the client resumes: either way it comes
   * once, after RESUMED (replayed from history, or live). */
  run("pub c-failover gus after-the-restart");

  expect_event(c, &ev, RC_EVENT_RECONNECTED);
  CHECK(str_is(ev.text, quic), "reconnected to %.*s, expected %s", (int)ev.text.len, ev.text.ptr,
        quic);
  CHECK(ev.status == RC_OK, "status %s", rc_status_name(ev.status));
  free_event(&ev);
  expect_event(c, &ev, RC_EVENT_RESUMED);
  CHECK(str_is(ev.room, "c-failover"), "resumed %.*s", (int)ev.room.len, ev.room.ptr);
  CHECK(ev.missed == 0, "missed %llu: the restarted relay replays from history",
        (unsigned long long)ev.missed);
  CHECK(ev.last_seq >= before, "last_seq %llu < %llu", (unsigned long long)ev.last_seq,
        (unsigned long long)before);
  free_event(&ev);
  expect_message(c, "c-failover", "gus", "after-the-restart", &ev);
  replayed = ev.message.seq;
  CHECK(replayed > before, "seq %llu after %llu", (unsigned long long)replayed,
        (unsigned long long)before);
  free_event(&ev);

  /* Live traffic and this client's own requests on the new connection. */
  run("pub c-failover gus live-again");
  expect_message(c, "c-failover", "gus", "live-again", &ev);
  CHECK(ev.message.seq > replayed, "seq %llu", (unsigned long long)ev.message.seq);
  free_event(&ev);
  CHECK(rc_client_send(c, "c-failover", "chat", (const uint8_t *)"hi", 2, false, &id) == RC_OK,
        "send");
  expect_reply(c, id, RC_OK, &ev);
  CHECK(ev.seq > replayed, "sent as %llu", (unsigned long long)ev.seq);
  free_event(&ev);
  expect_message(c, "c-failover", "fran", "hi", &ev);
  free_event(&ev);

  /* Killed again and started without its store: the room is gone, the resume is refused, the
   * membership ends, and the client stays connected. */
  snprintf(args, sizeof args, "'%s' kill '%s' && '%s' forget '%s'", getenv("RC_RELAY"), dir,
           getenv("RC_RELAY"), dir);
  CHECK(system(args) == 0, "%s", args);
  snprintf(args, sizeof args, "start '%s' %s", dir, quic);
  relay(args, again, admin);
  CHECK(setenv("RC_ADMIN", admin, 1) == 0, "setenv");
  expect_event(c, &ev, RC_EVENT_RECONNECTED);
  CHECK(str_is(ev.text, quic), "reconnected to %.*s", (int)ev.text.len, ev.text.ptr);
  free_event(&ev);
  expect_event(c, &ev, RC_EVENT_RESUME_FAILED);
  CHECK(str_is(ev.room, "c-failover") && ev.status == RC_ROOM_NOT_FOUND && ev.text.len > 0,
        "resume failed: %s %.*s", rc_status_name(ev.status), (int)ev.text.len, ev.text.ptr);
  free_event(&ev);
  CHECK(rc_client_ping(c, &id) == RC_OK, "ping");
  expect_reply(c, id, RC_OK, &ev);
  free_event(&ev);

  CHECK(rc_client_close(c) == RC_OK, "close");
  expect_event(c, &ev, RC_EVENT_CLOSED);
  CHECK(ev.status == RC_OK, "closed with %s: %.*s", rc_status_name(ev.status), (int)ev.text.len,
        ev.text.ptr);
  free_event(&ev);
  CHECK(rc_client_free(c) == RC_OK, "free");
  printf("failover: ok\n");
}

int main(void) {
  FILE *f;
  size_t n;
  const char *ca_path = getenv("RC_CA");
  server = getenv("RC_SERVER");
  helper = getenv("RC_HELPER");
  CHECK(server && helper && ca_path, "RC_SERVER, RC_CA and RC_HELPER are set by run.sh");
  f = fopen(ca_path, "rb");
  CHECK(f != NULL, "open %s", ca_path);
  n = fread(ca_pem, 1, sizeof ca_pem - 1, f);
  fclose(f);
  ca_pem[n] = 0;

  misuse();
  unauthorized();
  flow();
  overflow();
  failover();
  CHECK(rc_events_outstanding() == 0, "%zu events not freed", rc_events_outstanding());
  printf("flow.c: %d passed, 0 failed\n", passed);
  return 0;
}
