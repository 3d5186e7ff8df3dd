#!/usr/bin/env bash
# Abuse protection and metering (issue #15), on loopback, in one run: one tether node with every feature of
# the full path and one without any, each with one worker, in front of an nginx backend.
#
#   1. The full path against plain keep-alive, same run: tether-bench closed loop (--connections,
#      --duration, one thread) on
#        plain: GET /x on the featureless node (no pools, no limits, no metering);
#        open:  GET /open/x on the full node (a stateless route; metered for the only tenant);
#        full:  GET /full/x on the full node: a secure route (sticky cookie inserted by tether and kept by
#               the client), a logged-in session (cookie), a per-user rate limit far above the load, and
#               metering;
#      --rounds rounds, interleaved; medians and the ratios full / plain and full / open.
#   2. A flood from one address at 10x its limit while a normal client runs: the full node limits every
#      address to 2,000 requests/s ([deny] rule: banned for 60 s beyond that; 127.0.0.1, the normal
#      client, is on the allow list). The normal client (closed loop, 10 connections, keep-alive) alone,
#      then with the flood: 20,000 new connections/s open loop from 127.0.0.2 (--bind; a connection not
#      answered within 5 ms is given up, so a flood whose SYNs are dropped keeps its rate). Its
#      throughput and p99 in both, and what the flood got.
#   3. What a rejected connection costs against a served request: tether's CPU time (utime + stime from
#      /proc) over a phase divided by what the phase did — the banned 127.0.0.2 trying 10,000
#      connections/s (each SYN dropped by the deny list's kernel filter; each attempt given up after
#      5 ms), then 127.0.0.1 (allowed) sending 10,000 requests/s, each on a new connection, served by
#      nginx; the same again with `kernel_filter = false` (connections accepted and closed at accept).
#      A dropped SYN's kernel work is not tether's process time (on loopback it runs in the sender's
#      context; from a NIC, in softirq).
#
# Usage: bench/limits.sh [--duration 8s] [--connections 50] [--rounds 3] [--port-base 19600]
# Needs nginx and python3. Binaries come from ${CARGO_TARGET_DIR:-target}/release (built first).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
# shellcheck source=bench/lib.sh
. bench/lib.sh

DURATION=8s
CONNECTIONS=50
ROUNDS=3
PORT_BASE=19600
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) DURATION=$2; shift 2 ;;
    --connections) CONNECTIONS=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    --port-base) PORT_BASE=$2; shift 2 ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
P_NGINX=$((PORT_BASE + 1)); P_FULL=$((PORT_BASE + 80)); P_PLAIN=$((PORT_BASE + 81)); P_CLOSE=$((PORT_BASE + 82))
bench_ports_free $P_NGINX $P_FULL $P_PLAIN $P_CLOSE
bench_tools
bench_build

bench_workdir limits

bench_nginx $P_NGINX

cat > "$WORK/plain.toml" <<EOF
[workers]
count = 1
[access_log]
enabled = false
[[listeners]]
address = "127.0.0.1:$P_PLAIN"
[clusters.app]
backends = [{ address = "127.0.0.1:$P_NGINX" }]
[[routes]]
path_prefix = "/"
cluster = "app"
EOF
cat > "$WORK/full.toml" <<EOF
[workers]
count = 1
[access_log]
enabled = false
[[listeners]]
address = "127.0.0.1:$P_FULL"
[limits]
max_connections_per_client = 0
[sessions]
cookie_keys = ["kcMB/O5DuPOMn88OULhftFV4i5xS2kqBL4VHkYJk7aE="]
[auth]
hash_threads = 1
[pools.acme]
users = "$ROOT/configs/cluster/users.toml"
lockout = { enabled = false }
[[rate_limits]]
name = "per_user"
key = "user"
rate = 100000000
per = "1s"
[[rate_limits]]
name = "per_address"
key = "address"
rate = 2000
per = "1s"
[deny]
allow = ["127.0.0.1/32"]
rules = [{ requests_per_sec = 2000, ban = "60s" }]
[clusters.app]
backends = [{ address = "127.0.0.1:$P_NGINX" }]
[[routes]]
path_prefix = "/full/"
cluster = "app"
class = "secure"
session = "insert:SID"
auth = "login"
rate_limits = ["per_user"]
[[routes]]
path_prefix = "/"
cluster = "app"
rate_limits = ["per_address"]
EOF
for n in plain full; do
  TETHER_LOG=info "$TETHER" run -c "$WORK/$n.toml" > "$WORK/$n.log" 2>&1 &
  PIDS+=($!)
  eval "PID_$n=$!"
