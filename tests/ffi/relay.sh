#!/usr/bin/env bash
# A relay of its own for flow.c's failover test, which kills it and starts it again on the same
# data folder and port. Needs RC_BIN (the `roomcast` binary).
#   relay.sh start DIR [QUIC]   start `roomcast serve` with its data in DIR/data, QUIC on QUIC
#                               ("127.0.0.1:0" unless given), admin on a free loopback port;
#                               once it serves, prints "QUIC ADMIN" (the bound addresses)
#   relay.sh kill DIR           SIGKILL it and return once it is gone
#   relay.sh forget DIR         delete its store (rooms, history), keeping its keys: a relay
#                               started after it knows none of the rooms
set -euo pipefail
: "${RC_BIN:?}"
cmd=$1 dir=$2
gone() { # PID: not running (or only a zombie nobody reaped: its sockets are closed)
  [ ! -e "/proc/$1" ] || [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" = Z ]
}
case "$cmd" in
  start)
    mkdir -p "$dir/data"
    rm -f "$dir/data/server.json"
    cat > "$dir/relay.toml" <<TOML
[server]
quic = "${3:-127.0.0.1:0}"
admin = "127.0.0.1:0"
data = "$dir/data"
TOML
    RUST_LOG=warn "$RC_BIN" serve --config "$dir/relay.toml" >> "$dir/serve.log" 2>&1 < /dev/null &
    pid=$!
    echo "$pid" > "$dir/pid"
    for _ in $(seq 1 600); do
      [ -s "$dir/data/server.json" ] && break
      gone "$pid" && break
      sleep 0.1
    done
    [ -s "$dir/data/server.json" ] || { cat "$dir/serve.log" >&2; echo "relay.sh: relay did not start" >&2; exit 1; }
    python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); print(j["quic"], j["admin"])' \
      "$dir/data/server.json" ;;
  kill)
    pid=$(cat "$dir/pid")
    kill -KILL "$pid"
    for _ in $(seq 1 600); do gone "$pid" && break; sleep 0.05; done
    gone "$pid" || { echo "relay.sh: relay $pid still runs" >&2; exit 1; }
    rm -f "$dir/pid" ;;
  forget)
    [ ! -e "$dir/pid" ] || { echo "relay.sh: kill the relay first" >&2; exit 1; }
    rm -f "$dir/data/roomcast.redb" ;;
  *) echo "relay.sh: unknown command $cmd" >&2; exit 2 ;;
esac
