#!/usr/bin/env bash
# Replication benchmark, on loopback: two tether nodes (a, b) in a cluster and one lone tether, all in front
# of an nginx backend that sets a new APPSESSION cookie on every response under /app/, so every request
# through a node to /app/ learns and binds a new session — which node a mirrors to b.
#
# Default mode measures, in one run:
#   - bindings per second mirrored a -> b under load, and the replication lag while it runs: records a sent
#     to b and b has not acknowledged yet, sampled from SIGUSR1 every 100 ms (p50 / p99 / max), and that lag
#     in milliseconds at the measured rate;
#   - the delay of each record from its write on a to its apply on b (b's histogram, from the records'
#     clock readings; 1 ms resolution);
#   - the request rate of the clustered node against the lone one (the cost of mirroring), same load;
#   - a full resync: b is killed, restarted empty, and the time from its start to its "synced from a peer"
#     line is read from its log (it serves no client before that).
#
# --bulk (instead of the default measurements; nodes run with TETHER_TEST_ENDPOINTS=1): bulk async updates
#   mirrored a -> b, made by an open-loop load of GET /.tether/test/bind?n=K on node a (each request writes K
#   session bindings under fresh keys; R = updates-per-sec / K requests per second), and the cost to node a's
#   own keep-alive throughput: a closed-loop keep-alive load (--connections) on GET /, a stateless route to
#   nginx, through the lone node, through node a with nothing to mirror, and through node a while the bulk
#   load runs (same time, same duration). Phases, each --duration long: keep-alive on the lone node;
#   keep-alive on node a; bulk alone on node a; then, on a fresh pair (a and b restarted empty, so b's delay
#   histogram covers this phase only), bulk and keep-alive together. For each bulk phase: updates mirrored
#   (b's binding count) and their rate, the lag (as above, records and ms at the achieved rate), b's delay
#   histogram; for keep-alive: requests/s and latency p50 / p99 of each phase, and the ratios. The bulk
#   updates come K at a time, so the lag in ms (records / mean rate) is an upper bound; b's delay histogram
#   is the direct measure.
# --sync (instead of the default measurements, after --bulk if both are given; on a fresh pair): latency a
#   sync write adds. GET /.tether/test/sync?key=bench on node a is answered once b acknowledged the write;
#   GET /.tether/test/bind?n=1 is an async write answered at once. Both are answered by tether itself, so
#   the difference is the wait for the peer's ack. Closed loop, 1 connection and then 16, --duration each
#   (after a 1 s warm-up): p50 / p99 of both and their differences.
#
# Usage: bench/replication.sh [--duration 10s] [--connections 50] [--rate N]
#                             [--bulk [--updates-per-sec 100000] [--batch 1000]] [--sync] [--port-base 19000]
# --duration: in seconds (10s or 10); rates are counts over it.
# --rate N: open loop at N requests per second instead of as fast as possible (default mode: the /app/
#   load, N new bindings per second; --bulk: the keep-alive load).
# --updates-per-sec U, --batch K (--bulk): U async updates per second in requests of K records
#   (K at most 10000; defaults 100000 and 1000, so 100 requests/s).
# --port-base P: ports P+1 (nginx), P+80 / P+81 (nodes a / b), P+83 (lone node), P+181 / P+182 (a's and b's
#   replication); default 19000. Binaries come from ${CARGO_TARGET_DIR:-target}/release (built first).
# KEEP_WORK=1 keeps the work directory (configs, logs, JSON reports) in /tmp.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh
ROOT=$(pwd)

DURATION=10s
CONNECTIONS=50
RATE_ARG=()
BULK=0
SYNC=0
UPDATES=100000
BATCH=1000
PORT_BASE=19000
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) DURATION=$2; shift 2 ;;
    --connections) CONNECTIONS=$2; shift 2 ;;
    --rate) RATE_ARG=(-R "$2"); shift 2 ;;
    --bulk) BULK=1; shift ;;
    --sync) SYNC=1; shift ;;
    --updates-per-sec) UPDATES=$2; shift 2 ;;
    --batch) BATCH=$2; shift 2 ;;
    --port-base) PORT_BASE=$2; shift 2 ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
