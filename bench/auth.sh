#!/usr/bin/env bash
# Logins at the balancer (issue #14), on loopback, in one run: a lone tether node and a pair of clustered
# nodes (a, b), each with one worker and the example users (configs/cluster/users.toml), in front of an
# nginx backend answering 200 "ok".
#
#   1. Authenticated keep-alive against plain keep-alive, same node, same run: tether-bench closed loop
#      (--connections, --duration) on GET /open/x (a route with auth = "none"), GET /mail/x with the
#      session cookie, GET /mail/x with a bearer access token (auth = "login": the token checked, the
#      session looked up in the store, identity headers and the JWT added), then /open/x again. --rounds
#      rounds; the medians and the ratios to plain.
#   2. Logins per second per core: the lone node with [auth] hash_threads = 1 (one argon2 thread) under
#      8 concurrent clients posting correct credentials for --duration; the argon2 parameters are
#      printed (m, t, p from the users file's hashes).
#   3. The sync write's cost on a login: a session is written with the sync class, and the answer leaves
#      once a replica acknowledged it. Measured on refresh (POST /.tether/token), which writes the session
#      record exactly as a login does but without the 25 ms of argon2 that would drown the difference:
#      2000 sequential refreshes on node a (ack from b) and on the lone node (no peer: acknowledged at
#      once); p50 / p99 of both and the difference. Logins themselves (200 sequential) on both, too.
#
# Usage: bench/auth.sh [--duration 10s] [--connections 50] [--rounds 3] [--port-base 19500]
# Needs nginx and python3. Binaries come from ${CARGO_TARGET_DIR:-target}/release (built first).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
# shellcheck source=bench/lib.sh
. bench/lib.sh

DURATION=10s
CONNECTIONS=50
ROUNDS=3
PORT_BASE=19500
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
SECS=${DURATION%s}
P_NGINX=$((PORT_BASE + 1)); P_LONE=$((PORT_BASE + 80)); P_A=$((PORT_BASE + 81)); P_B=$((PORT_BASE + 82))
R_A=$((PORT_BASE + 181)); R_B=$((PORT_BASE + 182))
bench_ports_free $P_NGINX $P_LONE $P_A $P_B $R_A $R_B
bench_tools
bench_build

bench_workdir auth

"$TETHER" certs cluster --nodes a,b --out "$WORK/certs" >/dev/null
bench_nginx $P_NGINX

common() {
  bench_node_base
  cat <<EOF
[auth]
hash_threads = 1
hash_queue = 64
[pools.demo]
users = "$ROOT/configs/cluster/users.toml"
[clusters.app]
backends = [{ address = "127.0.0.1:$P_NGINX" }]
[[routes]]
path_prefix = "/mail/"
cluster = "app"
auth = "login"
[[routes]]
path_prefix = "/"
cluster = "app"
EOF
}
node() { # name listen-port repl-port peer peer-repl-port
  common
  bench_cluster_node "$@" 3s
}
{ common; printf '[[listeners]]\naddress = "127.0.0.1:%s"\n' $P_LONE; } > "$WORK/lone.toml"
node a $P_A $R_A b $R_B > "$WORK/a.toml"
node b $P_B $R_B a $R_A > "$WORK/b.toml"
for n in lone a b; do
  TETHER_LOG=info "$TETHER" run -c "$WORK/$n.toml" > "$WORK/$n.log" 2>&1 &
  PIDS+=($!)
done
for n in lone a b; do
  for _ in $(seq 200); do grep -q "listening on" "$WORK/$n.log" 2>/dev/null && break; sleep 0.05; done
  grep -q "listening on" "$WORK/$n.log" || { echo "node $n did not start:" >&2; tail -5 "$WORK/$n.log" >&2; exit 1; }
done
for _ in $(seq 100); do grep -q "link with a up" "$WORK/b.log" 2>/dev/null && break; sleep 0.1; done

