#!/usr/bin/env bash
# Side-by-side comparison: tether, HAProxy and nginx (as a reverse proxy) in front of the same two nginx
# backends, and the backend directly, on this machine, in the same run, with the same load generator
# (tether-bench). Prints one table per run and, with --write, replaces the "Proxy comparison" section of
# bench/RESULTS.md.
#
# Placement (--placement): `shared` (default) lets every process run on any core, so a proxy's CPU cost per
# request shows directly in the rate (on a 2-core machine HAProxy then reaches about half the direct rate);
# `pinned` gives the proxy CPU 1 alone and the backends plus the load generator CPU 0, which caps every
# proxy at what CPU 0 can drive. Each proxy runs one worker/thread. Rounds are interleaved (tether, HAProxy,
# nginx, direct, tether, …) and the medians reported, because shared machines are noisy.
#
# Usage: bench/compare.sh [--rounds N] [--duration 10s] [--connections 50] [--workloads a,b,…]
#                         [--placement shared|pinned] [--tether-workers 'KEY = VALUE']
#                         [--baseline PATH] [--write]
# --tether-workers adds a line to tether's [workers] table, for A/B runs of a setting
# (e.g. --tether-workers 'batch_window = "0s"').
# --baseline PATH runs a second tether binary (an older build) with the same config, interleaved with the
# others, and prints a table of this build against it (old against new in the same run).
# Workloads: ka_tiny ka_16k new_conn sticky tls_ka tls_full tls_resumed tls12_full tls12_resumed
#            tls_full_pq tls_resumed_pq tls_resumed_aes256 (default: all)
# TLS rows compare like with like: the load generator offers one version, one group and one suite, so every
# proxy negotiates exactly those (TLS 1.3: X25519 + TLS13_AES_128_GCM_SHA256; TLS 1.2: P-256 +
# ECDHE-ECDSA-AES128-GCM-SHA256 — in TLS 1.2 the client's groups also bound the ECDSA certificate's curve,
# and OpenSSL refuses a P-256 certificate to a client offering X25519 only), and each run checks what was
# negotiated (a mismatch stops the script).
# tls_*_pq and tls_resumed_aes256 are tether only: the price of the post-quantum hybrid group
# (X25519MLKEM768, which Debian's nginx and HAProxy do not offer) and of AES-256-GCM's SHA-384.
set -euo pipefail

ROUNDS=3
DURATION=10s
CONNECTIONS=50
WORKLOADS="ka_tiny,ka_16k,new_conn,sticky,tls_ka,tls_full,tls_resumed,tls12_full,tls12_resumed,tls_full_pq,tls_resumed_pq,tls_resumed_aes256"
WRITE=0
PLACEMENT=shared
TETHER_WORKERS=""
BASELINE=""
while [ $# -gt 0 ]; do
  case "$1" in
    --placement) PLACEMENT=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --connections) CONNECTIONS=$2; shift 2 ;;
    --workloads) WORKLOADS=$2; shift 2 ;;
    --tether-workers) TETHER_WORKERS=$2; shift 2 ;;
    --baseline) BASELINE=$2; shift 2 ;;
    --write) WRITE=1; shift ;;
    -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

# --- tools ---------------------------------------------------------------------------------------------
need=()
command -v haproxy >/dev/null || need+=(haproxy)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx)
command -v taskset >/dev/null || need+=(util-linux)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]} from Debian's packages" >&2
  if [ "$(id -u)" -ne 0 ]; then echo "need root to install ${need[*]}" >&2; exit 1; fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y "${need[@]}" >/dev/null
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
CPUS=$(nproc)
case "$PLACEMENT" in
  pinned) PROXY_CPU=$(( CPUS > 1 ? 1 : 0 )); LOAD_CPU=0 ;;
  shared) PROXY_CPU="0-$((CPUS - 1))"; LOAD_CPU="0-$((CPUS - 1))" ;;
  *) echo "--placement is shared or pinned" >&2; exit 2 ;;
esac

echo "building release binaries" >&2
cargo build --release -q -p tether -p tether-bench
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
TETHER="$TARGET_DIR/release/tether"
BENCH="$TARGET_DIR/release/tether-bench"

