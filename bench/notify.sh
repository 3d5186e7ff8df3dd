#!/usr/bin/env bash
# Notifications (issue #16), on loopback, in one run: a lone tether node (one worker) and Pushpin (Debian's
# package, its default process layout) side by side, each in front of one nginx backend, driven by
# sse-fanout (bench/src/bin/sse_fanout.rs); then piggybacking's cost measured with tether-bench.
#
#   1. Memory per idle SSE subscriber: --streams (10,000) Server-Sent Events streams are opened and held
#      (tether: GET /.tether/notifications with a session cookie and Accept: text/event-stream; Pushpin: a
#      GET its backend answers with Grip-Hold: stream and a Grip-Channel). (RSS with the streams open and
#      settled − RSS just before they were opened) / streams, from /proc/PID/status (VmRSS; for Pushpin the
#      sum over the runner and every process it starts). Sessions are logged in first, so they are in the
#      "before" figure: the streams' own cost is measured.
#   2. Publish-to-delivery latency at --rate (10,000) notifications/s: an open-loop publisher over 32
#      keep-alive connections (tether: POST /publish {"session":SID,"data":{"t":…}} with the bearer
#      secret; Pushpin: POST /publish/ with one http-stream item per request), each event carrying its
#      intended send time; the subscribers record receive time − intended send time (one process, one
#      monotonic clock) in an HDR histogram. The mapping: of the 10,000 streams, 100 are "active" — 100
#      login sessions (Pushpin: 100 channels) with one stream each — and publishes go round-robin over
#      them (100/s each), so 10,000 notifications/s are 10,000 deliveries/s; the other 9,900 streams (100
#      sessions / channels, 99 streams each) stay open and idle throughout. tether runs with
#      delete_on = "delivery" here (a streamed notification is deleted once written, as Pushpin keeps
#      nothing); Pushpin's handler with message_rate = 0 (its publish rate limiter off): with the limiter on,
#      at its default 2,500/s or raised to 100,000/s, Pushpin 1.36 held every message of a steady stream
#      of publishes (even 200/s) until the publishing paused — seconds of latency that are the limiter's,
#      not the delivery's. Pushpin's publish listener answers every request with Connection: close, so its
#      publisher opens a connection per publish (tether's keeps 32 alive).
#      Both targets are restarted every round (fresh processes, so RSS deltas are not flattered by freed
#      memory being reused), and their order alternates between rounds.
#   3. Piggybacking: tether-bench closed loop (--connections, one thread) with a session cookie on three
#      logged-in routes of another lone tether node (one worker, delete_on = "ack"): /plain/ (no
#      notifications), /note/ (notifications = true) with a session that has nothing pending, and /note/
#      with a session that has 3 pending notifications (never acknowledged, so every response carries all
#      three, ~120 bytes of header, inside piggyback_bytes). Interleaved, --rounds rounds; medians and
#      ratios to /plain/.
#
# Usage: bench/notify.sh [--duration 8s] [--rounds 3] [--streams 10000] [--rates 10000,2000] [--connections 50]
#                        [--port-base 19700] [--no-pushpin]
# Needs nginx, python3 and pushpin (apt-get install pushpin), and a hard open-file limit above the stream
# count for the shell (`ulimit -Hn`; 20000 is enough for 10,000 streams: the client and each server are
# separate processes, each raises its soft limit). Binaries come from ${CARGO_TARGET_DIR:-target}/release
# (built first).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
# shellcheck source=bench/lib.sh
. bench/lib.sh

DURATION=8s
ROUNDS=3
STREAMS=10000
RATES="10000 2000"
CONNECTIONS=50
PORT_BASE=19700
PUSHPIN=1
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) DURATION=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    --streams) STREAMS=$2; shift 2 ;;
    --rate|--rates) RATES=${2//,/ }; shift 2 ;;
    --connections) CONNECTIONS=$2; shift 2 ;;
    --port-base) PORT_BASE=$2; shift 2 ;;
    --no-pushpin) PUSHPIN=0; shift ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
ACTIVE=100
IDLE_SESSIONS=100
IDLE_STREAMS=$((STREAMS - ACTIVE))
P_NGINX=$((PORT_BASE + 1)); P_SSE=$((PORT_BASE + 80)); P_SSE_PUB=$((PORT_BASE + 81))
P_PG=$((PORT_BASE + 82)); P_PG_PUB=$((PORT_BASE + 83))
P_PP=$((PORT_BASE + 90)); P_PP_PUB=$((PORT_BASE + 91)); P_PP_ZMQ=$((PORT_BASE + 92))
bench_ports_free $P_NGINX $P_SSE $P_SSE_PUB $P_PG $P_PG_PUB $P_PP $P_PP_PUB \
  $P_PP_ZMQ $((P_PP_ZMQ + 1)) $((P_PP_ZMQ + 2)) $((P_PP_ZMQ + 3))
