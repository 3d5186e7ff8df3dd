#!/usr/bin/env bash
# The replicated store on the mesh against Redis (issue #20), on loopback, same run: a pair of nodes (a, b)
# with [cluster] (the mesh) and a pair (ra, rb) with [store] backend = "redis" on one redis-server
# (appendonly yes, appendfsync everysec: Redis's own durable default), each node with one worker and the
# example users, in front of an nginx backend answering 200 "ok".
#
#   1. Authenticated keep-alive throughput: tether-bench closed loop (--connections, --duration) on
#      GET /mail/x with a session cookie (the session read from the local store: no round trip on either
#      backend), at a and at ra, --rounds rounds alternating; medians.
#   2. Login latency (a sync write: answered once b, or the Redis server, acknowledged the session): 200
#      sequential JSON logins at a and at ra; and 2000 sequential refreshes (POST /.tether/token: the same
#      sync write of the session without argon2's 25 ms); p50 / p99.
#   3. Publish-to-delivery latency across nodes: an SSE stream open at b (rb) for bob's session, 500
#      publishes one after the other at a's (ra's) publish listener, each timed from its send to the event's
#      arrival on the stream at the other node; p50 / p99.
#
# Usage: bench/redis.sh [--duration 10s] [--connections 50] [--rounds 3] [--port-base 19900]
# Needs nginx, python3 and redis-server. Binaries come from ${CARGO_TARGET_DIR:-target}/release (built first).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
# shellcheck source=bench/lib.sh
. bench/lib.sh

DURATION=10s
CONNECTIONS=50
ROUNDS=3
PORT_BASE=19900
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
P_NGINX=$((PORT_BASE + 1)); P_A=$((PORT_BASE + 80)); P_B=$((PORT_BASE + 81))
P_RA=$((PORT_BASE + 90)); P_RB=$((PORT_BASE + 91))
PUB_A=$((PORT_BASE + 85)); PUB_B=$((PORT_BASE + 86)); PUB_RA=$((PORT_BASE + 95)); PUB_RB=$((PORT_BASE + 96))
R_A=$((PORT_BASE + 181)); R_B=$((PORT_BASE + 182)); P_REDIS=$((PORT_BASE + 200))
bench_ports_free $P_NGINX $P_A $P_B $P_RA $P_RB $PUB_A $PUB_B $PUB_RA $PUB_RB $R_A $R_B $P_REDIS
bench_tools
command -v redis-server >/dev/null || { echo "redis-server is needed (apt-get install redis-server)" >&2; exit 1; }
bench_build

bench_workdir redis
"$TETHER" certs cluster --nodes a,b --out "$WORK/certs" >/dev/null
bench_nginx $P_NGINX
mkdir -p "$WORK/redis"
redis-server --port $P_REDIS --bind 127.0.0.1 --dir "$WORK/redis" --save "" --appendonly yes \
  --appendfsync everysec --daemonize no > "$WORK/redis.log" 2>&1 &
PIDS+=($!)

SECRET=bench-publish-secret
common() { # publish-port
  bench_node_base
  cat <<EOF
[pools.demo]
users = "$ROOT/configs/cluster/users.toml"
[notifications]
publish_address = "127.0.0.1:$1"
publish_secret = "$SECRET"
[clusters.app]
backends = [{ address = "127.0.0.1:$P_NGINX" }]
[[routes]]
path_prefix = "/mail/"
cluster = "app"
auth = "login"
notifications = true
[[routes]]
path_prefix = "/"
cluster = "app"
EOF
}
redis_node() { # name client-port publish-port
  common "$3"
  cat <<EOF
[[listeners]]
address = "127.0.0.1:$2"
[store]
backend = "redis"
node = "$1"
addresses = ["127.0.0.1:$P_REDIS"]
prefix = "bench"
EOF
}
{ common $PUB_A; bench_cluster_node a $P_A $R_A b $R_B 3s; } > "$WORK/a.toml"
{ common $PUB_B; bench_cluster_node b $P_B $R_B a $R_A 3s; } > "$WORK/b.toml"
redis_node ra $P_RA $PUB_RA > "$WORK/ra.toml"
redis_node rb $P_RB $PUB_RB > "$WORK/rb.toml"
for _ in $(seq 100); do redis-cli -p $P_REDIS ping >/dev/null 2>&1 && break; sleep 0.05; done
for n in a b ra rb; do
  TETHER_LOG=info "$TETHER" run -c "$WORK/$n.toml" > "$WORK/$n.log" 2>&1 &
  PIDS+=($!)
  # One after the other: each Redis node loads what the server holds before it serves.
  for _ in $(seq 200); do grep -q "listening on" "$WORK/$n.log" 2>/dev/null && break; sleep 0.05; done
  grep -q "listening on" "$WORK/$n.log" || { echo "node $n did not start:" >&2; tail -5 "$WORK/$n.log" >&2; exit 1; }
done
for _ in $(seq 100); do grep -q "link with a up" "$WORK/b.log" 2>/dev/null && break; sleep 0.1; done