WORK=$(mktemp -d /tmp/tether-compare.XXXXXX)
# mktemp makes the directory 0700; nginx workers run as an unprivileged user and must read the 16 KiB file
# (without this every /16k request was a 403 page).
chmod 755 "$WORK"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# Ports: backends 19001-19002; plain proxies 19080 (tether) 19180 (haproxy) 19280 (nginx);
# TLS proxies 19443 19543 19643.
"$TETHER" certs --out "$WORK/certs" >/dev/null
cat "$WORK/certs/localhost.crt" "$WORK/certs/localhost.key" > "$WORK/certs/haproxy.pem"
head -c 16384 /dev/zero | tr '\0' 'x' > "$WORK/16k.txt"

# --- backends: nginx, one worker, tiny and 16 KiB bodies --------------------------------------------------
mkdir -p "$WORK/backend" "$WORK/nginx-proxy"
cat > "$WORK/backend/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $WORK/backend/nginx.pid;
error_log $WORK/backend/error.log;
events { worker_connections 8192; }
http {
  access_log off;
  keepalive_requests 10000000;
  keepalive_timeout 300s;
  server {
    listen 127.0.0.1:19001 reuseport;
    listen 127.0.0.1:19002 reuseport;
    location = /16k { default_type text/plain; alias $WORK/16k.txt; }
    location / { default_type text/plain; return 200 "ok"; }
  }
}
EOF
taskset -c $LOAD_CPU "$NGINX" -p "$WORK/backend" -c "$WORK/backend/nginx.conf" &
PIDS+=($!)

# --- tether ----------------------------------------------------------------------------------------------
cat > "$WORK/tether.toml" <<EOF
[workers]
count = 1
$TETHER_WORKERS
[access_log]
enabled = false
[sessions]
cookie_keys = ["kcMB/O5DuPOMn88OULhftFV4i5xS2kqBL4VHkYJk7aE="]
[[listeners]]
address = "127.0.0.1:19080"
[[listeners]]
address = "127.0.0.1:19443"
[listeners.tls]
certificates = [{ cert = "$WORK/certs/localhost.crt", key = "$WORK/certs/localhost.key" }]
[clusters.app]
balance = "round_robin"
backends = [{ address = "127.0.0.1:19001" }, { address = "127.0.0.1:19002" }]
[[routes]]
path_prefix = "/sticky"
cluster = "app"
class = "secure"
session = "insert:TSID"
[[routes]]
cluster = "app"
EOF
TETHER_LOG=warn taskset -c $PROXY_CPU "$TETHER" run -c "$WORK/tether.toml" > "$WORK/tether.log" 2>&1 &
PIDS+=($!)
if [ -n "$BASELINE" ]; then
  sed 's/127.0.0.1:19080/127.0.0.1:19081/; s/127.0.0.1:19443/127.0.0.1:19444/' "$WORK/tether.toml" > "$WORK/baseline.toml"
  TETHER_LOG=warn taskset -c $PROXY_CPU "$BASELINE" run -c "$WORK/baseline.toml" > "$WORK/baseline.log" 2>&1 &
  PIDS+=($!)
fi

# --- HAProxy: one thread, keep-alive to backends (http-reuse safe, the default) ---------------------------
cat > "$WORK/haproxy.cfg" <<EOF
global
  nbthread 1
  maxconn 4000
  tune.ssl.default-dh-param 2048
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  option http-keep-alive
  # Equivalent work: tether sets X-Forwarded-For, -Proto and -Host on every forwarded request.
  option forwardfor
frontend fe
  bind 127.0.0.1:19180
  bind 127.0.0.1:19543 ssl crt $WORK/certs/haproxy.pem alpn http/1.1
  http-request set-header X-Forwarded-Proto https if { ssl_fc }
  http-request set-header X-Forwarded-Proto http unless { ssl_fc }
  http-request set-header X-Forwarded-Host %[req.hdr(host)]
  acl sticky path_beg /sticky
  use_backend sticky if sticky
  default_backend app
backend app
  balance roundrobin
  server s1 127.0.0.1:19001
  server s2 127.0.0.1:19002
backend sticky
  balance roundrobin
  cookie SRV insert indirect nocache
  server s1 127.0.0.1:19001 cookie s1
  server s2 127.0.0.1:19002 cookie s2
EOF
taskset -c $PROXY_CPU haproxy -f "$WORK/haproxy.cfg" > "$WORK/haproxy.log" 2>&1 &
PIDS+=($!)