bench_tools
if [ "$PUSHPIN" = 1 ]; then
  command -v pushpin >/dev/null || { echo "pushpin is needed (apt-get install pushpin), or --no-pushpin" >&2; exit 1; }
fi
[ "$(ulimit -Hn)" = unlimited ] || [ "$(ulimit -Hn)" -gt $((STREAMS + 200)) ] ||
  { echo "the hard open-file limit ($(ulimit -Hn)) is below $STREAMS streams; raise it (ulimit -Hn)" >&2; exit 1; }
ulimit -n "$(ulimit -Hn)"
bench_build
FANOUT="$(dirname "$BENCH")/sse-fanout"
SECRET=bench-publish-secret-0123456789

bench_workdir notify

# nginx: 200 "ok"; /whoami/ echoes the identity JWT tether adds (its sid claim names the session, which a
# per-session publish addresses); /stream/ holds a Pushpin stream on channel ?ch=.
bench_nginx "$P_NGINX" "    location /whoami/ { default_type text/plain; return 200 \"\$http_x_tether_identity\"; }
    location /stream/ {
      default_type text/event-stream;
      add_header Grip-Hold stream;
      add_header Grip-Channel \$arg_ch;
      return 200 \"\";
    }"

tether_conf() { # listen publish delete_on
  cat <<EOF
[workers]
count = 1
max_connections = $((STREAMS + 2000))
[access_log]
enabled = false
[sessions]
cookie_keys = ["kcMB/O5DuPOMn88OULhftFV4i5xS2kqBL4VHkYJk7aE="]
[auth]
hash_threads = 2
hash_queue = 512
[pools.demo]
users = "$ROOT/configs/cluster/users.toml"
[notifications]
publish_address = "127.0.0.1:$2"
publish_secret = "$SECRET"
delete_on = "$3"
[clusters.app]
backends = [{ address = "127.0.0.1:$P_NGINX" }]
[[listeners]]
address = "127.0.0.1:$1"
backlog = 4096
[[routes]]
path_prefix = "/plain/"
cluster = "app"
auth = "login"
[[routes]]
path_prefix = "/note/"
cluster = "app"
auth = "login"
notifications = true
[[routes]]
path_prefix = "/whoami/"
cluster = "app"
auth = "login"
[[routes]]
path_prefix = "/"
cluster = "app"
EOF
}
tether_conf $P_SSE $P_SSE_PUB delivery > "$WORK/sse.toml"
tether_conf $P_PG $P_PG_PUB ack > "$WORK/pg.toml"

start_tether() { # name -> TETHER_PID
  TETHER_LOG=info "$TETHER" run -c "$WORK/$1.toml" > "$WORK/$1.log" 2>&1 &
  TETHER_PID=$!
  PIDS+=($TETHER_PID)
  local t0=$SECONDS
  for _ in $(seq 1800); do
    grep -q "listening on" "$WORK/$1.log" 2>/dev/null && break
    kill -0 "$TETHER_PID" 2>/dev/null || break
    sleep 0.05
  done
  grep -q "listening on" "$WORK/$1.log" || {
    echo "tether $1 did not start ($(kill -0 "$TETHER_PID" 2>/dev/null && echo running || echo exited)):" >&2
    tail -5 "$WORK/$1.log" >&2; exit 1; }
  # Seen twice right after Pushpin (10,000 connections) was stopped: tether logged nothing for over 10 s.
  [ $((SECONDS - t0)) -lt 5 ] || echo "         (tether $1 took $((SECONDS - t0)) s to start)"
}

# Logs in N sessions of alice at a port; prints "cookie sid" per line.
login() { # port count
  python3 - "$1" "$2" <<'EOF'
import base64, http.client, json, sys
from concurrent.futures import ThreadPoolExecutor
port, n = int(sys.argv[1]), int(sys.argv[2])
def one(_):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    c.request("POST", "/.tether/login", "username=alice&password=tether-demo",
              {"Content-Type": "application/x-www-form-urlencoded"})
    r = c.getresponse(); r.read()
    cookie = [v.split(";")[0] for k, v in r.getheaders()
              if k.lower() == "set-cookie" and v.startswith("tether_session=")][0]
    c.request("GET", "/whoami/", headers={"Cookie": cookie})
    r = c.getresponse(); jwt = r.read().decode()
    claims = jwt.split(".")[1]
    sid = json.loads(base64.urlsafe_b64decode(claims + "=" * (-len(claims) % 4)))["sid"]
    return cookie, sid
with ThreadPoolExecutor(4) as ex:
    for cookie, sid in ex.map(one, range(n)):
        print(cookie, sid)
EOF
}

