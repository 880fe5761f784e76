#!/usr/bin/env bash
# The C ABI's integration tests: builds libroomcast_ffi and the `roomcast` binary, checks that
# ffi/include/roomcast.h is what cbindgen generates, starts a real `roomcast serve` (embedded
# defaults, a temporary data folder, loopback), and runs against it:
#   flow.c    as C99 (-Wall -Wextra -Werror -pedantic) on the cdylib, under valgrind; its
#             failover test kills and restarts a second relay of its own (relay.sh)
#   flow.cpp  as C++17 (same warnings) on the cdylib
#   FlowTest.cs with ffi/csharp/RoomcastClient.cs, built with mcs and run with mono (its
#             failover test restarts a relay of its own too)
#   the examples: chat.c linked against the cdylib and against the staticlib, and Chat.cs, each
#   driven through one typed message that a native `roomcast sub` must receive
# Needs: cargo, cc/c++, curl, valgrind, mcs/mono, cbindgen (.ci/run installs them). A missing
# tool fails the run: nothing here is skipped.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
export CARGO_TERM_COLOR=never

missing() {
  echo "missing tool: $1 (.ci/run installs it)" >&2
  exit 1
}
have() { command -v "$1" >/dev/null 2>&1; }

echo "== ffi: build libroomcast_ffi and roomcast"
cargo build --locked -p roomcast-ffi --lib
cargo build --locked --bin roomcast
lib="$root/target/debug"
inc="$root/ffi/include"

echo "== ffi: roomcast.h is up to date"
have cbindgen || missing "cbindgen (header check)"
ffi/gen-header.sh --check

tmp=$(mktemp -d)
pid=""
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null
  for fo in "$tmp/fo" "$tmp/fo-cs"; do
    [ -s "$fo/pid" ] && kill -KILL "$(cat "$fo/pid")" 2>/dev/null
  done
  wait 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT

echo "== ffi: compile the C and C++ programs"
warn=(-Wall -Wextra -Werror -pedantic)
cc -std=c99 "${warn[@]}" -g -I "$inc" tests/ffi/flow.c -L "$lib" -lroomcast_ffi \
  -Wl,-rpath,"$lib" -o "$tmp/flow_c"
c++ -std=c++17 "${warn[@]}" -g -I "$inc" tests/ffi/flow.cpp -L "$lib" -lroomcast_ffi \
  -Wl,-rpath,"$lib" -o "$tmp/flow_cpp"
cc -std=c99 "${warn[@]}" -I "$inc" ffi/examples/chat.c -L "$lib" -lroomcast_ffi \
  -Wl,-rpath,"$lib" -o "$tmp/chat"
cc -std=c99 "${warn[@]}" -I "$inc" ffi/examples/chat.c "$lib/libroomcast_ffi.a" \
  -lpthread -ldl -lm -o "$tmp/chat_static"

echo "== ffi: start roomcast serve (embedded defaults, loopback, data in a temp folder)"
cat > "$tmp/ffi.toml" <<TOML
[server]
quic = "127.0.0.1:0"
admin = "127.0.0.1:0"
data = "$tmp/data"
TOML
RUST_LOG=warn target/debug/roomcast serve --config "$tmp/ffi.toml" 2> "$tmp/serve.log" &
pid=$!
for _ in $(seq 1 300); do [ -s "$tmp/data/server.json" ] && break; sleep 0.1; done
[ -s "$tmp/data/server.json" ] || { cat "$tmp/serve.log"; echo "server did not start" >&2; exit 1; }
json() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$tmp/data/server.json" "$1"; }
export RC_SERVER RC_ADMIN RC_DATA="$tmp/data" RC_BIN="$root/target/debug/roomcast"
RC_SERVER=$(json quic)
RC_ADMIN=$(json admin)
export RC_CA="$tmp/data/ca.pem" RC_HELPER="$root/tests/ffi/helper.sh"
export RC_RELAY="$root/tests/ffi/relay.sh" RC_FO_DIR="$tmp/fo"

echo "== ffi: C99 flow under valgrind"
have valgrind || missing "valgrind"
{
  # Leaks: definite and indirect ones fail the run. Memory still reachable at exit (the
  # registries' tables, the Rust runtime's thread-locals, glibc's) is not a leak and is not
  # reported. valgrind.supp explains its two suppressions (ring's AES-GCM tag).
  valgrind --quiet --error-exitcode=99 --leak-check=full --show-leak-kinds=definite,indirect \
    --errors-for-leak-kinds=definite,indirect --suppressions=tests/ffi/valgrind.supp \
    ${RC_VALGRIND_ARGS:-} "$tmp/flow_c"
}

echo "== ffi: C++17 flow"
"$tmp/flow_cpp"

echo "== ffi: C# (Mono) flow"
have mcs || missing "mcs (Debian mono-mcs)"
have mono || missing "mono (Debian mono-runtime)"
{
  mcs -nologo -warnaserror -out:"$tmp/FlowTest.exe" ffi/csharp/RoomcastClient.cs tests/ffi/FlowTest.cs
  mcs -nologo -warnaserror -out:"$tmp/Chat.exe" ffi/csharp/RoomcastClient.cs ffi/examples/Chat.cs
  LD_LIBRARY_PATH="$lib" mono --debug "$tmp/FlowTest.exe"
}

echo "== ffi: the C example sends what is typed (a native roomcast sub receives it)"
"$RC_HELPER" room example
tok=$("$RC_HELPER" token erin)
printf '#!/bin/sh\nLD_LIBRARY_PATH="%s" exec mono "%s" "$@"\n' "$lib" "$tmp/Chat.exe" > "$tmp/chat_cs"
chmod +x "$tmp/chat_cs"
examples=(chat chat_static chat_cs)
for bin in "${examples[@]}"; do
  "$RC_BIN" sub --data "$RC_DATA" --server "$RC_SERVER" --room example --user "watch-$bin" \
    --count 1 --timeout 60 > "$tmp/sub-$bin.out" &
  sub=$!
  for _ in $(seq 1 600); do grep -q joined "$tmp/sub-$bin.out" 2>/dev/null && break; sleep 0.1; done
  printf 'hello from %s\n/quit\n' "$bin" |
    timeout 60 "$tmp/$bin" "$RC_SERVER" "$RC_CA" "$tok" example > "$tmp/$bin.out"
  wait "$sub" || { cat "$tmp/$bin.out" "$tmp/sub-$bin.out"; echo "$bin: sub got nothing" >&2; exit 1; }
  grep -q "\"body\":\"hello from $bin\"" "$tmp/sub-$bin.out" ||
    { cat "$tmp/$bin.out" "$tmp/sub-$bin.out"; echo "$bin: wrong message" >&2; exit 1; }
  grep -q '^\* joined example' "$tmp/$bin.out" || { cat "$tmp/$bin.out"; exit 1; }
  grep -Eq '^\* closed \((OK|Ok)\)' "$tmp/$bin.out" || { cat "$tmp/$bin.out"; exit 1; }
done
echo "ffi: all passed"