# --- nginx as a reverse proxy: one worker, keep-alive upstream --------------------------------------------
cat > "$WORK/nginx-proxy/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $WORK/nginx-proxy/nginx.pid;
error_log $WORK/nginx-proxy/error.log;
events { worker_connections 8192; }
http {
  access_log off;
  keepalive_requests 10000000;
  upstream app { server 127.0.0.1:19001; server 127.0.0.1:19002; keepalive 128; }
  ssl_session_cache shared:SSL:10m;
  ssl_session_tickets on;
  # Debian's nginx offers only TLS 1.2 without this: its "resumed" row was a TLS 1.2 ticket resumption
  # (no key exchange) against the others' TLS 1.3 one.
  ssl_protocols TLSv1.2 TLSv1.3;
  server {
    listen 127.0.0.1:19280;
    listen 127.0.0.1:19643 ssl;
    ssl_certificate $WORK/certs/localhost.crt;
    ssl_certificate_key $WORK/certs/localhost.key;
    location / {
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$host;
      proxy_set_header X-Forwarded-For \$remote_addr;
      proxy_set_header X-Forwarded-Proto \$scheme;
      proxy_set_header X-Forwarded-Host \$host;
    }
  }
}
EOF
taskset -c $PROXY_CPU "$NGINX" -p "$WORK/nginx-proxy" -c "$WORK/nginx-proxy/nginx.conf" &
PIDS+=($!)

# Wait until everything answers.
URLS=(http://127.0.0.1:19001/ http://127.0.0.1:19080/ http://127.0.0.1:19180/ http://127.0.0.1:19280/)
if [ -n "$BASELINE" ]; then URLS+=(http://127.0.0.1:19081/); fi
for url in "${URLS[@]}"; do
  for _ in $(seq 100); do
    if "$BENCH" -q -c1 -t1 -d200ms --warmup 0 --json "$url" 2>/dev/null | grep -q '"requests": *[1-9]'; then break; fi
    sleep 0.1
  done
done

# --- TLS rows: what the client offers, and so what each handshake must negotiate ---------------------------
tls_expected() {
  case "$1" in
    # A resumed TLS 1.2 handshake exchanges no key: rustls reports no group for it.
    tls12_resumed) echo "TLSv1_2 TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 secp256r1|TLSv1_2 TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 none" ;;
    tls12_*) echo "TLSv1_2 TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 secp256r1" ;;
    *_pq) echo "TLSv1_3 TLS13_AES_128_GCM_SHA256 X25519MLKEM768" ;;
    *_aes256) echo "TLSv1_3 TLS13_AES_256_GCM_SHA384 X25519" ;;
    *) echo "TLSv1_3 TLS13_AES_128_GCM_SHA256 X25519" ;;
  esac
}
# tls_offer "VERSION SUITE GROUP[|…]" → the tether-bench flags offering exactly that (the first).
tls_offer() {
  local v suite group
  read -r v suite group <<<"${1%%|*}"
  echo "--tls-version 1.${v#TLSv1_} --tls-ciphers $suite --tls-groups $group"
}