# The plan files: ACTIVE streams on their own keys, IDLE_STREAMS spread over IDLE_SESSIONS keys.
tether_plan() { # sessions-file
  python3 - "$1" "$ACTIVE" "$IDLE_SESSIONS" "$IDLE_STREAMS" <<'EOF'
import sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
active, idle_sessions, idle = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
h = "Accept: text/event-stream"
for cookie, sid in rows[:active]:
    print(f"1\t{sid}\t/.tether/notifications\tCookie: {cookie}\t{h}")
for i, (cookie, sid) in enumerate(rows[active:active + idle_sessions]):
    n = idle // idle_sessions + (1 if i < idle % idle_sessions else 0)
    print(f"{n}\t-\t/.tether/notifications\tCookie: {cookie}\t{h}")
EOF
}
pushpin_plan() {
  python3 - "$ACTIVE" "$IDLE_SESSIONS" "$IDLE_STREAMS" <<'EOF'
import sys
active, idle_sessions, idle = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
for i in range(active):
    print(f"1\ta{i}\t/stream/?ch=a{i}\tAccept: text/event-stream")
for i in range(idle_sessions):
    n = idle // idle_sessions + (1 if i < idle % idle_sessions else 0)
    print(f"{n}\t-\t/stream/?ch=idle{i}\tAccept: text/event-stream")
EOF
}

pushpin_conf() {
  mkdir -p "$WORK/pushpin/run" "$WORK/pushpin/log"
  echo "* 127.0.0.1:$P_NGINX" > "$WORK/pushpin/routes"
  sed -e "s|^rundir=.*|rundir=$WORK/pushpin/run|" \
      -e "s|^logdir=.*|logdir=$WORK/pushpin/log|" \
      -e "s|^http_port=.*|http_port=$P_PP|" \
      -e "s|^push_in_http_port=.*|push_in_http_port=$P_PP_PUB|" \
      -e "s|^push_in_spec=.*|push_in_spec=tcp://127.0.0.1:$P_PP_ZMQ|" \
      -e "s|^push_in_sub_specs=.*|push_in_sub_specs=tcp://127.0.0.1:$((P_PP_ZMQ + 1))|" \
      -e "s|^command_spec=tcp.*|command_spec=tcp://127.0.0.1:$((P_PP_ZMQ + 2))|" \
      -e "s|^message_rate=.*|message_rate=0|" \
      -e "s|^routesfile=.*|routesfile=$WORK/pushpin/routes|" \
      -e "s|^stats_connection_ttl=.*|stats_connection_ttl=120|" \
      -e "s|^services=.*|services=condure,zurl,pushpin-proxy,pushpin-handler|" \
      -e "s|^log_level=.*|log_level=1|" \
      /etc/pushpin/pushpin.conf > "$WORK/pushpin/pushpin.conf"
  # Outgoing requests (to the backend) go through zurl, which the runner starts from its template; the
  # packaged internal.conf points the proxy at a system zurl under /var/run/zurl instead.
  sed -i "/^\[proxy\]/a zurl_out_specs=ipc://$WORK/pushpin/run/pushpin-zurl-in\\nzurl_out_stream_specs=ipc://$WORK/pushpin/run/pushpin-zurl-in-stream\\nzurl_in_specs=ipc://$WORK/pushpin/run/pushpin-zurl-out" "$WORK/pushpin/pushpin.conf"
}