done
for n in plain full; do
  for _ in $(seq 200); do grep -q "listening on" "$WORK/$n.log" 2>/dev/null && break; sleep 0.05; done
  grep -q "listening on" "$WORK/$n.log" || { echo "node $n did not start:" >&2; tail -5 "$WORK/$n.log" >&2; exit 1; }
done

COOKIE=$(python3 - "$P_FULL" <<'EOF'
import http.client, sys
c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]))
c.request("POST", "/.tether/login", "username=alice&password=tether-demo",
          {"Content-Type": "application/x-www-form-urlencoded"})
r = c.getresponse(); r.read()
print([v.split(";")[0] for k, v in r.getheaders() if k.lower() == "set-cookie" and v.startswith("tether_session=")][0])
EOF
)

summary() { # label json-file
  python3 - "$2" "$1" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
non2xx = sum(v for k, v in r["status"].items() if not k.startswith("2"))
lat = r["latency_us"]
print(f"{sys.argv[2]} {r['requests_per_sec']:.0f} {lat['p50']} {lat['p99']} {non2xx} {r['errors']['total']}")
EOF
}

echo "== 1. full path vs plain keep-alive: 1 worker each, $CONNECTIONS connections, $DURATION per run, $ROUNDS rounds =="
: > "$WORK/ka.txt"
for _ in $(seq "$ROUNDS"); do
  "$BENCH" -q --json -t1 -c"$CONNECTIONS" -d"$DURATION" "http://127.0.0.1:$P_PLAIN/x" > "$WORK/r.json" 2>/dev/null
  summary plain "$WORK/r.json" | tee -a "$WORK/ka.txt"
  "$BENCH" -q --json -t1 -c"$CONNECTIONS" -d"$DURATION" "http://127.0.0.1:$P_FULL/open/x" > "$WORK/r.json" 2>/dev/null
  summary open "$WORK/r.json" | tee -a "$WORK/ka.txt"
  "$BENCH" -q --json -t1 -c"$CONNECTIONS" -d"$DURATION" --sessions -H "Cookie: $COOKIE" \
    "http://127.0.0.1:$P_FULL/full/x" > "$WORK/r.json" 2>/dev/null
  summary full "$WORK/r.json" | tee -a "$WORK/ka.txt"
done
python3 - "$WORK/ka.txt" <<'EOF'
import statistics, sys
by = {}
for l in open(sys.argv[1]):
    label, rps, p50, p99, non2xx, errors = l.split()
    by.setdefault(label, []).append((float(rps), float(p50), float(p99), int(non2xx), int(errors)))
med = {k: statistics.median(r[0] for r in v) for k, v in by.items()}
for k in ("plain", "open", "full"):
    v = by[k]
    print(f"{k:6s} median {med[k]:9.0f} req/s  p50 {statistics.median(r[1] for r in v):6.0f} us  "
          f"p99 {statistics.median(r[2] for r in v):6.0f} us  non-2xx {sum(r[3] for r in v)}  errors {sum(r[4] for r in v)}")
print(f"full / plain: {med['full'] / med['plain']:.3f}   full / open: {med['full'] / med['open']:.3f}")
EOF

cpu() { # pid → utime + stime in clock ticks
  awk '{print $14 + $15}' "/proc/$1/stat"
}

echo "== 2. a flood at 10x its limit beside a normal client ($DURATION) =="
"$BENCH" -q --json -t1 -c10 -d"$DURATION" "http://127.0.0.1:$P_FULL/open/x" > "$WORK/alone.json" 2>/dev/null
summary "normal-alone" "$WORK/alone.json"
"$BENCH" -q --json -t1 -c200 -d"$DURATION" --warmup 0s -R 20000 --new-conn --timeout 5ms --bind 127.0.0.2 \
  "http://127.0.0.1:$P_FULL/open/x" > "$WORK/flood.json" 2>/dev/null &
