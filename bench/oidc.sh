#!/usr/bin/env bash
# Single sign-on (issue #22), on loopback, in one run: a lone tether node and a clustered pair (a, b), each
# with one worker, the example users and two registered applications (`bench`, public; `rs`, a
# confidential resource server), in front of an nginx backend answering 200 "ok".
#
#   1. Token checks per core against the bearer check of the logins issue, same node, same run:
#      tether-bench closed loop (--connections, --duration) on GET /mail/x with tether's own bearer token
#      (auth = "login"), GET /.tether/userinfo with an application's access token, and
#      POST /.tether/introspect (RFC 7662, `rs` authenticated with Basic: argon2 once, then the
#      remembered SHA-256) of that token. --rounds rounds; medians, ratios to the bearer check, and
#      requests per CPU-second of tether (its utime + stime over the run, from /proc).
#   2. Code-for-token exchanges per core: --codes codes minted by GET /.tether/authorize (one logged-in
#      browser), then traded at POST /.tether/token (authorization_code, PKCE, public client: no argon2;
#      an ID token signed each time; the code spent with a sync write) by 8 Python clients; exchanges per
#      second and per CPU-second of tether (the clients are the bottleneck in wall time, the CPU-seconds
#      say what one core of tether does).
#   3. The single-use record's cost: 1000 sequential exchanges at node a (the sync write acknowledged by
#      b) and at the lone node (no peer: at once); p50 / p99 of both and the difference.
#
# Usage: bench/oidc.sh [--duration 8s] [--connections 50] [--rounds 3] [--codes 20000] [--port-base 19600]
# Needs nginx and python3. Binaries come from ${CARGO_TARGET_DIR:-target}/release (built first).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
# shellcheck source=bench/lib.sh
. bench/lib.sh

DURATION=8s
CONNECTIONS=50
ROUNDS=3
CODES=20000
PORT_BASE=19600
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) DURATION=$2; shift 2 ;;
    --connections) CONNECTIONS=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    --codes) CODES=$2; shift 2 ;;
    --port-base) PORT_BASE=$2; shift 2 ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
P_NGINX=$((PORT_BASE + 1)); P_LONE=$((PORT_BASE + 80)); P_A=$((PORT_BASE + 81)); P_B=$((PORT_BASE + 82))
R_A=$((PORT_BASE + 181)); R_B=$((PORT_BASE + 182))
bench_ports_free $P_NGINX $P_LONE $P_A $P_B $R_A $R_B
bench_tools
bench_build

bench_workdir oidc

"$TETHER" certs cluster --nodes a,b --out "$WORK/certs" >/dev/null
bench_nginx $P_NGINX
RS_SECRET=bench-resource-server-secret-0123456789
RS_HASH=$(echo "$RS_SECRET" | "$TETHER" clients secret --secret-stdin | sed -n 's/^secret_hash = "\(.*\)"$/\1/p')

