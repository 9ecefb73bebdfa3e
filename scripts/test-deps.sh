#!/usr/bin/env bash
# Installs and starts what `make test` needs that a fresh Debian/Ubuntu
# machine may lack: redis-server (tests spawn their own on free ports) and a
# local PostgreSQL (tests create a fresh database per run). Idempotent.
set -euo pipefail
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else return 1; fi; }
apt_install() {
  command -v apt-get >/dev/null || { echo "test-deps: install $* yourself (no apt-get)" >&2; exit 1; }
  echo "test-deps: installing $*"
  as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

command -v redis-server >/dev/null || apt_install redis-server
command -v redis-cli >/dev/null || apt_install redis-tools

pg_up() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }
if ! command -v pg_isready >/dev/null; then apt_install postgresql postgresql-client; fi
if ! pg_up; then
  for v in $(ls /etc/postgresql 2>/dev/null); do
    echo "test-deps: starting PostgreSQL $v"
    as_root pg_ctlcluster --skip-systemctl-redirect "$v" main start || true
  done
  for _ in $(seq 1 50); do pg_up && break; sleep 0.2; done
fi
pg_up || { echo "test-deps: PostgreSQL is not answering on 127.0.0.1:5432" >&2; exit 1; }
# Tests connect as postgres over TCP (FLASHGATE_TEST_POSTGRES overrides). On a
# fresh Debian cluster local TCP needs a password: allow trust for loopback.
if ! psql "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable" -tAc 'select 1' >/dev/null 2>&1; then
  hba=$(as_root -u postgres psql -tAc 'show hba_file' 2>/dev/null || as_root su postgres -c "psql -tAc 'show hba_file'")
  echo "test-deps: allowing trust auth on loopback in $hba"
  as_root sed -i '1i host all postgres 127.0.0.1/32 trust\nhost all postgres ::1/128 trust' "$hba"
  as_root su postgres -c "psql -tAc 'select pg_reload_conf()'" >/dev/null
  sleep 0.5
fi
