#!/usr/bin/env bash
# Installs what `make test` needs that a fresh Debian/Ubuntu machine may lack:
# redis-server (tests spawn their own on free ports). Idempotent.
set -euo pipefail
if ! command -v redis-server >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "test-deps: installing redis-server"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  else
    echo "test-deps: redis-server missing; run: sudo apt-get install redis-server" >&2
    exit 1
  fi
fi
