#!/usr/bin/env bash
# How the mesh and Redis grow with the node count (issue #20), on loopback: for each N of --nodes (2, 4, 8),
# N tether nodes in a full mesh ([cluster]) and then N nodes on one redis-server ([store] backend =
# "redis", appendonly yes, appendfsync everysec), one worker each, the example users, nginx behind. Per N
# and backend, measured at the first node while the others idle:
#   - the sync write's latency: 1000 sequential refreshes (POST /.tether/token, the session record written
#     as a login writes it; answered once every streaming peer — mesh — or the server — Redis —
#     acknowledged it), p50 / p99;
#   - authenticated keep-alive throughput on GET /mail/x with a session cookie (tether-bench, --connections,
#     --duration), per node.
# Every node is a process on this machine: with 8 nodes on a 2-core machine the idle nodes' timers and
# heartbeats share the cores; the figures say how each backend's cost grows, not what a fleet of machines
# does.
#
# Usage: bench/redis_growth.sh [--nodes 2,4,8] [--duration 5s] [--connections 50] [--port-base 20300]
# Needs nginx, python3 and redis-server. Binaries come from ${CARGO_TARGET_DIR:-target}/release (built first).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
# shellcheck source=bench/lib.sh
. bench/lib.sh

NODES=2,4,8
DURATION=5s
CONNECTIONS=50
PORT_BASE=20300
while [ $# -gt 0 ]; do
  case "$1" in
    --nodes) NODES=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --connections) CONNECTIONS=$2; shift 2 ;;
    --port-base) PORT_BASE=$2; shift 2 ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
P_NGINX=$((PORT_BASE + 1)); P_REDIS=$((PORT_BASE + 2))
bench_ports_free $P_NGINX $P_REDIS $(seq $((PORT_BASE + 10)) $((PORT_BASE + 17))) \
  $(seq $((PORT_BASE + 110)) $((PORT_BASE + 117)))
bench_tools
command -v redis-server >/dev/null || { echo "redis-server is needed (apt-get install redis-server)" >&2; exit 1; }
bench_build
bench_workdir redis-growth
"$TETHER" certs cluster --nodes n0,n1,n2,n3,n4,n5,n6,n7 --out "$WORK/certs" >/dev/null
bench_nginx $P_NGINX

common() {
  bench_node_base
  cat <<EOF
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
mesh_node() { # index count
  local i=$1 n=$2 j peers=""
  for j in $(seq 0 $((n - 1))); do
    [ "$j" -eq "$i" ] && continue
    peers+="{ name = \"n$j\", address = \"127.0.0.1:$((PORT_BASE + 110 + j))\" }, "
  done
  common
  cat <<EOF
[[listeners]]
address = "127.0.0.1:$((PORT_BASE + 10 + i))"
[cluster]
name = "growth"
node = "n$i"
listen = "127.0.0.1:$((PORT_BASE + 110 + i))"
ready_timeout = "3s"
peers = [${peers%, }]
[cluster.tls]
ca = "$WORK/certs/ca.crt"
cert = "$WORK/certs/n$i.crt"
key = "$WORK/certs/n$i.key"
EOF
}
redis_node() { # index count
  common
  cat <<EOF
[[listeners]]
address = "127.0.0.1:$((PORT_BASE + 10 + $1))"
[store]
backend = "redis"
node = "n$1"
addresses = ["127.0.0.1:$P_REDIS"]
prefix = "growth$2"
EOF
}

start_nodes() { # backend count
  local i
  NODE_PIDS=()
  for i in $(seq 0 $(($2 - 1))); do
    "${1}_node" "$i" "$2" > "$WORK/$1-$2-n$i.toml"
    TETHER_LOG=info "$TETHER" run -c "$WORK/$1-$2-n$i.toml" > "$WORK/$1-$2-n$i.log" 2>&1 &
    NODE_PIDS+=($!); PIDS+=($!)
    # Redis nodes one after the other (each loads before it serves); mesh nodes all at once.
    if [ "$1" = redis ]; then wait_listening "$WORK/$1-$2-n$i.log"; fi
  done
  for i in $(seq 0 $(($2 - 1))); do wait_listening "$WORK/$1-$2-n$i.log"; done
  if [ "$1" = mesh ]; then
    # Every peer of n0 linked: a sync write waits for all of them.
    for _ in $(seq 200); do
      [ "$(grep -c "link with n[0-9] up" "$WORK/$1-$2-n0.log" || true)" -ge $(($2 - 1)) ] && break
      sleep 0.1
    done
  fi
}
wait_listening() {
  for _ in $(seq 300); do grep -q "listening on" "$1" 2>/dev/null && return; sleep 0.05; done
  echo "a node did not start: $1" >&2; tail -5 "$1" >&2; exit 1
}
stop_nodes() {
  local p
  for p in "${NODE_PIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
}

mkdir -p "$WORK/redis"
redis-server --port $P_REDIS --bind 127.0.0.1 --dir "$WORK/redis" --save "" --appendonly yes \
  --appendfsync everysec --daemonize no > "$WORK/redis.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do redis-cli -p $P_REDIS ping >/dev/null 2>&1 && break; sleep 0.05; done

measure() { # label port
  python3 - "$2" "$1" <<'EOF'
import http.client, json, sys, time
port, label = int(sys.argv[1]), sys.argv[2]
def pct(v, p):
    v = sorted(v); return v[min(len(v) - 1, int(len(v) * p))]
c = http.client.HTTPConnection("127.0.0.1", port)
c.request("POST", "/.tether/login", '{"username":"alice","password":"tether-demo"}',
          {"Content-Type": "application/json", "Accept": "application/json"})
r = c.getresponse(); refresh = json.loads(r.read())["refresh_token"]
times = []
for i in range(1100):
    t = time.perf_counter()
    c.request("POST", "/.tether/token", "grant_type=refresh_token&refresh_token=" + refresh,
              {"Content-Type": "application/x-www-form-urlencoded"})
    r = c.getresponse(); body = r.read(); assert r.status == 200, (r.status, body)
    if i >= 100: times.append((time.perf_counter() - t) * 1e6)
    refresh = json.loads(body)["refresh_token"]
print(f"{label} refresh p50 {pct(times, .5):.0f} us p99 {pct(times, .99):.0f} us")
EOF
  local cookie
  cookie=$(python3 - "$2" <<'EOF'
import http.client, sys
c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]))
c.request("POST", "/.tether/login", "username=alice&password=tether-demo",
          {"Content-Type": "application/x-www-form-urlencoded"})
r = c.getresponse(); r.read()
print([v.split(";")[0] for k, v in r.getheaders() if k.lower() == "set-cookie" and v.startswith("tether_session=")][0])
EOF
)
  "$BENCH" -q --json -t1 -c"$CONNECTIONS" -d"$DURATION" -H "Cookie: $cookie" "http://127.0.0.1:$2/mail/x" \
    > "$WORK/run.json" 2>/dev/null
  python3 - "$WORK/run.json" "$1" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
errors = sum(v for k, v in r["status"].items() if not k.startswith("2")) + r["errors"]["total"]
print(f"{sys.argv[2]} keep-alive {r['requests_per_sec']:.0f} req/s p99 {r['latency_us'].get('p99', 0)} us non-2xx {errors}")
EOF
}

for n in ${NODES//,/ }; do
  for backend in mesh redis; do
    echo "== $backend, $n nodes =="
    start_nodes $backend "$n"
    measure "$backend n=$n" $((PORT_BASE + 10))
    stop_nodes
  done
done
