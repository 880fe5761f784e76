#!/usr/bin/env bash
# Regenerates include/roomcast.h from the crate's source with cbindgen (the CLI: `cargo install
# cbindgen --locked`). `--check` fails, without writing, when the committed header is stale.
set -euo pipefail
cd "$(dirname "$0")"
out=include/roomcast.h
if [ "${1:-}" = "--check" ]; then
  tmp=$(mktemp)
  trap 'rm -f "$tmp"' EXIT
  cbindgen --config cbindgen.toml --crate roomcast-ffi --output "$tmp" --quiet .
  if ! diff -u "$out" "$tmp"; then
    echo "ffi/$out is out of date: run ffi/gen-header.sh and commit it" >&2
    exit 1
  fi
  echo "ffi/$out is up to date"
else
  cbindgen --config cbindgen.toml --crate roomcast-ffi --output "$out" --quiet .
  echo "wrote ffi/$out"
fi