case "$BATCH" in ''|*[!0-9]*) echo "--batch takes a whole number" >&2; exit 2 ;; esac
if [ "$BATCH" -lt 1 ] || [ "$BATCH" -gt 10000 ]; then echo "--batch: 1 to 10000" >&2; exit 2; fi
case "$UPDATES" in ''|*[!0-9]*) echo "--updates-per-sec takes a whole number" >&2; exit 2 ;; esac
case "$PORT_BASE" in ''|*[!0-9]*) echo "--port-base takes a whole number" >&2; exit 2 ;; esac
P_NGINX=$((PORT_BASE + 1)); P_A=$((PORT_BASE + 80)); P_B=$((PORT_BASE + 81)); P_LONE=$((PORT_BASE + 83))
R_A=$((PORT_BASE + 181)); R_B=$((PORT_BASE + 182))
for p in $P_NGINX $P_A $P_B $P_LONE $R_A $R_B; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
    echo "port $p is in use (another run?); try --port-base" >&2; exit 1
  fi
done
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
[ -x "$NGINX" ] || { echo "nginx is needed (apt-get install nginx)" >&2; exit 1; }
# The test endpoints are only on in the modes that use them.
ENDPOINTS=0
if [ $BULK = 1 ] || [ $SYNC = 1 ]; then ENDPOINTS=1; fi

echo "building release binaries" >&2
cargo build --release -q -p tether -p tether-bench
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
case "$TARGET_DIR" in /*) ;; *) TARGET_DIR=$ROOT/$TARGET_DIR ;; esac
TETHER="$TARGET_DIR/release/tether"
BENCH="$TARGET_DIR/release/tether-bench"

WORK=$(mktemp -d /tmp/tether-repl.XXXXXX)
chmod 755 "$WORK"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ -n "${KEEP_WORK:-}" ] || rm -rf "$WORK"
}
trap cleanup EXIT
# Kills one process this script started, reaps it and forgets its id (so cleanup never signals a reused id).
stop() {
  kill -9 "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
  local keep=() p
  for p in "${PIDS[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
  PIDS=("${keep[@]}")
}

"$TETHER" certs cluster --nodes a,b --out "$WORK/certs" >/dev/null
mkdir -p "$WORK/backend"
# / (exact) is the stateless keep-alive target of --bulk: no cookie, nothing learned.
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
    listen 127.0.0.1:$P_NGINX;
    location = / { default_type text/plain; return 200 "ok"; }
    location / { add_header Set-Cookie "APPSESSION=\$request_id; Path=/"; default_type text/plain; return 200 "ok"; }
  }
}
EOF
"$NGINX" -p "$WORK/backend" -c "$WORK/backend/nginx.conf" &
PIDS+=($!)

common() {
  bench_node_base
  cat <<EOF
max_entries = 4000000
[clusters.app]
backends = [{ address = "127.0.0.1:$P_NGINX" }]
[[routes]]
path_prefix = "/app/"
cluster = "app"
class = "secure"
session = "learn:APPSESSION"
[[routes]]
path_prefix = "/"
cluster = "app"
class = "stateless"
EOF
}
node() { # name listen-port repl-port peer peer-repl-port
  common
  bench_cluster_node "$@" 60s
}
node a $P_A $R_A b $R_B > "$WORK/a.toml"
node b $P_B $R_B a $R_A > "$WORK/b.toml"
{ common; printf '[[listeners]]\naddress = "127.0.0.1:%s"\n' $P_LONE; } > "$WORK/lone.toml"

start() { # name → pid in $!
  TETHER_TEST_ENDPOINTS=$ENDPOINTS TETHER_LOG=info "$TETHER" run -c "$WORK/$1.toml" > "$WORK/$1.log" 2>&1 &
}
start a; A=$!; PIDS+=($A)
start lone; LONE=$!; PIDS+=($LONE)
start b; B=$!; PIDS+=($B)
for _ in $(seq 100); do grep -q "link with a up" "$WORK/b.log" 2>/dev/null && break; sleep 0.1; done

# Waits until both nodes of the pair serve (each synced from the other, or alone after ready_timeout).
pair_ready() {
  local _
  for _ in $(seq 1200); do
    if grep -q "synced from a peer\|serving alone" "$WORK/a.log" 2>/dev/null \
      && grep -q "synced from a peer\|serving alone" "$WORK/b.log" 2>/dev/null; then
      return 0
    fi
    if ! kill -0 $A 2>/dev/null || ! kill -0 $B 2>/dev/null; then
      echo "node a or b exited:" >&2; tail -3 "$WORK/a.log" "$WORK/b.log" >&2; return 1
    fi
    sleep 0.05
  done
  echo "the pair did not become ready" >&2
  return 1
}
# a and b killed and started again with empty stores (b's delay histogram starts over).
restart_pair() {
  stop $A; stop $B
  start a; A=$!; PIDS+=($A)
  start b; B=$!; PIDS+=($B)
  pair_ready
}

# The newest value of FIELD= on a's report line about peer b (or its store line).
field() { grep "$1" "$WORK/a.log" | tail -1 | sed "s/.* $2=\([0-9]*\).*/\1/"; }

