#!/usr/bin/env bash
# Replication benchmark, on loopback: two tether nodes (a, b) in a cluster and one lone tether, all in front
# of an nginx backend that sets a new APPSESSION cookie on every response, so every request through a node
# learns and binds a new session — which node a mirrors to b.
#
# Measures, in one run:
#   - bindings per second mirrored a -> b under load, and the replication lag while it runs: records a sent
#     to b and b has not acknowledged yet, sampled from SIGUSR1 every 100 ms (p50 / p99 / max), and that lag
#     in milliseconds at the measured rate;
#   - the delay of each record from its write on a to its apply on b (b's histogram, from the records'
#     clock readings; 1 ms resolution);
#   - the request rate of the clustered node against the lone one (the cost of mirroring), same load;
#   - a full resync: b is killed, restarted empty, and the time from its start to its "synced from a peer"
#     line is read from its log (it serves no client before that).
#
# Usage: bench/replication.sh [--duration 10s] [--connections 50] [--rate N]
# --rate N: open loop at N requests (so N new bindings) per second instead of as fast as possible.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

DURATION=10s
CONNECTIONS=50
RATE_ARG=()
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) DURATION=$2; shift 2 ;;
    --connections) CONNECTIONS=$2; shift 2 ;;
    --rate) RATE_ARG=(-R "$2"); shift 2 ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
[ -x "$NGINX" ] || { echo "nginx is needed (apt-get install nginx)" >&2; exit 1; }

echo "building release binaries" >&2
cargo build --release -q -p tether -p tether-bench
TETHER="$ROOT/target/release/tether"
BENCH="$ROOT/target/release/tether-bench"

WORK=$(mktemp -d /tmp/tether-repl.XXXXXX)
chmod 755 "$WORK"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

"$TETHER" certs cluster --nodes a,b --out "$WORK/certs" >/dev/null
mkdir -p "$WORK/backend"
cat > "$WORK/backend/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $WORK/backend/nginx.pid;
error_log $WORK/backend/error.log;
events { worker_connections 8192; }
http {
  access_log off;
  keepalive_requests 10000000;
  server {
    listen 127.0.0.1:19001;
    location / { add_header Set-Cookie "APPSESSION=\$request_id; Path=/"; default_type text/plain; return 200 "ok"; }
  }
}
EOF
"$NGINX" -p "$WORK/backend" -c "$WORK/backend/nginx.conf" &
PIDS+=($!)

common() {
  cat <<EOF
[workers]
count = 1
[access_log]
enabled = false
[sessions]
cookie_keys = ["kcMB/O5DuPOMn88OULhftFV4i5xS2kqBL4VHkYJk7aE="]
max_entries = 4000000
[clusters.app]
backends = [{ address = "127.0.0.1:19001" }]
[[routes]]
path_prefix = "/app/"
cluster = "app"
class = "secure"
session = "learn:APPSESSION"
EOF
}
node() { # name listen-port repl-port peer peer-repl-port
  common
  cat <<EOF
[[listeners]]
address = "127.0.0.1:$2"
[cluster]
name = "bench"
node = "$1"
listen = "127.0.0.1:$3"
ready_timeout = "60s"
peers = [{ name = "$4", address = "127.0.0.1:$5" }]
[cluster.tls]
ca = "$WORK/certs/ca.crt"
cert = "$WORK/certs/$1.crt"
key = "$WORK/certs/$1.key"
EOF
}
node a 19080 19181 b 19182 > "$WORK/a.toml"
node b 19081 19182 a 19181 > "$WORK/b.toml"
{ common; printf '[[listeners]]\naddress = "127.0.0.1:19083"\n'; } > "$WORK/lone.toml"

start() { # name → pid in $!
  TETHER_LOG=info "$TETHER" run -c "$WORK/$1.toml" > "$WORK/$1.log" 2>&1 &
}
start a; A=$!; PIDS+=($A)
start lone; LONE=$!; PIDS+=($LONE)
start b; B=$!; PIDS+=($B)
for _ in $(seq 100); do grep -q "link with a up" "$WORK/b.log" 2>/dev/null && break; sleep 0.1; done

# The newest value of FIELD= on a's report line about peer b (or its store line).
field() { grep "$1" "$WORK/a.log" | tail -1 | sed "s/.* $2=\([0-9]*\).*/\1/"; }

run_load() { # port → requests per second
  "$BENCH" -q -t1 -c"$CONNECTIONS" -d"$DURATION" --warmup 0s "${RATE_ARG[@]}" --json "http://127.0.0.1:$1/app/x" 2>/dev/null \
    | grep -o '"requests_per_sec": *[0-9.]*' | tail -1 | sed 's/.*: *//'
}