common() {
  bench_node_base
  cat <<EOF
[auth]
hash_threads = 1
[pools.demo]
users = "$ROOT/configs/cluster/users.toml"
[[pools.demo.clients]]
client_id = "bench"
redirect_uris = ["http://app.test/cb"]
[[pools.demo.clients]]
client_id = "rs"
secret_hash = "$RS_HASH"
redirect_uris = ["http://rs.test/cb"]
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
declare -A PID
for n in lone a b; do
  TETHER_LOG=info "$TETHER" run -c "$WORK/$n.toml" > "$WORK/$n.log" 2>&1 &
  PIDS+=($!)
  PID[$n]=$!
done
for n in lone a b; do
  for _ in $(seq 200); do grep -q "listening on" "$WORK/$n.log" 2>/dev/null && break; sleep 0.05; done
  grep -q "listening on" "$WORK/$n.log" || { echo "node $n did not start:" >&2; tail -5 "$WORK/$n.log" >&2; exit 1; }
done
for _ in $(seq 100); do grep -q "link with a up" "$WORK/b.log" 2>/dev/null && break; sleep 0.1; done

# The Python side: a login, codes, exchanges. `python3 $WORK/sso.py PORT ACTION ARGS…`.
cat > "$WORK/sso.py" <<'EOF'
import base64, hashlib, http.client, json, sys, threading, time, urllib.parse
port, action = int(sys.argv[1]), sys.argv[2]
VERIFIER = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
CHALLENGE = base64.urlsafe_b64encode(hashlib.sha256(VERIFIER.encode()).digest()).rstrip(b"=").decode()
QUERY = "/.tether/authorize?" + urllib.parse.urlencode({"response_type": "code", "client_id": "bench",
    "redirect_uri": "http://app.test/cb", "scope": "openid profile", "code_challenge": CHALLENGE,
    "code_challenge_method": "S256"})
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
def conn(): return http.client.HTTPConnection("127.0.0.1", port)
def cookie(c):
    c.request("POST", "/.tether/login", "username=alice&password=tether-demo", FORM)
    r = c.getresponse(); r.read(); assert r.status == 303, r.status
    return [v.split(";")[0] for k, v in r.getheaders() if k.lower() == "set-cookie" and v.startswith("tether_session=")][0]
def codes(c, jar, n):
    out = []
    for _ in range(n):
        c.request("GET", QUERY, headers={"Cookie": jar}); r = c.getresponse(); r.read()
        assert r.status == 302, r.status
        out.append(urllib.parse.parse_qs(urllib.parse.urlparse(r.getheader("Location")).query)["code"][0])
    return out
def exchange(c, code):
    c.request("POST", "/.tether/token", urllib.parse.urlencode({"grant_type": "authorization_code", "code": code,
        "redirect_uri": "http://app.test/cb", "code_verifier": VERIFIER, "client_id": "bench"}), FORM)
    r = c.getresponse(); body = r.read(); assert r.status == 200, (r.status, body)
    return json.loads(body)
def pct(v, p):
    v = sorted(v); return v[min(len(v) - 1, int(len(v) * p))]
c = conn()
if action == "credentials":
    c.request("POST", "/.tether/login", json.dumps({"username": "alice", "password": "tether-demo"}),
              {"Content-Type": "application/json", "Accept": "application/json"})
    bearer = json.loads(c.getresponse().read())["access_token"]
    app = exchange(c, codes(c, cookie(c), 1)[0])["access_token"]
    print(bearer, app)
elif action == "mint":
    for code in codes(c, cookie(c), int(sys.argv[3])): print(code)
elif action == "exchange":
    todo = [l.strip() for l in open(sys.argv[3]) if l.strip()]
    parts = [todo[i::8] for i in range(8)]; bad = [0]
    def run(part):
        k = conn()
        for code in part:
            try: exchange(k, code)
            except AssertionError: bad[0] += 1
    ts = [threading.Thread(target=run, args=(p,)) for p in parts]
    t0 = time.monotonic()
    for t in ts: t.start()
    for t in ts: t.join()
    print(len(todo), time.monotonic() - t0, bad[0])
elif action == "latency":
    todo = codes(c, cookie(c), 1100); times = []
    for i, code in enumerate(todo):
        t = time.perf_counter(); exchange(c, code)
        if i >= 100: times.append((time.perf_counter() - t) * 1e6)
    print(pct(times, .5), pct(times, .99))
EOF

cpu() { # pid -> utime + stime in clock ticks
  awk '{ print $14 + $15 }' "/proc/$1/stat"
}
TICKS=$(getconf CLK_TCK)

read -r BEARER APP < <(python3 "$WORK/sso.py" $P_LONE credentials)
RS_BASIC="Authorization: Basic $(printf 'rs:%s' "$RS_SECRET" | base64 -w0)"

run() { # label url [args…]
  local label=$1 url=$2; shift 2
  local out="$WORK/run.json" before after
  before=$(cpu "${PID[lone]}")
  "$BENCH" -q --json -t1 -c"$CONNECTIONS" -d"$DURATION" --warmup 0s "$@" "$url" > "$out" 2>/dev/null
  after=$(cpu "${PID[lone]}")
  python3 - "$out" "$label" "$((after - before))" "$TICKS" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
errors = sum(v for k, v in r["status"].items() if not k.startswith("2")) + r["errors"]["total"]
lat = r["latency_us"]
cpu = int(sys.argv[3]) / int(sys.argv[4])
print(f"{sys.argv[2]} {r['requests_per_sec']:.0f} {lat.get('p50', 0)} {lat.get('p99', 0)} {errors} "
      f"{r['requests'] / cpu if cpu else 0:.0f}")
EOF
}

echo "== token checks, lone node, 1 worker, $CONNECTIONS connections, $DURATION per run, $ROUNDS rounds =="
: > "$WORK/checks.txt"
for _ in $(seq "$ROUNDS"); do
  run bearer "http://127.0.0.1:$P_LONE/mail/x" -H "Authorization: Bearer $BEARER" | tee -a "$WORK/checks.txt"
  run userinfo "http://127.0.0.1:$P_LONE/.tether/userinfo" -H "Authorization: Bearer $APP" | tee -a "$WORK/checks.txt"
  run introspect "http://127.0.0.1:$P_LONE/.tether/introspect" -m POST -H "$RS_BASIC" \
    -H "Content-Type: application/x-www-form-urlencoded" --body "token=$APP" | tee -a "$WORK/checks.txt"
done
python3 - "$WORK/checks.txt" <<'EOF'
import statistics, sys
by = {}
for l in open(sys.argv[1]):
    label, rps, p50, p99, errors, per_cpu = l.split()
    by.setdefault(label, []).append((float(rps), float(p50), float(p99), int(errors), float(per_cpu)))
med = lambda k, i: statistics.median(r[i] for r in by[k])
for k in ("bearer", "userinfo", "introspect"):
    print(f"{k:10s} median {med(k, 0):8.0f} req/s  p50 {med(k, 1):5.0f} us  p99 {med(k, 2):5.0f} us  "
          f"{med(k, 4):8.0f} req per CPU-second of tether  non-2xx {sum(r[3] for r in by[k])}")
for k in ("userinfo", "introspect"):
    print(f"{k} / bearer: {med(k, 0) / med('bearer', 0):.3f} (per CPU-second {med(k, 4) / med('bearer', 4):.3f})")
EOF

echo "== code-for-token exchanges, lone node, 1 worker, $CODES codes, 8 clients =="
python3 "$WORK/sso.py" $P_LONE mint "$CODES" > "$WORK/codes.txt"
before=$(cpu "${PID[lone]}")
read -r N TOOK BAD < <(python3 "$WORK/sso.py" $P_LONE exchange "$WORK/codes.txt")
after=$(cpu "${PID[lone]}")
python3 -c "
n, took, bad, cpu = $N, $TOOK, $BAD, ($after - $before) / $TICKS
print(f'{n} exchanges in {took:.2f} s: {n / took:.0f}/s (client-bound); tether used {cpu:.2f} CPU-s: '
      f'{n / cpu:.0f} exchanges per CPU-second; {bad} refused')"

echo "== the single-use record (sync write): 1000 sequential exchanges, node a (acked by b) vs lone =="
read -r A50 A99 < <(python3 "$WORK/sso.py" $P_A latency)
read -r L50 L99 < <(python3 "$WORK/sso.py" $P_LONE latency)
python3 -c "
a50, a99, l50, l99 = $A50, $A99, $L50, $L99
print(f'exchange node a: p50 {a50:6.0f} us p99 {a99:6.0f} us | lone: p50 {l50:6.0f} us p99 {l99:6.0f} us | '
      f'added p50 {a50 - l50:+5.0f} us p99 {a99 - l99:+5.0f} us')"
