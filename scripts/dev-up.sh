#!/usr/bin/env bash
# Makes sure a redis-server answers on ${REDIS_ADDR:-127.0.0.1:6379}: uses the
# one running, else starts one (installing it with apt when missing and root).
set -euo pipefail
addr=${REDIS_ADDR:-127.0.0.1:6379}
host=${addr%:*}; port=${addr##*:}

ping() { (exec 3<>"/dev/tcp/$host/$port" && printf 'PING\r\n' >&3 && head -c 5 <&3 | grep -q PONG) 2>/dev/null; }

if ping; then echo "redis: answering on $addr"; exit 0; fi
if ! command -v redis-server >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "redis: installing redis-server with apt"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  else
    echo "redis-server is not installed: run 'sudo apt-get install redis-server' (or start Redis on $addr)" >&2
    exit 1
  fi
fi
dir=${REDIS_DIR:-./data/redis}
mkdir -p "$dir"
echo "redis: starting redis-server on $addr (data in $dir, AOF on)"
redis-server --daemonize yes --bind "$host" --port "$port" --dir "$(cd "$dir" && pwd)" \
  --appendonly yes --appendfsync everysec --save "" --logfile redis.log
for _ in $(seq 1 50); do ping && exit 0; sleep 0.1; done
echo "redis-server did not answer on $addr within 5s; see $dir/redis.log" >&2
exit 1
