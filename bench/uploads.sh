#!/usr/bin/env bash
# Spooled uploads (#17) on loopback, in one run:
#   1. a 1 GiB tus upload in 8 MiB PATCHes through node a of a 2-node cluster (every chunk written to a's
#      spool file and to b's over the replication link's side channel before it is acknowledged), then
#      forwarded to the backend: throughput, and CPU seconds per MiB of both tether processes (/proc/PID/stat);
#   2. the same 1 GiB POSTed straight through tether (a lone node, a plain route) to the backend: throughput and
#      CPU per MiB — the ratio to 1 is what spooling with a replica costs;
#   3. the same tus upload through that lone node (no cluster): the median PATCH of an 8 MiB chunk there
#      against the cluster's is the latency the replica copy adds per acknowledged chunk.
# Usage: bench/uploads.sh [--size-mib N] [--port-base P]
# PERF_LONE=FILE records the lone node's tus run with `perf record -g` into FILE.
# Needs python3 (the client and the backend); writes into a temporary directory (the file, the spools), removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh

SIZE_MIB=1024
BASE=19400
while [ $# -gt 0 ]; do
  case "$1" in
    --size-mib) SIZE_MIB=$2; shift 2 ;;
    --port-base) BASE=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
P_BACKEND=$BASE P_A=$((BASE + 1)) P_B=$((BASE + 2)) P_LONE=$((BASE + 3)) R_A=$((BASE + 4)) R_B=$((BASE + 5))
bench_ports_free $P_BACKEND $P_A $P_B $P_LONE $R_A $R_B
command -v python3 >/dev/null || { echo "python3 is needed" >&2; exit 1; }
bench_build
bench_workdir uploads

"$TETHER" certs cluster --nodes a,b --out "$WORK/certs" >/dev/null
# The backend: reads every request's whole body (Content-Length), then answers 201 "stored".
cat > "$WORK/backend.py" <<'PY'
import socket, sys, threading
def serve(conn):
    buf = bytearray(1 << 20)
    data = b""
    try:
        while True:
            while b"\r\n\r\n" not in data:
                more = conn.recv(65536)
                if not more:
                    return
                data += more
            head, data = data.split(b"\r\n\r\n", 1)
            length = 0
            for line in head.split(b"\r\n")[1:]:
                k, _, v = line.partition(b":")
                if k.strip().lower() == b"content-length":
                    length = int(v)
            left = length - len(data)
            data = data[length:] if left <= 0 else b""
            while left > 0:
                n = conn.recv_into(buf, min(left, len(buf)))
                if n == 0:
                    return
                left -= n
            conn.sendall(b"HTTP/1.1 201 Created\r\nContent-Length: 6\r\n\r\nstored")
    finally:
        conn.close()
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(64)
while True:
    c, _ = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
PY
python3 "$WORK/backend.py" $P_BACKEND &
PIDS+=($!)

common() {
  bench_node_base
  cat <<EOF
[clusters.app]
backends = [{ address = "127.0.0.1:$P_BACKEND" }]
[[routes]]
path_prefix = "/up/"
cluster = "app"
uploads = true
[[routes]]
cluster = "app"
[uploads]
dir = "$WORK/spool-$1"
max_size = $((SIZE_MIB * 1048576))
max_chunk = 8388608
EOF
}
node() { # name listen-port repl-port peer peer-repl-port
  common "$1"
  bench_cluster_node "$@" 10s
}
node a $P_A $R_A b $R_B > "$WORK/a.toml"
node b $P_B $R_B a $R_A > "$WORK/b.toml"
{ common lone; printf '[[listeners]]\naddress = "127.0.0.1:%s"\n' $P_LONE; } > "$WORK/lone.toml"
for n in a b lone; do
  TETHER_LOG=info "$TETHER" run -c "$WORK/$n.toml" > "$WORK/$n.log" 2>&1 &
  PIDS+=($!)
  eval "PID_${n}=$!"
done
for _ in $(seq 300); do
  grep -q "link with b up" "$WORK/a.log" 2>/dev/null && grep -q "synced from a peer\|serving alone" "$WORK/b.log" && break
  sleep 0.1
done
grep -q "link with b up" "$WORK/a.log" || { echo "the cluster did not come up" >&2; tail "$WORK/a.log" >&2; exit 1; }

head -c $((SIZE_MIB * 1048576)) /dev/urandom > "$WORK/file"