# --- one measurement -------------------------------------------------------------------------------------
# run TARGET WORKLOAD → prints "rps p50_us p99_us errors" (or "- - - -" when not applicable)
run() {
  local target=$1 workload=$2 port path scheme=http extra=() expect=
  case "$target" in
    tether) port=19080 ;; baseline) port=19081 ;; haproxy) port=19180 ;; nginx) port=19280 ;; direct) port=19001 ;;
  esac
  path=/
  case "$workload" in
    ka_tiny) ;;
    ka_16k) path=/16k ;;
    new_conn) extra+=(--new-conn) ;;
    sticky)
      [ "$target" = nginx ] && { echo "- - - -"; return; }  # open-source nginx has no cookie insertion
      path=/sticky; extra+=(--sessions) ;;
    tls_*|tls12_*)
      [ "$target" = direct ] && { echo "- - - -"; return; }
      case "$workload" in
        *_pq|*_aes256) [ "$target" = tether ] || [ "$target" = baseline ] || { echo "- - - -"; return; } ;;
      esac
      scheme=https
      case "$target" in tether) port=19443 ;; baseline) port=19444 ;; haproxy) port=19543 ;; nginx) port=19643 ;; esac
      extra+=(--cacert "$WORK/certs/ca.crt" --sni localhost)
      case "$workload" in
        *_full|*_full_pq) extra+=(--new-conn --no-resume) ;;
        *_resumed|*_resumed_pq|*_resumed_aes256) extra+=(--new-conn) ;;
      esac
      expect=$(tls_expected "$workload")
      read -r -a offer <<<"$(tls_offer "$expect")"
      extra+=("${offer[@]}") ;;
  esac
  local json
  json=$(taskset -c $LOAD_CPU "$BENCH" -q -t1 -c"$CONNECTIONS" -d"$DURATION" --warmup 1s --json \
    "${extra[@]}" "$scheme://127.0.0.1:$port$path" 2>/dev/null) || { echo "- - - -"; return; }
  local rps p50 p99 errs
  # Pretty-printed JSON, one field per line: pick fields by name without a JSON tool.
  field() { grep -o "\"$1\": *[0-9.]*" <<<"$json" | tail -1 | sed 's/.*: *//'; }
  rps=$(field requests_per_sec); p50=$(field p50); p99=$(field p99); errs=$(field total)
  # A response that is not 2xx is an error too: a benchmark of error pages measures the wrong thing.
  local not_2xx
  not_2xx=$(awk '/"status": *\{/ {s=1; next} s && /\}/ {s=0} s {gsub(/[",:]/, " "); if ($1 !~ /^2/) n += $2} END {print n+0}' <<<"$json")
  errs=$((errs + not_2xx))
  if [ -n "${expect:-}" ]; then
    # Every handshake must have negotiated exactly what was offered: else this row compares other things.
    local got bad=0 line
    got=$(grep -o '"TLSv1_[23] [A-Za-z0-9_]* [A-Za-z0-9_]*"' <<<"$json" | tr -d '"' | LC_ALL=C sort -u || true)
    [ -n "$got" ] || bad=1
    while read -r line; do
      [ -z "$line" ] || [[ "|$expect|" == *"|$line|"* ]] || bad=1
    done <<<"$got"
    if [ "$bad" = 1 ]; then
      echo "$target $workload negotiated '$(paste -sd '|' <<<"$got")', expected '$expect': not a like-for-like run" >&2
      touch "$WORK/mismatch"
      echo "- - - -"
      return
    fi
  fi
  printf '%.0f %s %s %s\n' "$rps" "$p50" "$p99" "$errs"
}

median() { sort -n | awk '{a[NR]=$1} END { if (NR==0) print "-"; else if (NR%2) print a[(NR+1)/2]; else printf "%.0f\n", (a[NR/2]+a[NR/2+1])/2 }'; }

TARGETS=(tether haproxy nginx direct)
if [ -n "$BASELINE" ]; then TARGETS=(tether baseline haproxy nginx direct); fi
declare -A RPS P50 P99 ERR
IFS=',' read -r -a WL <<<"$WORKLOADS"
for w in "${WL[@]}"; do
  for r in $(seq "$ROUNDS"); do
    for t in "${TARGETS[@]}"; do
      read -r rps p50 p99 errs < <(run "$t" "$w")
      [ -e "$WORK/mismatch" ] && { echo "stopping: a TLS row negotiated something else than offered" >&2; exit 1; }
      echo "round $r $w $t: ${rps} req/s p50=${p50}us p99=${p99}us errors=${errs}" >&2
      if [ "$rps" != "-" ]; then
        RPS[$w,$t]+="$rps "; P50[$w,$t]+="$p50 "; P99[$w,$t]+="$p99 "; ERR[$w,$t]+="$errs "
      fi
    done
  done
done

med() { tr ' ' '\n' <<<"${1:-}" | grep -v '^$' | median; }
total() { tr ' ' '\n' <<<"${1:-}" | awk '/^[0-9]+$/ {n += $1; seen = 1} END {print seen ? n : "-"}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a=="-"||b=="-"||b==0) print "-"; else printf "%.2f", a/b }'; }