FLOOD=$!
"$BENCH" -q --json -t1 -c10 -d"$DURATION" "http://127.0.0.1:$P_FULL/open/x" > "$WORK/beside.json" 2>/dev/null
wait $FLOOD || true
summary "normal-with-flood" "$WORK/beside.json"
summary "flood" "$WORK/flood.json"
python3 - "$WORK/alone.json" "$WORK/beside.json" <<'EOF'
import json, sys
a, b = (json.load(open(f)) for f in sys.argv[1:3])
print(f"normal client with the flood: {b['requests_per_sec'] / a['requests_per_sec']:.3f}x its throughput alone, "
      f"p99 {a['latency_us']['p99']} -> {b['latency_us']['p99']} us")
EOF

echo "== 3. tether CPU per rejected connection vs per served request (new connections, 10,000/s, $DURATION) =="
# label pid port: the banned 127.0.0.2's attempts, then 127.0.0.1's served requests, against node pid.
refusal_cost() {
  local c0 c1 c2
  c0=$(cpu "$2")
  "$BENCH" -q --json -t1 -c200 -d"$DURATION" --warmup 0s -R 10000 --new-conn --timeout 5ms --bind 127.0.0.2 \
    "http://127.0.0.1:$3/open/x" > "$WORK/rejected.json" 2>/dev/null || true
  c1=$(cpu "$2")
  "$BENCH" -q --json -t1 -c200 -d"$DURATION" --warmup 0s -R 10000 --new-conn \
    "http://127.0.0.1:$3/open/x" > "$WORK/served.json" 2>/dev/null || true
  c2=$(cpu "$2")
  python3 - "$WORK/rejected.json" "$WORK/served.json" "$c0" "$c1" "$c2" "$(getconf CLK_TCK)" "$1" <<'EOF'
import json, sys
rej, srv = (json.load(open(f)) for f in sys.argv[1:3])
c0, c1, c2, hz = (int(x) for x in sys.argv[3:7])
label = sys.argv[7]
rejected = rej["errors"]["total"] + sum(v for k, v in rej["status"].items())
served = sum(v for k, v in srv["status"].items() if k.startswith("2"))
us = lambda ticks, n: ticks / hz * 1e6 / max(n, 1)
rej_t, srv_t = us(c1 - c0, rejected), us(c2 - c1, served)
print(f"[{label}] rejected: {rejected} attempts, tether CPU {(c1 - c0) / hz:.2f} s = {rej_t:.2f} us each")
print(f"[{label}] served:   {served} requests on new connections, tether CPU {(c2 - c1) / hz:.2f} s = {srv_t:.1f} us each")
print(f"[{label}] a rejected connection costs tether {srv_t / max(rej_t, 0.001):.1f}x less than a served request")
EOF
}
# 127.0.0.2 is still banned by phase 2's rule (60 s): its SYNs are dropped by the kernel filter.
refusal_cost "kernel filter" "$PID_full" "$P_FULL"
# The same node's config with the filter off and 127.0.0.2 listed: accepted, then closed.
sed -e "s/^\[deny\]$/[deny]\nkernel_filter = false\ndeny = [\"127.0.0.2\"]/" -e "s/:$P_FULL\"/:$P_CLOSE\"/" \
  "$WORK/full.toml" > "$WORK/close.toml"
TETHER_LOG=info "$TETHER" run -c "$WORK/close.toml" > "$WORK/close.log" 2>&1 &
PIDS+=($!)
PID_close=$!
for _ in $(seq 200); do grep -q "listening on" "$WORK/close.log" 2>/dev/null && break; sleep 0.05; done
refusal_cost "closed at accept" "$PID_close" "$P_CLOSE"
grep -c "deny list: .* exceeded" "$WORK/full.log" | sed "s/^/bans logged: /" || true