run_load() { # port → requests per second
  "$BENCH" -q -t1 -c"$CONNECTIONS" -d"$DURATION" --warmup 0s "${RATE_ARG[@]}" --json "http://127.0.0.1:$1/app/x" 2>/dev/null \
    | grep -o '"requests_per_sec": *[0-9.]*' | tail -1 | sed 's/.*: *//'
}

# Samples the lag (records a sent to b, not yet acknowledged) every 100 ms into FILE while PID runs.
sample_lag() { # pid file
  : > "$2"
  local line sent acked
  while kill -0 "$1" 2>/dev/null; do
    kill -USR1 $A
    sleep 0.1
    # Both from the same line of one report (the store line and the peer line are written one after the
    # other; reading them separately can pair a new one with an old one).
    line=$(grep "peer b at" "$WORK/a.log" | tail -1 || true)
    sent=$(sed 's/.* sent=\([0-9]*\).*/\1/' <<<"$line")
    acked=$(sed 's/.* acked=\([0-9]*\).*/\1/' <<<"$line")
    if [ -n "$sent" ] && [ -n "$acked" ]; then echo $((sent - acked)) >> "$2"; fi
  done
}
# The newest binding count in NODE's store line.
bindings() { grep "store records=" "$WORK/$1.log" | tail -1 | sed 's/.* bindings=\([0-9]*\).*/\1/'; }
# Waits until b holds every binding a holds; prints the count.
caught_up() {
  local _ na nb
  for _ in $(seq 300); do
    kill -USR1 $A; kill -USR1 $B; sleep 0.1
    na=$(bindings a); nb=$(bindings b)
    if [ -n "$na" ] && [ "$na" = "$nb" ]; then break; fi
  done
  echo "$na"
}
# b's own measure: write on a (its record's clock reading) to apply on b, in ms: "p50 / p99 / max".
b_delay() {
  kill -USR1 $B; sleep 0.3
  grep "peer a at" "$WORK/b.log" | tail -1 \
    | sed 's/.* delay_ms_p50=\([0-9]*\) delay_ms_p99=\([0-9]*\) delay_ms_max=\([0-9]*\).*/\1 \/ \2 \/ \3/'
}
SECS=$(echo "$DURATION" | sed 's/s$//')
pctf() { sort -n "$1" | awk -v q="$2" '{a[NR]=$1} END { if (NR==0) print "-"; else { i=int(NR*q); if (i<1) i=1; print a[i] } }'; }
maxf() { sort -n "$1" | tail -1; }
# Lag in records → ms at RATE records/s.
ms_at() { awk -v r="$1" -v rate="$2" 'BEGIN { if (rate==0 || r=="-" || r=="") print "-"; else printf "%.2f", r/rate*1000 }'; }

# --- tether-bench JSON (pretty-printed, one object) ---
# The first number under KEY: requests_per_sec, p50, p99 (those are only in latency_us), ...
jnum() { grep -o "\"$2\": *[0-9.]*" "$1" | head -1 | sed 's/.*: *//'; }
rps() { awk -v x="$(jnum "$1" requests_per_sec)" 'BEGIN { printf "%.0f", x }'; }
lat_ms() { awk -v x="$(jnum "$1" "$2")" 'BEGIN { printf "%.3f", x/1000 }'; }
# Answers other than 200 and errors (whole run), for the notes under the tables.
NOTES=()
check() { # json label
  local total non200
  total=$(jnum "$1" total)
  non200=$(tr -d ' \n' < "$1" | { grep -o '"status":{[^}]*}' || true; } | tr ',' '\n' \
    | awk -F: '$0 !~ /"200":/ { gsub(/[^0-9]/, "", $NF); s += $NF } END { print s+0 }')
  if [ "${total:-0}" != 0 ] || [ "$non200" != 0 ]; then
    NOTES+=("$2: $non200 answers other than 200, ${total:-?} errors")
  fi
}
bench_json() { # out-file bench-args... (stdout to the file, nothing else)
  local out=$1; shift
  "$BENCH" -q --json "$@" > "$out" 2>/dev/null
}

