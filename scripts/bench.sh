#!/usr/bin/env bash
# make bench: the local stack (a private redis-server, the gateway with
# embedded JetStream, synced ledger and the in-process sink into SQLite)
# plus a fasthttp hello-world, loaded the same way by flashbench on the same
# machine. Risk is on throughout: limit rules that honest traffic never
# reaches and a 10,000-entry blacklist, loaded through the admin API first.
# Prints the drop scenario with its oracle; granted claims/s vs hello req/s,
# the latency at half the claim peak and CPU per request of each process;
# then an overload run at 5 x the claim peak (BENCH_OVERLOAD=0 skips it).
# Exit non-zero if an oracle or threshold fails.
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${BENCH_DURATION:-10s}
CONNS=${BENCH_CONNECTIONS:-256}
work=$(mktemp -d)
port=${BENCH_REDIS_PORT:-6399}
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT

bash scripts/test-deps.sh
redis-server --daemonize yes --bind 127.0.0.1 --port "$port" --dir "$work" --save "" \
  --appendonly yes --appendfsync everysec --logfile redis.log --pidfile "$work/redis.pid"
secret=bench-secret-0123456789-0123456789-abcdef
token=bench-admin-token-0123456789
cat > "$work/gw.yaml" <<YAML
public_addr: 127.0.0.1:18080
admin_addr: 127.0.0.1:18081
data_dir: $work/gw
redis: {addrs: [127.0.0.1:$port]}
auth: {hs256_secret: $secret, trusted_proxies: [127.0.0.1]}
log: {level: warn}
admin: {tokens: {$token: admin}, pprof: true}
YAML
bin/flashgate serve --config "$work/gw.yaml" 2>"$work/gw.log" & gw_pid=$!; pids+=($gw_pid)
bin/flashbench hello --addr 127.0.0.1:18090 & hello_pid=$!; pids+=($hello_pid)
for _ in $(seq 1 100); do curl -sf http://127.0.0.1:18081/readyz >/dev/null 2>&1 && break; sleep 0.1; done
for _ in $(seq 1 50); do [ -s "$work/redis.pid" ] && break; sleep 0.1; done
redis_pid=$(cat "$work/redis.pid")
result=${BENCH_JSON:-bench-result.json}
export FLASHBENCH_COMMIT=$(git rev-parse HEAD 2>/dev/null || echo unknown)
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(go version | cut -d' ' -f3), commit $(git rev-parse --short HEAD 2>/dev/null || echo none)"
echo
echo "== risk rules and blacklist"
bin/flashbench risk --admin http://127.0.0.1:18081 --admin-token "$token" --rules "${BENCH_RULES:-bench}" --blacklist "${BENCH_BLACKLIST:-10000}"
echo
echo "== standard drop scenario (loadtest/standard-drop.yaml)"
bin/flashbench run --scenario "${BENCH_SCENARIO:-loadtest/standard-drop.yaml}" --url http://127.0.0.1:18080 --admin http://127.0.0.1:18081 \
  --admin-token "$token" --secret "$secret" --json "${BENCH_DROP_JSON:-flashbench-result.json}" --html "${BENCH_DROP_HTML:-flashbench-report.html}" || status=$?
echo
echo "== claims vs fasthttp hello-world"
bin/flashbench speed --url http://127.0.0.1:18080 --hello http://127.0.0.1:18090 --admin http://127.0.0.1:18081 \
  --admin-token "$token" --secret "$secret" --duration "$DUR" --connections "$CONNS" --json "$result" \
  --gateway-pid "$gw_pid" --redis-pid "$redis_pid" --hello-pid "$hello_pid"
if [ "${BENCH_OVERLOAD:-1}" != 0 ]; then
  echo
  echo "== overload: ${BENCH_OVERLOAD_FACTOR:-5} x the claim peak"
  bin/flashbench overload --url http://127.0.0.1:18080 --admin http://127.0.0.1:18081 --admin-token "$token" --secret "$secret" \
    --peak-from "$result" --factor "${BENCH_OVERLOAD_FACTOR:-5}" --duration "${BENCH_OVERLOAD_DURATION:-30s}" \
    --connections "${BENCH_OVERLOAD_CONNECTIONS:-2048}" --gateway-pid "$gw_pid" --json "$result" || status=$?
fi
exit "${status:-0}"
