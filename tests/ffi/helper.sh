#!/usr/bin/env bash
# What the FFI test programs ask of the outside world, against the relay that run.sh started:
# the native `roomcast` CLI (token, pub) and the admin API (curl). Prints results on stdout,
# exits non-zero (with the reason on stderr) when a step fails.
#   helper.sh token USER              a client token for USER
#   helper.sh room ROOM               create ROOM
#   helper.sh pub ROOM USER BODY      `roomcast pub` one normal message
#   helper.sh publow ROOM USER BODY   `roomcast pub --low` one low-priority message
#   helper.sh ban ROOM USER           ban USER from ROOM for 5 minutes
#   helper.sh destroy ROOM            destroy ROOM
#   helper.sh flood ROOM N            N low-priority admin messages "f1".."fN" to ROOM
set -euo pipefail
: "${RC_BIN:?}" "${RC_DATA:?}" "${RC_ADMIN:?}" "${RC_SERVER:?}"
key=$(cat "$RC_DATA/admin.key")
api() { # METHOD PATH [JSON] -> body; fails unless 2xx
  local out code
  out=$(curl -sS -o /dev/stdout -w '\n%{http_code}' -X "$1" -H "Authorization: Bearer $key" \
    -H 'Content-Type: application/json' "http://$RC_ADMIN$2" ${3:+-d "$3"})
  code=${out##*$'\n'}
  case "$code" in 2*) ;; *) echo "helper: $1 $2 -> $code ${out%$'\n'*}" >&2; exit 1 ;; esac
}
cmd=$1; shift
case "$cmd" in
  token) "$RC_BIN" token --data "$RC_DATA" --user "$1" ;;
  room) api POST /v1/rooms "{\"id\":\"$1\"}" ;;
  pub) "$RC_BIN" pub --data "$RC_DATA" --server "$RC_SERVER" --room "$1" --user "$2" "$3" >/dev/null ;;
  publow) "$RC_BIN" pub --data "$RC_DATA" --server "$RC_SERVER" --room "$1" --user "$2" --low "$3" >/dev/null ;;
  ban) api POST "/v1/rooms/$1/bans" "{\"user_ids\":[\"$2\"],\"minutes\":5,\"notify\":false}" ;;
  destroy) api DELETE "/v1/rooms/$1" ;;
  flood)
    for i in $(seq 1 "$2"); do
      api POST "/v1/rooms/$1/messages" "{\"from\":\"flood\",\"type\":\"chat\",\"body\":\"f$i\",\"low\":true}"
    done ;;
  *) echo "helper: unknown command $cmd" >&2; exit 2 ;;
esac
