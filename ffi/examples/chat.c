/* A terminal chat over the roomcast C ABI: joins a room, prints its events, sends each line
 * typed (until "/quit" or end of input). The loop is an engine's frame loop: every 16 ms it
 * polls stdin and then drains the client's events, never blocking on the network.
 *
 *   cc -std=c99 -I ffi/include ffi/examples/chat.c -L target/debug -lroomcast_ffi -o chat
 *   LD_LIBRARY_PATH=target/debug ./chat 127.0.0.1:7700 roomcast-data/ca.pem "$TOKEN" lobby
 *
 * (POSIX for stdin polling; on Windows, read the console from a thread of your own.) */
#define _POSIX_C_SOURCE 200809L
#include "roomcast.h"

#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char *read_file(const char *path) {
  FILE *f = fopen(path, "rb");
  char *buf;
  long n;
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  n = ftell(f);
  rewind(f);
  buf = malloc((size_t)n + 1);
  if (buf && fread(buf, 1, (size_t)n, f) == (size_t)n) {
    buf[n] = 0;
  } else {
    free(buf);
    buf = NULL;
  }
  fclose(f);
  return buf;
}

static int sends_in_flight = 0;

/* Prints one event; returns 0 once the client is closed. */
static int show(const rc_event *ev) {
  if (ev->kind == RC_EVENT_REPLY && ev->request_kind == RC_REQUEST_SEND) sends_in_flight--;
  switch (ev->kind) {
    case RC_EVENT_CONNECTED:
      printf("* connected as %s\n", ev->user.ptr);
      break;
    case RC_EVENT_REPLY:
      if (ev->status != RC_OK) {
        printf("* request %llu failed: %s\n", (unsigned long long)ev->request_id, ev->text.ptr);
      } else if (ev->request_kind == RC_REQUEST_JOIN) {
        size_t i;
        printf("* joined %s (%llu members)\n", ev->info.id.ptr,
               (unsigned long long)ev->info.member_count);
        for (i = 0; i < ev->messages_len; i++) {
          const rc_message *m = &ev->messages[i];
          printf("[%llu] %s: %.*s\n", (unsigned long long)m->seq, m->from.len ? m->from.ptr : "system",
                 (int)m->body.len, m->body.ptr);
        }
      }
      break;
    case RC_EVENT_MESSAGE:
      printf("[%llu] %s: %.*s\n", (unsigned long long)ev->message.seq,
             ev->message.from.len ? ev->message.from.ptr : "system", (int)ev->message.body.len,
             ev->message.body.ptr);
      break;
    case RC_EVENT_GAP:
      printf("* missed %llu low and %llu normal messages in %s\n", (unsigned long long)ev->low,
             (unsigned long long)ev->normal, ev->room.ptr);
      break;
    case RC_EVENT_KICKED:
      printf("* removed from %s\n", ev->room.ptr);
      break;
    case RC_EVENT_ROOM_DESTROYED:
      printf("* %s was destroyed\n", ev->room.ptr);
      break;
    case RC_EVENT_CLOSED:
      printf("* closed (%s): %s\n", rc_status_name(ev->status), ev->text.ptr);
      return 0;
    default:
      printf("* event %u in %s\n", (unsigned)ev->kind, ev->room.ptr);
  }
  fflush(stdout);
  return 1;
}

int main(int argc, char **argv) {
  rc_config cfg;
  rc_client *client;
  rc_event ev;
  char *ca;
  char line[4096];
  int open = 1, typing = 1, closing = 0;
  if (argc != 5) {
    fprintf(stderr, "usage: %s SERVER CA_PEM_FILE TOKEN ROOM\n", argv[0]);
    return 2;
  }
  ca = read_file(argv[2]);
  if (!ca) {
    fprintf(stderr, "cannot read %s\n", argv[2]);
    return 1;
  }
  rc_config_init(&cfg);
  cfg.server = argv[1];
  cfg.ca_pem = ca;
  cfg.token = argv[3];
  if (rc_client_open(&cfg, &client) != RC_OK) {
    fprintf(stderr, "open: %s\n", rc_last_error_message());
    free(ca);
    return 1;
  }
  free(ca); /* copied by rc_client_open */
  rc_client_join(client, argv[4], 10, NULL); /* sent once connected; the reply is an event */

  while (open) {
    struct pollfd in = {STDIN_FILENO, POLLIN, 0};
    /* one "frame": input, then every event that is ready */
    if (typing && poll(&in, 1, 16) > 0) {
      if (!fgets(line, sizeof line, stdin) || strncmp(line, "/quit", 5) == 0) {
        typing = 0; /* close once every line typed has its reply: none is lost */
      } else {
        size_t n = strcspn(line, "\r\n");
        if (n > 0) {
          if (rc_client_send(client, argv[4], "chat", (const uint8_t *)line, n, false, NULL) ==
              RC_OK) {
            sends_in_flight++;
          } else {
            printf("* not sent: %s\n", rc_last_error_message());
          }
        }
      }
    } else if (!typing) {
      if (sends_in_flight == 0 && !closing) {
        closing = 1;
        rc_client_close(client); /* CLOSED follows as the last event */
      }
      /* nothing to read any more: wait for the events instead of spinning */
      if (rc_client_wait(client, &ev, 100) == RC_OK) {
        open = show(&ev);
        rc_event_free(&ev);
      }
    }
    while (open && rc_client_poll(client, &ev) == RC_OK) {
      open = show(&ev);
      rc_event_free(&ev);
    }
  }
  rc_client_free(client);
  return 0;
}