python3 - "$WORK/file" "$P_A" "$P_LONE" "$PID_a" "$PID_b" "$PID_lone" <<'PY'
import http.client, os, statistics, sys, time
path, p_a, p_lone, pid_a, pid_b, pid_lone = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), *sys.argv[4:]
size = os.path.getsize(path)
mib = size / 1048576
CHUNK = 8 << 20
tick = os.sysconf("SC_CLK_TCK")

def cpu(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / tick  # utime + stime

def tus(port):
    c = http.client.HTTPConnection("127.0.0.1", port)
    c.request("POST", "/up/file", headers={"Tus-Resumable": "1.0.0", "Upload-Length": str(size), "Content-Length": "0"})
    r = c.getresponse(); r.read()
    assert r.status == 201, r.status
    loc = r.getheader("Location")
    lat = []
    with open(path, "rb") as f:
        off = 0
        while off < size:
            chunk = f.read(CHUNK)
            t = time.perf_counter()
            c.request("PATCH", loc, body=chunk, headers={"Tus-Resumable": "1.0.0", "Upload-Offset": str(off),
                      "Content-Type": "application/offset+octet-stream", "Content-Length": str(len(chunk))})
            r = c.getresponse(); resp_body = r.read()
            off += len(chunk)
            if off < size:
                lat.append(time.perf_counter() - t)
            assert r.status == 204, (r.status, off, r.getheader("Content-Length"), resp_body)
    assert r.getheader("Tether-Upload-Status") == "201", r.getheader("Tether-Upload-Status")
    return lat

def straight(port):
    c = http.client.HTTPConnection("127.0.0.1", port)
    def body():
        with open(path, "rb") as f:
            while True:
                b = f.read(1 << 20)
                if not b:
                    return
                yield b
    c.request("POST", "/plain", body=body(), headers={"Content-Length": str(size)}, encode_chunked=False)
    r = c.getresponse(); r.read()
    assert r.status == 201, r.status

# Page the file into memory once, so every run reads it from the page cache.
with open(path, "rb") as f:
    while f.read(64 << 20):
        pass

c0 = cpu(pid_a) + cpu(pid_b); t0 = time.perf_counter()
lat_cluster = tus(p_a)
t_cluster = time.perf_counter() - t0; c_cluster = cpu(pid_a) + cpu(pid_b) - c0

c0 = cpu(pid_lone); t0 = time.perf_counter()
straight(p_lone)
t_straight = time.perf_counter() - t0; c_straight = cpu(pid_lone) - c0

if os.environ.get("PERF_LONE"):
    import subprocess
    perf = subprocess.Popen(["perf", "record", "-g", "-o", os.environ["PERF_LONE"], "-p", str(pid_lone)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
c0 = cpu(pid_lone); t0 = time.perf_counter()
lat_lone = tus(p_lone)
t_lone = time.perf_counter() - t0; c_lone = cpu(pid_lone) - c0
if os.environ.get("PERF_LONE"):
    perf.send_signal(2); perf.wait()

ms = lambda xs, q: 1000 * sorted(xs)[min(len(xs) - 1, int(q * len(xs)))]
print(f"size: {mib:.0f} MiB; PATCH chunks of 8 MiB ({len(lat_cluster)} timed, the completing one not)")
print(f"spooled, 2-node cluster with replica: {t_cluster:.2f} s = {mib / t_cluster:.0f} MiB/s; "
      f"CPU (a + b) {c_cluster:.2f} s = {1000 * c_cluster / mib:.2f} ms/MiB")
print(f"straight through tether (lone node):  {t_straight:.2f} s = {mib / t_straight:.0f} MiB/s; "
      f"CPU {c_straight:.2f} s = {1000 * c_straight / mib:.2f} ms/MiB")
print(f"spooled, lone node (no replica):      {t_lone:.2f} s = {mib / t_lone:.0f} MiB/s; "
      f"CPU {c_lone:.2f} s = {1000 * c_lone / mib:.2f} ms/MiB")
print(f"ratio spooled-with-replica / straight throughput: {t_straight / t_cluster:.2f}")
print(f"8 MiB PATCH, cluster: p50 {ms(lat_cluster, .5):.1f} ms p90 {ms(lat_cluster, .9):.1f} ms; "
      f"lone: p50 {ms(lat_lone, .5):.1f} ms p90 {ms(lat_lone, .9):.1f} ms; "
      f"the replica copy adds {statistics.median(lat_cluster) * 1000 - statistics.median(lat_lone) * 1000:.1f} ms "
      f"per acknowledged 8 MiB chunk (median)")
PY
rm -f "$WORK/file"
