#!/usr/bin/env bash
# The continuity proof, measured (issue #19): `tether-bench failover` against `tether demo --cluster`, node a
# killed with SIGKILL at --kill-at and restarted at --restart-at; then the same scenario on nodes that
# share nothing (`--no-replication`), same run. Prints both reports and a side-by-side table; the JSON of
# each run stays in bench/results/.
#
#   bench/failover.sh [USERS] [DURATION] [KILL_AT] [RESTART_AT] [PUBLISH_RATE]
#   bench/failover.sh 300 60s 20s 40s 100
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
USERS=${1:-300}; DURATION=${2:-60s}; KILL_AT=${3:-20s}; RESTART_AT=${4:-40s}; RATE=${5:-100}

bench_ports_free 8181 8182 8183 7181 7182 7183 7281 7282 7283 9181 9182 9183 9001 9002
bench_build
bench_workdir failover
mkdir -p bench/results

run() { # $1: label, $2…: extra demo flags
  local label=$1; shift
  local dir="$WORK/$label"
  mkdir -p "$dir"
  TETHER_DEMO_DIR="$dir" "$TETHER" demo --cluster "$@" > "$dir/demo.out" 2>&1 &
  local demo=$!
  PIDS+=("$demo")
  for _ in $(seq 100); do grep -q "The tour:" "$dir/demo.out" 2>/dev/null && break; sleep 0.1; done
  grep -q "The tour:" "$dir/demo.out" || { cat "$dir/demo.out" >&2; exit 1; }
  "$BENCH" failover --users "$USERS" --duration "$DURATION" --kill-at "$KILL_AT" --restart-at "$RESTART_AT" \
    --publish-rate "$RATE" --label "$label" --json "bench/results/failover-$label.json" \
    --kill-cmd "TETHER_DEMO_DIR='$dir' '$TETHER' demo kill a" \
    --restart-cmd "TETHER_DEMO_DIR='$dir' '$TETHER' demo restart a"
  kill -TERM "$demo"; wait "$demo" || true
  # The nodes stop within 3 s; the ports must be free for the next run.
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/8181) 2>/dev/null || break; sleep 0.1; done
}

run replicated
run no-replication --no-replication

python3 - "$USERS" "$DURATION" "$RATE" <<'PY'
import json, sys
users, duration, rate = sys.argv[1:4]
a = json.load(open("bench/results/failover-replicated.json"))
b = json.load(open("bench/results/failover-no-replication.json"))
rows = [
    ("forced re-logins", lambda r: r["forced_relogins"]),
    ("acknowledged notifications lost", lambda r: f'{r["notifications"]["lost"]} of {r["notifications"]["expected"]}'),
    ("notifications delivered twice", lambda r: r["notifications"]["duplicates"]),
    ("acknowledged upload bytes lost", lambda r: f'{r["uploads"]["lost_bytes"]} of {r["uploads"]["acknowledged_bytes"]}'),
    ("uploads gone / attachments wrong", lambda r: f'{r["uploads"]["restarted"]} / {r["uploads"]["corrupt"]}'),
    ("binding violations", lambda r: r["binding_violations"]),
    ("requests/s before / during / after", lambda r: " / ".join(f'{r["phases"][p]["rps"]:.0f}' for p in ("before", "during", "after"))),
    ("p99 ms before / during / after", lambda r: " / ".join(f'{r["phases"][p]["p99_ms"]:.1f}' for p in ("before", "during", "after"))),
    ("restarted node serving after (s)", lambda r: f'{r["chaos"].get("restart_serving_s", float("nan")):.2f}'),
    ("errors", lambda r: ", ".join(f"{k} {v}" for k, v in r["errors"].items()) or "none"),
]
print(f"\n{users} users, {duration}, {rate} notifications/s published, node a killed (-9) and restarted\n")
print(f'| {"":36} | {"replicated":>24} | {"no replication":>24} |')
print(f'|{"-"*38}|{"-"*26}|{"-"*26}|')
for name, f in rows:
    print(f"| {name:36} | {str(f(a)):>24} | {str(f(b)):>24} |")
PY
