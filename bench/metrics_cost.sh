#!/usr/bin/env bash
# The metrics registry's cost on plain keep-alive throughput (issue #18), in one run: the same source built
# twice — as it is, and with the `skip-metrics` feature (every registry counter increment and histogram
# observation skipped) — each one tether worker pinned to the last CPU, in front of one nginx backend, loaded
# by tether-bench (closed loop, keep-alive, one thread) from CPU 0. Rounds alternate the two builds, and
# each run is watched by `perf stat -e task-clock` on the tether process, so beside requests/s (noisy on a
# shared machine: it depends on what else gets the CPUs) the table has the CPU time tether spent per request
# (counted only while it runs, so other processes' load moves it much less). Hardware counters (cycles,
# instructions) are not used: virtual machines often do not expose them.
#
# Usage: bench/metrics_cost.sh [--rounds 9] [--duration 5s] [--connections 50]
#                              [--with PATH --without PATH]   (default: build both from this tree)
set -euo pipefail

ROUNDS=9
DURATION=5s
CONNECTIONS=50
WITH=""
WITHOUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) ROUNDS=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --connections) CONNECTIONS=$2; shift 2 ;;
    --with) WITH=$2; shift 2 ;;
    --without) WITHOUT=$2; shift 2 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
cd "$(dirname "$0")/.."
. bench/lib.sh
bench_tools
command -v perf >/dev/null || { echo "perf is needed (apt-get install linux-perf)" >&2; exit 1; }
P_NGINX=19701 P_WITH=19780 P_WITHOUT=19781
bench_ports_free $P_NGINX $P_WITH $P_WITHOUT
bench_workdir metrics-cost
bench_build
if [ -z "$WITH" ] || [ -z "$WITHOUT" ]; then
  cp "$TETHER" "$WORK/tether-with"
  echo "building the skip-metrics variant" >&2
  cargo build --release -q -p tether --features skip-metrics
  cp "$TETHER" "$WORK/tether-without"
  # Leave the tree's release binary as it was.
  cargo build --release -q -p tether
  WITH=$WORK/tether-with WITHOUT=$WORK/tether-without
fi

CPUS=$(nproc)
PROXY_CPU=$(( CPUS > 1 ? CPUS - 1 : 0 ))
bench_nginx $P_NGINX
for variant in with without; do
  port=$P_WITH; bin=$WITH
  [ "$variant" = without ] && { port=$P_WITHOUT; bin=$WITHOUT; }
  cat > "$WORK/$variant.toml" <<CONF
[workers]
count = 1
[access_log]
enabled = false
[[listeners]]
address = "127.0.0.1:$port"
[clusters.app]
backends = [{ address = "127.0.0.1:$P_NGINX" }]
[[routes]]
cluster = "app"
CONF
  TETHER_LOG=warn taskset -c $PROXY_CPU "$bin" run -c "$WORK/$variant.toml" > "$WORK/$variant.log" 2>&1 &
  PIDS+=($!)
  eval "PID_$variant=$!"
done
for port in $P_NGINX $P_WITH $P_WITHOUT; do
  for _ in $(seq 100); do
    if "$BENCH" -q -c1 -t1 -d200ms --warmup 0 --json "http://127.0.0.1:$port/" 2>/dev/null | grep -q '"requests": *[1-9]'; then break; fi
    sleep 0.1
  done
done

secs=${DURATION%s}
# run VARIANT → "rps cpu_ns_per_request non_2xx_or_errors"
run() {
  local variant=$1 port=$P_WITH pid=$PID_with json perfout
  [ "$variant" = without ] && { port=$P_WITHOUT; pid=$PID_without; }
  perfout="$WORK/perf.$variant"
  # perf counts the tether process for the measured period only (the load's 1 s warm-up runs before it).
  ( sleep 1; perf stat -x, -e task-clock -p "$pid" -o "$perfout" -- sleep "$secs" ) &
  local perf_pid=$!
  json=$(taskset -c 0 "$BENCH" -q -t1 -c"$CONNECTIONS" -d"$DURATION" --warmup 1s --json \
    "http://127.0.0.1:$port/" 2>/dev/null)
  wait $perf_pid || true
  field() { grep -o "\"$1\": *[0-9.]*" <<<"$json" | tail -1 | sed 's/.*: *//'; }
  local rps requests errs msec
  rps=$(field requests_per_sec); requests=$(field requests); errs=$(field total)
  local not_2xx
  not_2xx=$(awk '/"status": *\{/ {s=1; next} s && /\}/ {s=0} s {gsub(/[",:]/, " "); if ($1 !~ /^2/) n += $2} END {print n+0}' <<<"$json")
  msec=$(awk -F, '$3 ~ /^task-clock/ {print $1}' "$perfout")
  # perf's window (the measured period) and the load's match to within a scheduling tick.
  awk -v r="$rps" -v n="$requests" -v m="$msec" -v e="$((errs + not_2xx))" \
    'BEGIN { printf "%.0f %.0f %d\n", r, (n > 0 ? m * 1e6 / n : 0), e }'
}

median() { sort -n | awk '{a[NR]=$1} END { if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2 }'; }
declare -A RPS CPU ERR
for r in $(seq "$ROUNDS"); do
  # Alternate which build goes first, so neither always runs right after the other.
  order="with without"; [ $((r % 2)) = 0 ] && order="without with"
  for v in $order; do
    read -r rps cpu errs < <(run "$v")
    echo "round $r $v: $rps req/s, $cpu ns CPU/request, errors $errs" >&2
    RPS[$v]+="$rps "; CPU[$v]+="$cpu "; ERR[$v]=$(( ${ERR[$v]:-0} + errs ))
  done
  # The round's ratio (with / without), same minute.
  w=$(tr ' ' '\n' <<<"${RPS[with]}" | grep -v '^$' | tail -1); o=$(tr ' ' '\n' <<<"${RPS[without]}" | grep -v '^$' | tail -1)
  ROUND_RATIOS+="$(awk -v a="$w" -v b="$o" 'BEGIN { printf "%.3f", a / b }') "
  w=$(tr ' ' '\n' <<<"${CPU[with]}" | grep -v '^$' | tail -1); o=$(tr ' ' '\n' <<<"${CPU[without]}" | grep -v '^$' | tail -1)
  CPU_RATIOS+="$(awk -v a="$w" -v b="$o" 'BEGIN { printf "%.3f", a / b }') "
done
med() { tr ' ' '\n' <<<"$1" | grep -v '^$' | median; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", a / b }'; }
echo
echo "load average before the end: $(cut -d' ' -f1-3 /proc/loadavg); $ROUNDS rounds of $DURATION, -c$CONNECTIONS"
echo "| build | req/s (median) | tether CPU ns/request (median) | errors or non-2xx |"
echo "| --- | ---: | ---: | ---: |"
for v in with without; do
  name="metrics as they are"; [ "$v" = without ] && name="skip-metrics"
  echo "| $name | $(med "${RPS[$v]}") | $(med "${CPU[$v]}") | ${ERR[$v]} |"
done
echo "| with / without | $(ratio "$(med "${RPS[with]}")" "$(med "${RPS[without]}")") | $(ratio "$(med "${CPU[with]}")" "$(med "${CPU[without]}")") | |"
echo "per-round ratios, with / without: req/s $ROUND_RATIOS; CPU/request $CPU_RATIOS"
echo "medians of the per-round ratios: req/s $(med "$ROUND_RATIOS"), CPU/request $(med "$CPU_RATIOS")"