cookie() { # port [user]
  python3 - "$1" "${2:-alice}" <<'EOF'
import http.client, sys
c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]))
c.request("POST", "/.tether/login", f"username={sys.argv[2]}&password=tether-demo",
          {"Content-Type": "application/x-www-form-urlencoded"})
r = c.getresponse(); r.read()
print([v.split(";")[0] for k, v in r.getheaders() if k.lower() == "set-cookie" and v.startswith("tether_session=")][0])
EOF
}
COOKIE_MESH=$(cookie $P_A)
COOKIE_REDIS=$(cookie $P_RA)
# bob's one session receives the notifications (alice has hundreds by then: a publish to her writes one
# notification per session).
BOB_MESH=$(cookie $P_A bob)
BOB_REDIS=$(cookie $P_RA bob)

run() { # label url cookie
  local out="$WORK/run.json"
  "$BENCH" -q --json -t1 -c"$CONNECTIONS" -d"$DURATION" -H "Cookie: $3" "$2" > "$out" 2>/dev/null
  python3 - "$out" "$1" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
errors = sum(v for k, v in r["status"].items() if not k.startswith("2")) + r["errors"]["total"]
lat = r["latency_us"]
print(f"{sys.argv[2]} {r['requests_per_sec']:.0f} {lat.get('p50', 0)} {lat.get('p99', 0)} {errors}")
EOF
}

echo "== authenticated keep-alive, 1 worker, $CONNECTIONS connections, $DURATION per run, $ROUNDS rounds =="
: > "$WORK/ka.txt"
for round in $(seq "$ROUNDS"); do
  if [ $((round % 2)) -eq 1 ]; then
    run mesh "http://127.0.0.1:$P_A/mail/x" "$COOKIE_MESH" | tee -a "$WORK/ka.txt"
    run redis "http://127.0.0.1:$P_RA/mail/x" "$COOKIE_REDIS" | tee -a "$WORK/ka.txt"
  else
    run redis "http://127.0.0.1:$P_RA/mail/x" "$COOKIE_REDIS" | tee -a "$WORK/ka.txt"
    run mesh "http://127.0.0.1:$P_A/mail/x" "$COOKIE_MESH" | tee -a "$WORK/ka.txt"
  fi
done
python3 - "$WORK/ka.txt" <<'EOF'
import statistics, sys
by = {}
for label, rps, p50, p99, errors in (l.split() for l in open(sys.argv[1]) if l.strip()):
    by.setdefault(label, []).append((float(rps), float(p50), float(p99), int(errors)))
for k in ("mesh", "redis"):
    v = by[k]
    print(f"{k:6s} median {statistics.median(r[0] for r in v):9.0f} req/s  p50 {statistics.median(r[1] for r in v):6.0f} us  "
          f"p99 {statistics.median(r[2] for r in v):6.0f} us  non-2xx {sum(r[3] for r in v)}")
m = {k: statistics.median(r[0] for r in v) for k, v in by.items()}
print(f"redis / mesh: {m['redis'] / m['mesh']:.3f}")
EOF

echo "== login and refresh latency (sync writes): a (ack from b) vs ra (ack from redis) =="
python3 bench/scripts/login_latency.py "$P_A" "mesh (ack from b)" "$P_RA" "redis"

echo "== publish-to-delivery across nodes: publish at a (ra), SSE at b (rb), 500 one after the other =="
python3 - "$P_B" "$PUB_A" "$BOB_MESH" "$P_RB" "$PUB_RA" "$BOB_REDIS" "$SECRET" <<'EOF'
import http.client, json, socket, sys, time
secret = sys.argv[7]
def pct(v, p):
    v = sorted(v); return v[min(len(v) - 1, int(len(v) * p))]
def measure(stream_port, pub_port, cookie):
    s = socket.create_connection(("127.0.0.1", stream_port))
    s.sendall(f"GET /.tether/notifications HTTP/1.1\r\nHost: t\r\nAccept: text/event-stream\r\nCookie: {cookie}\r\n\r\n".encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += s.recv(65536)
    assert buf.startswith(b"HTTP/1.1 200"), buf[:100]
    buf = buf.split(b"\r\n\r\n", 1)[1]
    pub = http.client.HTTPConnection("127.0.0.1", pub_port)
    times = []
    for i in range(550):
        t = time.perf_counter()
        pub.request("POST", "/publish", json.dumps({"user": "bob", "data": {"i": i}}),
                    {"Content-Type": "application/json", "Authorization": f"Bearer {secret}"})
        r = pub.getresponse(); r.read(); assert r.status == 202, r.status
        want = f'"i":{i}'.encode()
        while want not in buf:
            buf += s.recv(65536)
        buf = buf.split(want, 1)[1]
        if i >= 50: times.append((time.perf_counter() - t) * 1e6)
    return times
m = measure(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
r = measure(int(sys.argv[4]), int(sys.argv[5]), sys.argv[6])
print(f"mesh:  p50 {pct(m, .5):7.0f} us p99 {pct(m, .99):7.0f} us")
print(f"redis: p50 {pct(r, .5):7.0f} us p99 {pct(r, .99):7.0f} us")
EOF