default_mode() {
echo "load through the lone node (no mirroring)" >&2
LONE_RPS=$(run_load $P_LONE)

echo "load through node a, sampling the lag to b" >&2
run_load $P_A > "$WORK/a_rps" &
LOAD=$!
sample_lag $LOAD "$WORK/lag"
wait $LOAD
A_RPS=$(cat "$WORK/a_rps")
# Wait until b holds every binding.
BINDINGS=$(caught_up)
DELAY=$(b_delay)
P50=$(pctf "$WORK/lag" 0.5); P99=$(pctf "$WORK/lag" 0.99); MAX=$(maxf "$WORK/lag")
RATE=$(awk -v n="$BINDINGS" -v s="$SECS" 'BEGIN { printf "%.0f", n/s }')

echo "full resync: b killed, restarted empty" >&2
stop $B
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
echo "| lag at that rate, ms: p50 / p99 / max | $(ms_at "$P50" "$RATE") / $(ms_at "$P99" "$RATE") / $(ms_at "$MAX" "$RATE") |"
echo "| delay per record, write on a to apply on b, ms (1 ms resolution): p50 / p99 / max | $DELAY |"
echo "| full resync of b: records, ms from process start to synced | $SYNCED, $RESYNC_MS |"
}

# --- --bulk ---
BULK_RPS=$(awk -v u="$UPDATES" -v k="$BATCH" 'BEGIN { printf "%g", u/k }')
ka_load() { # port out-file
  bench_json "$2" -t1 -c"$CONNECTIONS" -d"$DURATION" --warmup 0s "${RATE_ARG[@]}" "http://127.0.0.1:$1/"
}
bulk_load() { # out-file
  bench_json "$1" -t1 -c4 -d"$DURATION" --warmup 0s -R "$BULK_RPS" "http://127.0.0.1:$P_A/.tether/test/bind?n=$BATCH"
}
# After a bulk phase: mirrored count (b caught up), rate, lag and delay, into the arrays below (index $1).
declare -a M_N M_RATE M_LAG M_LAGMS M_DELAY M_REQ
bulk_results() { # index lag-file bulk-json bindings-before
  local n rate p50 p99 mx
  n=$(( $(caught_up) - $4 ))
  rate=$(awk -v n="$n" -v s="$SECS" 'BEGIN { printf "%.0f", n/s }')
  p50=$(pctf "$2" 0.5); p99=$(pctf "$2" 0.99); mx=$(maxf "$2")
  M_N[$1]="$n ($rate/s)"
  M_RATE[$1]=$rate
  M_LAG[$1]="$p50 / $p99 / $mx ($(wc -l < "$2") samples)"
  M_LAGMS[$1]="$(ms_at "$p50" "$rate") / $(ms_at "$p99" "$rate") / $(ms_at "$mx" "$rate")"
  M_DELAY[$1]=$(b_delay)
  M_REQ[$1]="$(rps "$3") × $BATCH = $(awk -v r="$(jnum "$3" requests_per_sec)" -v k="$BATCH" 'BEGIN { printf "%.0f", r*k }')/s"
}

bulk_mode() {
echo "bulk: $UPDATES updates/s asked, $BULK_RPS requests/s of $BATCH records on node a" >&2
echo "bulk: keep-alive GET / through the lone node" >&2
ka_load $P_LONE "$WORK/ka_lone.json"
echo "bulk: keep-alive GET / through node a, nothing to mirror" >&2
ka_load $P_A "$WORK/ka_a.json"
local before
before=$(caught_up)
echo "bulk: bulk updates alone on node a, sampling the lag to b" >&2
bulk_load "$WORK/bulk_alone.json" &
local load=$!
sample_lag $load "$WORK/lag_alone"
wait $load
bulk_results 0 "$WORK/lag_alone" "$WORK/bulk_alone.json" "$before"

echo "bulk: fresh pair; bulk updates and keep-alive GET / together on node a" >&2
restart_pair
before=$(caught_up)
ka_load $P_A "$WORK/ka_a_bulk.json" &
local ka=$!
bulk_load "$WORK/bulk_ka.json" &
load=$!
sample_lag $load "$WORK/lag_ka"
wait $load $ka
bulk_results 1 "$WORK/lag_ka" "$WORK/bulk_ka.json" "$before"

check "$WORK/ka_lone.json" "keep-alive, lone node"
check "$WORK/ka_a.json" "keep-alive, node a"
check "$WORK/ka_a_bulk.json" "keep-alive, node a while mirroring"
check "$WORK/bulk_alone.json" "bulk load alone"
check "$WORK/bulk_ka.json" "bulk load with keep-alive"

local lone a ab
lone=$(rps "$WORK/ka_lone.json"); a=$(rps "$WORK/ka_a.json"); ab=$(rps "$WORK/ka_a_bulk.json")
ratio() { awk -v x="$1" -v y="$2" 'BEGIN { if (y==0) print "-"; else printf "%.2f", x/y }'; }
lat() { echo "$(lat_ms "$1" p50) / $(lat_ms "$1" p99)"; }
echo
echo "| bulk async updates, a -> b ($UPDATES/s asked: $BULK_RPS requests/s × $BATCH) | bulk alone | bulk + keep-alive load, same run |"
echo "| --- | ---: | ---: |"
echo "| bind requests/s × records each = updates/s written (load generator, measured period) | ${M_REQ[0]} | ${M_REQ[1]} |"
echo "| updates mirrored a -> b in ${DURATION} (b's bindings) | ${M_N[0]} | ${M_N[1]} |"
echo "| lag, records sent to b not yet acknowledged: p50 / p99 / max | ${M_LAG[0]} | ${M_LAG[1]} |"
echo "| lag at the mirrored rate, ms: p50 / p99 / max | ${M_LAGMS[0]} | ${M_LAGMS[1]} |"
echo "| delay per record, write on a to apply on b, ms (1 ms resolution): p50 / p99 / max | ${M_DELAY[0]} | ${M_DELAY[1]} |"
echo
echo "| keep-alive GET / (stateless, to nginx), -c$CONNECTIONS, ${DURATION} each | requests/s | latency p50 / p99, ms |"
echo "| --- | ---: | ---: |"
echo "| lone node (no cluster) | $lone | $(lat "$WORK/ka_lone.json") |"
echo "| node a, nothing to mirror | $a | $(lat "$WORK/ka_a.json") |"
echo "| node a while mirroring ${M_RATE[1]} updates/s to b | $ab | $(lat "$WORK/ka_a_bulk.json") |"
echo "| ratio node a mirroring / not mirroring | $(ratio "$ab" "$a") | |"
echo "| ratio node a not mirroring / lone node | $(ratio "$a" "$lone") | |"
}