TABLE=$(
  echo "| workload | tether req/s | HAProxy req/s | nginx req/s | direct req/s | tether/HAProxy | tether/nginx | tether/direct | HAProxy/direct | nginx/direct | p50 µs (t / h / n) | p99 µs (t / h / n) | errors or non-2xx (t / h / n / d) |"
  echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | --- | --- |"
  for w in "${WL[@]}"; do
    t=$(med "${RPS[$w,tether]:-}"); h=$(med "${RPS[$w,haproxy]:-}"); n=$(med "${RPS[$w,nginx]:-}"); d=$(med "${RPS[$w,direct]:-}")
    tp50=$(med "${P50[$w,tether]:-}"); hp50=$(med "${P50[$w,haproxy]:-}"); np50=$(med "${P50[$w,nginx]:-}")
    tp99=$(med "${P99[$w,tether]:-}"); hp99=$(med "${P99[$w,haproxy]:-}"); np99=$(med "${P99[$w,nginx]:-}")
    echo "| $w | $t | $h | $n | $d | $(ratio "$t" "$h") | $(ratio "$t" "$n") | $(ratio "$t" "$d") | $(ratio "$h" "$d") | $(ratio "$n" "$d") | $tp50 / $hp50 / $np50 | $tp99 / $hp99 / $np99 | $(total "${ERR[$w,tether]:-}") / $(total "${ERR[$w,haproxy]:-}") / $(total "${ERR[$w,nginx]:-}") / $(total "${ERR[$w,direct]:-}") |"
  done
)
CMD="bench/compare.sh --rounds $ROUNDS --duration $DURATION --connections $CONNECTIONS --workloads $WORKLOADS --placement $PLACEMENT"
if [ -n "$TETHER_WORKERS" ]; then CMD="$CMD --tether-workers '$TETHER_WORKERS'"; fi
if [ -n "$BASELINE" ]; then CMD="$CMD --baseline $BASELINE"; fi
echo
echo "$TABLE"
if [ -n "$BASELINE" ]; then
  echo
  echo "| workload | this build req/s | baseline req/s | this/baseline | p50 µs (this / baseline) | p99 µs (this / baseline) |"
  echo "| --- | ---: | ---: | ---: | --- | --- |"
  for w in "${WL[@]}"; do
    t=$(med "${RPS[$w,tether]:-}"); b=$(med "${RPS[$w,baseline]:-}")
    echo "| $w | $t | $b | $(ratio "$t" "$b") | $(med "${P50[$w,tether]:-}") / $(med "${P50[$w,baseline]:-}") | $(med "${P99[$w,tether]:-}") / $(med "${P99[$w,baseline]:-}") |"
  done
fi

if [ "$WRITE" = 1 ]; then
  MACHINE="$(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(free -g | awk '/Mem:/ {print $2}') GiB, kernel $(uname -r)"
  VERSIONS="tether $("$TETHER" --version | awk '{print $2}'), $(haproxy -v | head -1 | awk '{print "HAProxy", $3}'), $("$NGINX" -v 2>&1 | sed 's/.*\///;s/^/nginx /')"
  SECTION=$(cat <<EOF
<!-- compare:$PLACEMENT:start -->
## Proxy comparison ($PLACEMENT placement)

Latest run: $(date -u +%Y-%m-%dT%H:%MZ), load average before the run: $(cut -d' ' -f1-3 /proc/loadavg).
Machine: $MACHINE. Versions: $VERSIONS.
Command: \`$CMD\`. Each proxy: one worker/thread on CPU(s) $PROXY_CPU, keep-alive to two nginx backends
(one worker) on CPU(s) $LOAD_CPU, load from \`tether-bench -t1 -c$CONNECTIONS -d$DURATION\` on CPU(s) $LOAD_CPU; rounds
interleaved, medians of $ROUNDS. All three proxies set X-Forwarded-For, -Proto and -Host. TLS: the same ECDSA P-256 certificate for all three; \`*_full\` = new connection per request without
resumption, \`*_resumed\` = new connection per request with resumption. Like for like, checked on every
handshake: \`tls_*\` rows negotiate TLS 1.3, X25519, TLS13_AES_128_GCM_SHA256; \`tls12_*\` rows TLS 1.2, P-256,
ECDHE-ECDSA-AES128-GCM-SHA256; \`*_pq\` rows (tether only) X25519MLKEM768 instead of X25519, and
\`tls_resumed_aes256\` (tether only) TLS13_AES_256_GCM_SHA384. nginx has no cookie insertion, so no
sticky figure.

$TABLE
<!-- compare:$PLACEMENT:end -->
EOF
)
  if grep -q "<!-- compare:$PLACEMENT:start -->" bench/RESULTS.md; then
    awk -v section="$SECTION" -v start="<!-- compare:$PLACEMENT:start -->" -v end="<!-- compare:$PLACEMENT:end -->" '
      $0 == start { print section; skip=1; next }
      $0 == end { skip=0; next }
      !skip { print }' bench/RESULTS.md > "$WORK/results.md"
    cp "$WORK/results.md" bench/RESULTS.md
  else
    printf '\n%s\n' "$SECTION" >> bench/RESULTS.md
  fi
  echo "wrote bench/RESULTS.md" >&2
fi
