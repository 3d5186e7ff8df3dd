#!/usr/bin/env bash
# Compare one thread of tether-bench with one thread of wrk against nginx on
# loopback (see RESULTS.md, "Load generator vs wrk").
#
# usage: bench/scripts/vs-wrk.sh [ROUNDS] [DURATION] [CONNECTIONS] [PIPELINE]
#
# Starts nginx (one worker, `return 200 "ok"`, access_log off,
# keepalive_requests 1000000) pinned to CPU 0 on 127.0.0.1:$PORT (18090), then runs
# wrk and tether-bench alternately (A B A B ...) pinned to CPU 1 and prints each
# run and the medians: requests/s, client CPU time (perf stat task-clock, or
# bash's time when perf is missing) and client CPU microseconds per request. With
# PIPELINE > 1, wrk gets a Lua script that sends PIPELINE requests per batch.
# Needs: wrk, nginx, taskset, python3; run as root (nginx).
set -euo pipefail

ROUNDS=${1:-3}
DUR=${2:-10s}
CONNS=${3:-50}
PIPE=${4:-1}
PORT=${PORT:-18090}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
TB=${TB:-$ROOT/target/release/tether-bench}
NGINX=${NGINX:-/usr/sbin/nginx}
[ -x "$TB" ] || (cd "$ROOT" && cargo build --release -p tether-bench)

TMP=$(mktemp -d /tmp/vs-wrk.XXXXXX)
mkdir -p "$TMP/logs"
cat > "$TMP/nginx.conf" <<EOF
worker_processes 1;
daemon off;
error_log $TMP/logs/error.log warn;
pid $TMP/nginx.pid;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 300s;
  server {
    listen 127.0.0.1:$PORT backlog=4096;
    location / { return 200 "ok"; }
  }
}
EOF
taskset -c 0 "$NGINX" -p "$TMP" -c "$TMP/nginx.conf" &
NGINX_PID=$!
trap 'kill $NGINX_PID 2>/dev/null; wait $NGINX_PID 2>/dev/null; rm -rf "$TMP"' EXIT
for _ in $(seq 50); do
  (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break
  sleep 0.1
done

WRK_ARGS=()
TB_ARGS=()
if [ "$PIPE" -gt 1 ]; then
  cat > "$TMP/pipeline.lua" <<EOF
init = function(args)
  local r = {}
  for i = 1, $PIPE do r[i] = wrk.format(nil, "/") end
  req = table.concat(r)
end
request = function() return req end
EOF
  WRK_ARGS=(-s "$TMP/pipeline.lua")
  TB_ARGS=(--pipeline "$PIPE")
fi

HAVE_PERF=0
perf stat -e task-clock true >/dev/null 2>&1 && HAVE_PERF=1

# run NAME CMD... : prints "NAME rps cpu_ms"
run() {
  local name=$1; shift
  local out="$TMP/out" ps="$TMP/ps"
  if [ $HAVE_PERF = 1 ]; then
    taskset -c 1 perf stat -x, -e task-clock -o "$ps" "$@" > "$out"
    cpu=$(awk -F, '/task-clock/{print $1}' "$ps")
  else
    local TIMEFORMAT='%U %S'
    { time taskset -c 1 "$@" > "$out"; } 2> "$ps"
    cpu=$(awk 'END{printf "%.0f", ($1+$2)*1000}' "$ps")
  fi
  if [ "$name" = wrk ]; then
    rps=$(awk '/Requests\/sec/{print $2}' "$out")
  else
    rps=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["requests_per_sec"])' "$out")
  fi
  echo "$name $rps $cpu"
}

secs=${DUR%s}
echo "# $(date -u +%FT%TZ) rounds=$ROUNDS duration=$DUR connections=$CONNS pipeline=$PIPE"
echo "# load before: $(cut -d' ' -f1-3 /proc/loadavg)"
RES="$TMP/results"
: > "$RES"
for r in $(seq "$ROUNDS"); do
  run wrk wrk -t1 -c"$CONNS" -d"$DUR" "${WRK_ARGS[@]}" "http://127.0.0.1:$PORT/" | tee -a "$RES"
  run tether-bench "$TB" -t1 -c"$CONNS" -d"$DUR" --warmup 0 --json --quiet "${TB_ARGS[@]}" \
    "http://127.0.0.1:$PORT/" | tee -a "$RES"
done
echo "# load after: $(cut -d' ' -f1-3 /proc/loadavg)"
python3 - "$RES" "$secs" <<'EOF'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
secs = float(sys.argv[2])
for name in ("wrk", "tether-bench"):
    r = [(float(a), float(b)) for n, a, b in rows if n == name]
    rps = statistics.median(x for x, _ in r)
    cpu = statistics.median(y for _, y in r)
    us = statistics.median(y * 1000 / (x * secs) for x, y in r)
    print(f"median {name:13} {rps:10.0f} req/s  client cpu {cpu/1000/secs*100:5.1f}%  {us:5.2f} us cpu/request")
EOF