# --- --sync ---
sync_mode() {
if [ $BULK = 1 ]; then echo "sync: fresh pair" >&2; restart_pair; else pair_ready; fi
local c
for c in 1 16; do
  echo "sync: closed loop, $c connection(s): async write, then sync write" >&2
  bench_json "$WORK/async_$c.json" -t1 -c$c -d"$DURATION" --warmup 1s "http://127.0.0.1:$P_A/.tether/test/bind?n=1"
  bench_json "$WORK/sync_$c.json" -t1 -c$c -d"$DURATION" --warmup 1s "http://127.0.0.1:$P_A/.tether/test/sync?key=bench"
  check "$WORK/async_$c.json" "async write, $c connection(s)"
  check "$WORK/sync_$c.json" "sync write, $c connection(s)"
done
diff_ms() { awk -v x="$(jnum "$1" "$3")" -v y="$(jnum "$2" "$3")" 'BEGIN { printf "%.3f", (x-y)/1000 }'; }
echo
echo "| sync write on node a, acknowledged by b (closed loop, ${DURATION} each) | 1 connection | 16 connections |"
echo "| --- | ---: | ---: |"
echo "| async write answered at once (bind?n=1): requests/s | $(rps "$WORK/async_1.json") | $(rps "$WORK/async_16.json") |"
echo "| async write: latency p50 / p99, ms | $(lat_ms "$WORK/async_1.json" p50) / $(lat_ms "$WORK/async_1.json" p99) | $(lat_ms "$WORK/async_16.json" p50) / $(lat_ms "$WORK/async_16.json" p99) |"
echo "| sync write answered once b acknowledged (sync?key=): requests/s | $(rps "$WORK/sync_1.json") | $(rps "$WORK/sync_16.json") |"
echo "| sync write: latency p50 / p99, ms | $(lat_ms "$WORK/sync_1.json" p50) / $(lat_ms "$WORK/sync_1.json" p99) | $(lat_ms "$WORK/sync_16.json" p50) / $(lat_ms "$WORK/sync_16.json" p99) |"
echo "| added by the wait for b's ack (sync − async): p50 / p99, ms | $(diff_ms "$WORK/sync_1.json" "$WORK/async_1.json" p50) / $(diff_ms "$WORK/sync_1.json" "$WORK/async_1.json" p99) | $(diff_ms "$WORK/sync_16.json" "$WORK/async_16.json" p50) / $(diff_ms "$WORK/sync_16.json" "$WORK/async_16.json" p99) |"
}

if [ $BULK = 0 ] && [ $SYNC = 0 ]; then default_mode; fi
if [ $BULK = 1 ]; then pair_ready; bulk_mode; fi
if [ $SYNC = 1 ]; then sync_mode; fi
if [ ${#NOTES[@]} -gt 0 ]; then
  echo
  for n in "${NOTES[@]}"; do echo "- warning: $n"; done
fi
