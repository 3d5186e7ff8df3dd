# Shared by the bench scripts that start tether nodes in front of nginx (source it after `cd` to the repo
# root): the tools check, free ports, release binaries, a work directory cleaned up on exit, and an nginx
# backend answering 200 "ok".

# Exits unless every port given is free on 127.0.0.1.
bench_ports_free() {
  local p
  for p in "$@"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      echo "port $p is in use (another run?); try --port-base" >&2; exit 1
    fi
  done
}

# Sets NGINX; exits unless nginx and python3 are there.
bench_tools() {
  NGINX=$(command -v nginx || echo /usr/sbin/nginx)
  [ -x "$NGINX" ] || { echo "nginx is needed (apt-get install nginx)" >&2; exit 1; }
  command -v python3 >/dev/null || { echo "python3 is needed" >&2; exit 1; }
}

# Builds the release binaries; sets TETHER and BENCH.
bench_build() {
  echo "building release binaries" >&2
  cargo build --release -q -p tether -p tether-bench
  local target=${CARGO_TARGET_DIR:-$(pwd)/target}
  case "$target" in /*) ;; *) target=$(pwd)/$target ;; esac
  TETHER="$target/release/tether"
  BENCH="$target/release/tether-bench"
}

# Sets WORK (a fresh directory named after $1) and PIDS; on exit, every process in PIDS is killed and
# WORK removed (kept with KEEP_WORK=1).
bench_workdir() {
  WORK=$(mktemp -d "/tmp/tether-$1.XXXXXX")
  chmod 755 "$WORK"
  PIDS=()
  trap bench_cleanup EXIT
}

bench_cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ -n "${KEEP_WORK:-}" ] || rm -rf "$WORK"
}

# Starts nginx on 127.0.0.1:$1 answering 200 "ok" to everything, keep-alive without limit; $2 (optional):
# more `location` blocks, matched before that.
bench_nginx() {
  mkdir -p "$WORK/backend"
  cat > "$WORK/backend/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $WORK/backend/nginx.pid;
error_log $WORK/backend/error.log;
events { worker_connections 16384; }
http {
  access_log off;
  keepalive_requests 10000000;
  server {
    listen 127.0.0.1:$1;
${2:-}
    location / { default_type text/plain; return 200 "ok"; }
  }
}
CONF
  "$NGINX" -p "$WORK/backend" -c "$WORK/backend/nginx.conf" &
  PIDS+=($!)
}

# Prints the cluster part of a two-node bench node's config — its client listener, [cluster] (named
# $CLUSTER_NAME, default "bench") and [cluster.tls] with the certificates in $WORK/certs: name, client port,
# replication port, peer's name, peer's replication port, ready_timeout.
bench_cluster_node() {
  cat <<EOF
[[listeners]]
address = "127.0.0.1:$2"
[cluster]
name = "${CLUSTER_NAME:-bench}"
node = "$1"
listen = "127.0.0.1:$3"
ready_timeout = "$6"
peers = [{ name = "$4", address = "127.0.0.1:$5" }]
[cluster.tls]
ca = "$WORK/certs/ca.crt"
cert = "$WORK/certs/$1.crt"
key = "$WORK/certs/$1.key"
EOF
}

# Prints what every bench node's config starts with: one worker, no access log, the benches' cookie key
# (the rest of [sessions] may follow).
bench_node_base() {
  cat <<EOF
[workers]
count = 1
[access_log]
enabled = false
[sessions]
cookie_keys = ["kcMB/O5DuPOMn88OULhftFV4i5xS2kqBL4VHkYJk7aE="]
EOF
}