start_pushpin() { # -> PUSHPIN_PID, PUSHPIN_PIDS (runner and children)
  rm -rf "$WORK/pushpin/run"/* "$WORK/pushpin/log"/*
  pushpin --config "$WORK/pushpin/pushpin.conf" --merge-output > "$WORK/pushpin.log" 2>&1 &
  PUSHPIN_PID=$!
  PIDS+=($PUSHPIN_PID)
  for _ in $(seq 200); do
    curl -s -o /dev/null "http://127.0.0.1:$P_PP/" 2>/dev/null && break; sleep 0.1
  done
  sleep 1
  PUSHPIN_PIDS=$(echo "$PUSHPIN_PID" $(pgrep -P "$PUSHPIN_PID") | tr ' ' ',')
}
stop_pid() { kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

fanout() { # target plan connect publish path pids header out rate
  "$FANOUT" --target "$1" --plan "$2" --connect "$3" --publish "$4" --publish-path "$5" --pids "$6" \
    ${7:+--publish-header "$7"} --rate "$9" --duration "$DURATION" --warmup 1s --settle 2s --open-batch 64 \
    > "$8" 2> "$8.err" || { echo "sse-fanout $1 failed:" >&2; cat "$8.err" >&2; exit 1; }
}

summary() { # json label
  python3 - "$1" "$2" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1])); lat = r["latency_us"]; p = r["publish"]
exp = max(p["expected_deliveries"], 1)
print(f"{sys.argv[2]:8s} streams {r['streams_open']}/{r['streams_wanted']} (opened in {r['open_secs']:.1f}s, "
      f"errors {sum(r['sub_errors'].values())})  RSS {r['rss_before_kib']/1024:.1f} -> "
      f"{r['rss_open_kib']/1024:.1f} MiB = {r['bytes_per_stream']:.0f} B/stream, after publishing "
      f"{r['rss_after_publish_kib']/1024:.1f} MiB")
print(f"{'':8s} published {p['sent']} ({p['status']}, errors {p['errors']}, behind at end {p['backlog_at_end']}, "
      f"max send lag {p['max_send_lag_us']/1000:.1f} ms)  delivered {r['delivered_measured']}/{p['expected_deliveries']} "
      f"({100*r['delivered_measured']/exp:.1f}%)  latency p50 {lat.get('p50',0)/1000:.2f} ms "
      f"p90 {lat.get('p90',0)/1000:.2f} p99 {lat.get('p99',0)/1000:.2f} p99.9 {lat.get('p999',0)/1000:.2f} "
      f"max {lat.get('max',0)/1000:.1f} ms")
EOF
}

[ "$PUSHPIN" = 1 ] && pushpin_conf
pushpin_plan > "$WORK/pushpin.plan"
echo "== SSE fan-out: $STREAMS streams ($ACTIVE active, $IDLE_STREAMS idle), publishing at $RATES /s for $DURATION (after 1s), $ROUNDS rounds =="
: > "$WORK/sse.txt"
run_tether() { # round rate
  start_tether sse
  login $P_SSE $((ACTIVE + IDLE_SESSIONS)) > "$WORK/sessions.txt"
  tether_plan "$WORK/sessions.txt" > "$WORK/tether.plan"
  fanout tether "$WORK/tether.plan" 127.0.0.1:$P_SSE 127.0.0.1:$P_SSE_PUB /publish "$TETHER_PID" \
    "Authorization: Bearer $SECRET" "$WORK/t$1-$2.json" "$2"
  summary "$WORK/t$1-$2.json" tether
  echo "tether $2 $WORK/t$1-$2.json" >> "$WORK/sse.txt"
  kill -USR1 "$TETHER_PID"; sleep 0.2
  grep 'stats: notifications' "$WORK/sse.log" | tail -1 | sed 's/^/         /'
  stop_pid "$TETHER_PID"
}
run_pushpin() { # round rate
  start_pushpin
  fanout pushpin "$WORK/pushpin.plan" 127.0.0.1:$P_PP 127.0.0.1:$P_PP_PUB /publish/ "$PUSHPIN_PIDS" "" \
    "$WORK/p$1-$2.json" "$2"
  summary "$WORK/p$1-$2.json" pushpin
  echo "pushpin $2 $WORK/p$1-$2.json" >> "$WORK/sse.txt"
  stop_pid "$PUSHPIN_PID"
  sleep 1
}
for round in $(seq "$ROUNDS"); do
  for rate in $RATES; do
    echo "-- round $round, $rate publishes/s"
    if [ $((round % 2)) = 1 ] || [ "$PUSHPIN" = 0 ]; then
      run_tether "$round" "$rate"; [ "$PUSHPIN" = 0 ] || run_pushpin "$round" "$rate"
    else
      run_pushpin "$round" "$rate"; run_tether "$round" "$rate"
    fi
  done
done
python3 - "$WORK/sse.txt" <<'EOF'
import json, statistics, sys
by = {}
for line in open(sys.argv[1]):
    name, rate, path = line.split()
    by.setdefault((name, int(rate)), []).append(json.load(open(path)))
med = {}
for (name, rate), runs in sorted(by.items(), key=lambda kv: (-kv[0][1], kv[0][0])):
    m = lambda f: statistics.median(f(r) for r in runs)
    med[name, rate] = d = dict(
        bps=m(lambda r: r["bytes_per_stream"]), p50=m(lambda r: r["latency_us"].get("p50", 0)),
        p99=m(lambda r: r["latency_us"].get("p99", 0)),
        sent=m(lambda r: (r["publish"]["sent"]) / (r["duration_secs"] + 1)),
        deliv=m(lambda r: r["delivered_measured"] / max(r["publish"]["expected_deliveries"], 1)),
        opened=min(r["streams_open"] for r in runs))
    print(f"{name:8s} {rate:6d}/s, median of {len(runs)}: {d['bps']:.0f} B per idle stream (fewest open "
          f"{d['opened']}), published {d['sent']:.0f}/s, latency p50 {d['p50']/1000:.2f} ms, p99 "
          f"{d['p99']/1000:.2f} ms, delivered {100*d['deliv']:.1f}% of the accepted publishes")
for (name, rate), t in med.items():
    p = med.get(("pushpin", rate))
    if name == "tether" and p:
        print(f"tether / pushpin at {rate}/s: memory per stream {t['bps']/max(p['bps'],1):.2f}x, "
              f"p50 {t['p50']/max(p['p50'],1):.2f}x, p99 {t['p99']/max(p['p99'],1):.2f}x")
EOF

echo "== piggybacking: tether-bench -t1 -c$CONNECTIONS -d$DURATION, lone node, 1 worker, $ROUNDS rounds =="
start_tether pg
login $P_PG 2 > "$WORK/pg-sessions.txt"
read -r COOKIE_EMPTY _ < <(sed -n 1p "$WORK/pg-sessions.txt")
read -r COOKIE_PENDING SID_PENDING < <(sed -n 2p "$WORK/pg-sessions.txt")
for i in 1 2 3; do
  curl -sf -o /dev/null -H "Authorization: Bearer $SECRET" \
    -d "{\"session\":\"$SID_PENDING\",\"data\":{\"subject\":\"message $i\",\"from\":\"bob\"}}" \
    "http://127.0.0.1:$P_PG_PUB/publish"
done
echo "the pending session's responses carry: $(curl -s -D - -o /dev/null -H "Cookie: $COOKIE_PENDING" \
  "http://127.0.0.1:$P_PG/note/x" | grep -i '^tether-notifications' | tr -d '\r')"
pg_run() { # label url cookie
  "$BENCH" -q --json -t1 -c"$CONNECTIONS" -d"$DURATION" -H "Cookie: $3" "$2" > "$WORK/run.json" 2>/dev/null
  python3 - "$WORK/run.json" "$1" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
errors = sum(v for k, v in r["status"].items() if not k.startswith("2")) + r["errors"]["total"]
lat = r["latency_us"]
print(f"{sys.argv[2]} {r['requests_per_sec']:.0f} {lat.get('p50', 0)} {lat.get('p99', 0)} {errors}")
EOF
}
: > "$WORK/pg.txt"
for round in $(seq "$ROUNDS"); do
  pg_run plain "http://127.0.0.1:$P_PG/plain/x" "$COOKIE_EMPTY" | tee -a "$WORK/pg.txt"
  pg_run empty "http://127.0.0.1:$P_PG/note/x" "$COOKIE_EMPTY" | tee -a "$WORK/pg.txt"
  pg_run pending "http://127.0.0.1:$P_PG/note/x" "$COOKIE_PENDING" | tee -a "$WORK/pg.txt"
done
python3 - "$WORK/pg.txt" <<'EOF'
import statistics, sys
by = {}
for label, rps, p50, p99, errors in (l.split() for l in open(sys.argv[1]) if l.strip()):
    by.setdefault(label, []).append((float(rps), float(p50), float(p99), int(errors)))
med = {k: statistics.median(r[0] for r in v) for k, v in by.items()}
for k in ("plain", "empty", "pending"):
    v = by[k]
    print(f"{k:8s} median {med[k]:9.0f} req/s  p50 {statistics.median(r[1] for r in v):6.0f} us  "
          f"p99 {statistics.median(r[2] for r in v):6.0f} us  non-2xx/errors {sum(r[3] for r in v)}")
for k in ("empty", "pending"):
    print(f"notifications route, {k} / no notifications: {med[k] / med['plain']:.3f}")
EOF