echo "load through the lone node (no mirroring)" >&2
LONE_RPS=$(run_load 19083)

echo "load through node a, sampling the lag to b" >&2
: > "$WORK/lag"
run_load 19080 > "$WORK/a_rps" &
LOAD=$!
while kill -0 $LOAD 2>/dev/null; do
  kill -USR1 $A
  sleep 0.1
  # Both from the same line of one report (the store line and the peer line are written one after the
  # other; reading them separately can pair a new one with an old one).
  line=$(grep "peer b at" "$WORK/a.log" | tail -1)
  sent=$(sed 's/.* sent=\([0-9]*\).*/\1/' <<<"$line")
  acked=$(sed 's/.* acked=\([0-9]*\).*/\1/' <<<"$line")
  [ -n "$sent" ] && [ -n "$acked" ] && echo $((sent - acked)) >> "$WORK/lag"
done
wait $LOAD
A_RPS=$(cat "$WORK/a_rps")
# Wait until b holds every binding.
for _ in $(seq 300); do
  kill -USR1 $A; kill -USR1 $B; sleep 0.1
  na=$(grep "store records=" "$WORK/a.log" | tail -1 | sed 's/.* bindings=\([0-9]*\).*/\1/')
  nb=$(grep "store records=" "$WORK/b.log" | tail -1 | sed 's/.* bindings=\([0-9]*\).*/\1/')
  [ -n "$na" ] && [ "$na" = "$nb" ] && break
done
BINDINGS=$na
# b's own measure: write on a (its record's clock reading) to apply on b, in ms.
kill -USR1 $B; sleep 0.3
bline=$(grep "peer a at" "$WORK/b.log" | tail -1)
DELAY=$(sed 's/.* delay_ms_p50=\([0-9]*\) delay_ms_p99=\([0-9]*\) delay_ms_max=\([0-9]*\).*/\1 \/ \2 \/ \3/' <<<"$bline")
SECS=$(echo "$DURATION" | sed 's/s$//')
pct() { sort -n "$WORK/lag" | awk -v q="$1" '{a[NR]=$1} END { if (NR==0) print "-"; else { i=int(NR*q); if (i<1) i=1; print a[i] } }'; }
P50=$(pct 0.5); P99=$(pct 0.99); MAX=$(sort -n "$WORK/lag" | tail -1)
RATE=$(awk -v n="$BINDINGS" -v s="$SECS" 'BEGIN { printf "%.0f", n/s }')
ms() { awk -v r="$1" -v rate="$RATE" 'BEGIN { if (rate==0 || r=="-") print "-"; else printf "%.2f", r/rate*1000 }'; }

echo "full resync: b killed, restarted empty" >&2
kill -9 $B; wait $B 2>/dev/null || true
start b; B=$!; PIDS+=($B)
for _ in $(seq 1200); do grep -q "synced from a peer\|serving alone" "$WORK/b.log" && break; sleep 0.05; done
t0=$(head -1 "$WORK/b.log" | cut -c1-23)
t1=$(grep "synced from a peer" "$WORK/b.log" | head -1 | cut -c1-23 || true)
RESYNC_MS=$(python3 -c "
from datetime import datetime as d
f='%Y-%m-%dT%H:%M:%S.%f'
print(round((d.strptime('$t1', f) - d.strptime('$t0', f)).total_seconds() * 1000))" 2>/dev/null || echo -)
SYNCED=$(grep "synced from a peer" "$WORK/b.log" | head -1 | sed 's/.*(\([0-9]*\) record.*/\1/')

echo
echo "| measure | value |"
echo "| --- | ---: |"
echo "| requests/s through the lone node (no cluster) | $LONE_RPS |"
echo "| requests/s through node a (each binds a session mirrored to b) | $A_RPS |"
echo "| bindings mirrored a -> b in ${DURATION} | $BINDINGS ($RATE/s) |"
echo "| lag, records sent to b not yet acknowledged: p50 / p99 / max ($(wc -l < "$WORK/lag") samples) | $P50 / $P99 / $MAX |"
echo "| lag at that rate, ms: p50 / p99 / max | $(ms "$P50") / $(ms "$P99") / $(ms "$MAX") |"
echo "| delay per record, write on a to apply on b, ms (1 ms resolution): p50 / p99 / max | $DELAY |"
echo "| full resync of b: records, ms from process start to synced | $SYNCED, $RESYNC_MS |"