# Credentials for the keep-alive runs: a session cookie (form login) and a bearer token (JSON login).
read -r COOKIE BEARER < <(python3 - "$P_LONE" <<'EOF'
import http.client, json, sys
port = int(sys.argv[1])
c = http.client.HTTPConnection("127.0.0.1", port)
c.request("POST", "/.tether/login", "username=alice&password=tether-demo",
          {"Content-Type": "application/x-www-form-urlencoded"})
r = c.getresponse(); r.read()
cookie = [v.split(";")[0] for k, v in r.getheaders() if k.lower() == "set-cookie" and v.startswith("tether_session=")][0]
c.request("POST", "/.tether/login", json.dumps({"username": "alice", "password": "tether-demo"}),
          {"Content-Type": "application/json", "Accept": "application/json"})
r = c.getresponse(); token = json.loads(r.read())["access_token"]
print(cookie, token)
EOF
)

run() { # label url [header]
  local out="$WORK/run.json"
  if [ -n "${3:-}" ]; then
    "$BENCH" -q --json -t1 -c"$CONNECTIONS" -d"$DURATION" -H "$3" "$2" > "$out" 2>/dev/null
  else
    "$BENCH" -q --json -t1 -c"$CONNECTIONS" -d"$DURATION" "$2" > "$out" 2>/dev/null
  fi
  python3 - "$out" "$1" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
errors = sum(v for k, v in r["status"].items() if not k.startswith("2")) + r["errors"]["total"]
lat = r["latency_us"]
print(f"{sys.argv[2]} {r['requests_per_sec']:.0f} {lat.get('p50', 0)} {lat.get('p99', 0)} {errors}")
EOF
}

echo "== keep-alive, lone node, 1 worker, $CONNECTIONS connections, $DURATION per run, $ROUNDS rounds =="
: > "$WORK/ka.txt"
for round in $(seq "$ROUNDS"); do
  run plain "http://127.0.0.1:$P_LONE/open/x" | tee -a "$WORK/ka.txt"
  run cookie "http://127.0.0.1:$P_LONE/mail/x" "Cookie: $COOKIE" | tee -a "$WORK/ka.txt"
  run bearer "http://127.0.0.1:$P_LONE/mail/x" "Authorization: Bearer $BEARER" | tee -a "$WORK/ka.txt"
  run plain "http://127.0.0.1:$P_LONE/open/x" | tee -a "$WORK/ka.txt"
done
python3 - "$WORK/ka.txt" <<'EOF'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
by = {}
for label, rps, p50, p99, errors in rows:
    by.setdefault(label, []).append((float(rps), float(p50), float(p99), int(errors)))
med = {k: statistics.median(r[0] for r in v) for k, v in by.items()}
for k in ("plain", "cookie", "bearer"):
    v = by[k]
    print(f"{k:7s} median {med[k]:9.0f} req/s  p50 {statistics.median(r[1] for r in v):6.0f} us  "
          f"p99 {statistics.median(r[2] for r in v):6.0f} us  non-2xx {sum(r[3] for r in v)}")
for k in ("cookie", "bearer"):
    print(f"{k} / plain: {med[k] / med['plain']:.3f}")
EOF

echo "== logins per second, lone node, one argon2 thread, 8 clients, $DURATION =="
python3 - "$P_LONE" "$SECS" "$ROOT/configs/cluster/users.toml" <<'EOF'
import http.client, re, sys, threading, time
port, secs = int(sys.argv[1]), float(sys.argv[2])
params = re.search(r"\$argon2id\$v=19\$(m=\d+,t=\d+,p=\d+)", open(sys.argv[3]).read()).group(1)
ok = [0] * 8; other = [0] * 8
end = time.monotonic() + secs
def client(i):
    c = http.client.HTTPConnection("127.0.0.1", port)
    while time.monotonic() < end:
        c.request("POST", "/.tether/login", '{"username":"alice","password":"tether-demo"}',
                  {"Content-Type": "application/json", "Accept": "application/json"})
        r = c.getresponse(); r.read()
        if r.status == 200: ok[i] += 1
        else: other[i] += 1
ts = [threading.Thread(target=client, args=(i,)) for i in range(8)]
start = time.monotonic()
for t in ts: t.start()
for t in ts: t.join()
took = time.monotonic() - start
print(f"argon2id {params}: {sum(ok) / took:.1f} logins/s on one hash thread (one core); "
      f"{sum(ok)} logins, {sum(other)} other answers (503 busy) in {took:.1f} s")
EOF

echo "== the sync write on a login: refresh and login latency, node a (acked by b) vs lone =="
python3 bench/scripts/login_latency.py "$P_A" "node a (sync ack from b)" "$P_LONE" "lone"
