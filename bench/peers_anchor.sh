#!/usr/bin/env bash
# The HAProxy peers anchor (#13), on loopback, same machine, same run: how long a restarted peer takes to
# learn a 1,000,000-entry table from the peer that kept it, HAProxy against tether.
#
#   HAProxy: two processes (peers ha and hb, one config file, the local peer chosen with -L) share a
#     stick table of session bindings (`type string len 32`, `store server_id`: a 32-hex-digit session id
#     bound to a server, as `stick on` writes them). ha is filled through its CLI socket (`set table`, one
#     connection, streamed in prompt mode) and mirrors to hb. hb is killed with SIGKILL and started again
#     (a new process, not a reload, so no old process teaches it: it asks ha for a full resync); measured:
#     from its spawn until `show table` on its CLI says used:N (polled every 20 ms, one connection a poll).
#   tether: two nodes a and b (one worker each); a writes the bindings itself (/.tether/test/bind?n=10000,
#     TETHER_TEST_ENDPOINTS=1) and mirrors them to b. b is killed with SIGKILL and started again; measured:
#     from its spawn until its log has "synced from a peer ... before serving" (polled every 20 ms), and the
#     same from b's own log timestamps (its first line to that line); with the snapshot's parts from the logs
#     (a: built in; b: applied in place or staged, received in, then to finish).
#
# Each side is filled once; then the restarts alternate, HAProxy then tether, --rounds times. Printed: a
# markdown table (median and every round, entries learnt, fill time, ratio HAProxy / tether) and the details.
#
# Usage: bench/peers_anchor.sh [--rounds 3] [--entries 1000000] [--haproxy-nbthread N] [--keep]
# --entries N: table size (a quick check: --entries 100000). --haproxy-nbthread N: a `nbthread` line in
# HAProxy's global section (default: none, i.e. HAProxy's default of one thread per CPU). --keep: leave the
# work directory (configs, logs) in place and print its path.
# Needs haproxy (apt-get install haproxy) and python3. Ports 29080-29199 on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh
ROOT=$(pwd)

ROUNDS=3
ENTRIES=1000000
HA_NBTHREAD=
KEEP=
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) ROUNDS=$2; shift 2 ;;
    --entries) ENTRIES=$2; shift 2 ;;
    --haproxy-nbthread) HA_NBTHREAD=$2; shift 2 ;;
    --keep) KEEP=1; shift ;;
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done
HAPROXY=$(command -v haproxy || echo /usr/sbin/haproxy)
[ -x "$HAPROXY" ] || { echo "haproxy is needed for this benchmark (apt-get install haproxy); not found" >&2; exit 1; }
command -v python3 >/dev/null || { echo "python3 is needed" >&2; exit 1; }
[ "$ENTRIES" -ge 1 ] && [ "$ROUNDS" -ge 1 ] || { echo "--entries and --rounds must be at least 1" >&2; exit 2; }

echo "building tether (release)" >&2
cargo build --release -q -p tether
TETHER="${CARGO_TARGET_DIR:-$ROOT/target}/release/tether"
[ -x "$TETHER" ] || { echo "no tether binary at $TETHER" >&2; exit 1; }

WORK=$(mktemp -d /tmp/tether-anchor.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ -n "$KEEP" ]; then echo "work directory kept: $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

# ---------------------------------------------------------------------------------------------------------
# Helper: HAProxy's CLI (fill, poll), tether's test endpoint (fill), log polling, all timed in one process.
cat > "$WORK/anchor.py" <<'EOF'
import os, re, socket, sys, threading, time, urllib.request
from datetime import datetime

def cli(path, command):
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(path)
        s.sendall(command.encode() + b"\n")
        out = bytearray()
        while True:
            x = s.recv(65536)
            if not x:
                return out.decode()
            out += x
    finally:
        s.close()

def used(path):
    m = re.search(r"used:(\d+)", cli(path, "show table"))
    return int(m.group(1)) if m else -1

def peers_flags(path):
    m = re.search(r"id=mypeers .*?flags=(0x[0-9a-f]+)", cli(path, "show peers"))
    return int(m.group(1), 16) if m else None

def wait_resynced(path, start_ns, timeout_s):
    # Polls `show peers` every 20 ms until the section's resync is over (flags 0x1 and 0x2: no more to
    # learn from a local old process nor from a remote peer). Prints: ms since start_ns, the flags.
    start = start_ns / 1e9
    while True:
        try:
            f = peers_flags(path)
        except OSError:
            f = None
        now = time.time()
        if f is not None and f & 3 == 3:
            print("%.0f 0x%x" % ((now - start) * 1000, f))
            return
        if now - start > timeout_s:
            sys.exit("timed out after %d s waiting for %s to finish its resync (flags %s)" % (timeout_s, path, f))
        time.sleep(0.02)

def ha_fill(path, table, n):
    # One connection in prompt mode: the commands stream in while a thread drains the prompts.
    prefix = os.urandom(4).hex()
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    errors = []
    def drain():
        tail = b""
        while True:
            x = s.recv(1 << 20)
            if not x:
                break
            chunk = tail + x
            if b"nknown" in chunk or b"rror" in chunk or b"nvalid" in chunk:
                errors.append(chunk[:200])
            tail = x[-16:]
    reader = threading.Thread(target=drain)
    reader.start()
    t0 = time.monotonic()
    s.sendall(b"prompt\n")
    step = 5000
    for first in range(0, n, step):
        last = min(first + step, n)
        s.sendall("".join("set table %s key %s%024x data.server_id 1\n" % (table, prefix, i)
                          for i in range(first, last)).encode())
    s.sendall(b"quit\n")
    reader.join()
    ms = (time.monotonic() - t0) * 1000
    s.close()
    if errors:
        sys.exit("haproxy refused a command: %r" % errors[0])
    print("%.0f" % ms)

def wait_used(path, want, start_ns, timeout_s):
    # Polls every 20 ms (a new connection each time). Prints: ms to want, ms to the first entry, used.
    start = start_ns / 1e9
    first = None
    while True:
        try:
            u = used(path)
        except OSError:
            u = -1
        now = time.time()
        if u > 0 and first is None:
            first = now - start
        if u >= want:
            print("%.0f %.0f %d" % ((now - start) * 1000, first * 1000, u))
            return
        if now - start > timeout_s:
            sys.exit("timed out after %d s waiting for %s to hold %d entries (has %d)" % (timeout_s, path, want, u))
        time.sleep(0.02)

def tether_fill(port, n):
    t0 = time.monotonic()
    written = 0
    left = n
    while left > 0:
        k = min(left, 10000)
        with urllib.request.urlopen("http://127.0.0.1:%s/.tether/test/bind?n=%d" % (port, k), timeout=60) as r:
            written += int(r.read().strip())
        left -= k
    print("%.0f %d" % ((time.monotonic() - t0) * 1000, written))

def wait_line(path, pattern, start_ns, timeout_s, fail_pattern=None):
    # Polls the file every 20 ms; prints the ms from start_ns until the line was seen.
    start = start_ns / 1e9
    rx = re.compile(pattern)
    bad = re.compile(fail_pattern) if fail_pattern else None
    while True:
        try:
            with open(path, errors="replace") as f:
                text = f.read()
        except OSError:
            text = ""
        now = time.time()
        if rx.search(text):
            print("%.0f" % ((now - start) * 1000))
            return
        if bad and bad.search(text):
            sys.exit("%s: %s" % (path, bad.search(text).group(0)))
        if now - start > timeout_s:
            sys.exit("timed out after %d s waiting for /%s/ in %s" % (timeout_s, pattern, path))
        time.sleep(0.02)

def log_ms(path, pattern):
    # ms between the log's first line and the first line matching pattern (their timestamps).
    stamp = lambda line: datetime.strptime(line[:23], "%Y-%m-%dT%H:%M:%S.%f")
    with open(path, errors="replace") as f:
        lines = f.read().splitlines()
    hit = next(l for l in lines if re.search(pattern, l))
    print("%.0f" % ((stamp(hit) - stamp(lines[0])).total_seconds() * 1000))

cmd, args = sys.argv[1], sys.argv[2:]
if cmd == "used": print(used(args[0]))
elif cmd == "cli": print(cli(args[0], args[1]), end="")
elif cmd == "wait-resynced": wait_resynced(args[0], int(args[1]), int(args[2]))
elif cmd == "ha-fill": ha_fill(args[0], args[1], int(args[2]))
elif cmd == "wait-used": wait_used(args[0], int(args[1]), int(args[2]), int(args[3]))
elif cmd == "tether-fill": tether_fill(args[0], int(args[1]))
elif cmd == "wait-line": wait_line(args[0], args[1], int(args[2]), int(args[3]), args[4] if len(args) > 4 else None)
elif cmd == "log-ms": log_ms(args[0], args[1])
else: sys.exit("unknown helper command " + cmd)
EOF
PY() { python3 "$WORK/anchor.py" "$@"; }
now_ns() { date +%s%N; }
median() { tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END { if (NR==0) print "-"; else if (NR%2) print a[(NR+1)/2]; else printf "%.0f\n", (a[NR/2]+a[NR/2+1])/2 }'; }
# The newest value of FIELD= on the newest line of FILE matching PATTERN.
field() { grep "$2" "$1" | tail -1 | sed -n "s/.* $3=\([0-9]*\).*/\1/p"; }
TIMEOUT=300

# ---------------------------------------------------------------------------------------------------------
# HAProxy: one config for both peers; -L names the local one (HAPROXY_LOCALPEER picks its CLI socket).
# The table is a backend's, used by `stick on` as session stickiness would; its server need not be up.
mkdir -p "$WORK/ha"
{
  echo "global"
  [ -n "$HA_NBTHREAD" ] && echo "  nbthread $HA_NBTHREAD"
  cat <<EOF
  maxconn 1000
  stats socket "$WORK/ha/\${HAPROXY_LOCALPEER}.sock" level admin
  stats timeout 10m
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
peers mypeers
  peer ha 127.0.0.1:29101
  peer hb 127.0.0.1:29102
backend app
  stick-table type string len 32 size $(( ENTRIES * 6 / 5 + 1000 )) expire 1h peers mypeers store server_id
  stick on req.cook(SESSIONID)
  server s1 127.0.0.1:29199
EOF
} > "$WORK/ha/haproxy.cfg"
"$HAPROXY" -c -q -f "$WORK/ha/haproxy.cfg" -L ha
ha_start() { # peer name → pid in $!
  "$HAPROXY" -db -f "$WORK/ha/haproxy.cfg" -L "$1" >> "$WORK/ha/$1.log" 2>&1 &
}
ha_start ha; HA=$!; PIDS+=($HA)
ha_start hb; HB=$!; PIDS+=($HB)
for _ in $(seq 100); do
  [ -S "$WORK/ha/ha.sock" ] && [ -S "$WORK/ha/hb.sock" ] && PY used "$WORK/ha/hb.sock" >/dev/null 2>&1 && break
  sleep 0.1
done
# A peer started without an old process asks the others for a full resync and, if none completes one, gives
# up after 5 s (PEER_RESYNC_TIMEOUT); until its own resync is over it teaches others with "resync partial".
# Fill ha only once it is over, so that the restarted hb later learns from a peer that is up to date.
t=$(now_ns); out=$(PY wait-resynced "$WORK/ha/ha.sock" "$t" 60)
echo "haproxy: ha's own resync over after $(cut -d' ' -f1 <<<"$out") ms (peers flags $(cut -d' ' -f2 <<<"$out"))" >&2
echo "haproxy: filling ha with $ENTRIES entries through its CLI" >&2
HA_FILL_MS=$(PY ha-fill "$WORK/ha/ha.sock" app "$ENTRIES")
HA_HAS=$(PY used "$WORK/ha/ha.sock")
[ "$HA_HAS" -ge "$ENTRIES" ] || { echo "haproxy ha holds $HA_HAS entries after the fill, not $ENTRIES" >&2; exit 1; }
t=$(now_ns); HB_MIRROR=$(PY wait-used "$WORK/ha/hb.sock" "$ENTRIES" "$t" $TIMEOUT)
echo "haproxy: ha filled in $HA_FILL_MS ms; hb holds them $(cut -d' ' -f1 <<<"$HB_MIRROR") ms later" >&2

# ---------------------------------------------------------------------------------------------------------
# tether: nodes a and b, one worker each; the bindings name the one (absent) backend.
"$TETHER" certs cluster --nodes a,b --out "$WORK/certs" >/dev/null
node() { # name listen-port repl-port peer peer-repl-port
  bench_node_base
  cat <<EOF
max_entries = 4000000
[clusters.app]
backends = [{ address = "127.0.0.1:29199" }]
[[routes]]
path_prefix = "/"
cluster = "app"
EOF
  CLUSTER_NAME=anchor bench_cluster_node "$@" 120s
}
node a 29080 29181 b 29182 > "$WORK/a.toml"
node b 29081 29182 a 29181 > "$WORK/b.toml"
"$TETHER" check -c "$WORK/a.toml" >/dev/null
t_start() { # name log → pid in $!
  TETHER_TEST_ENDPOINTS=1 TETHER_LOG=info "$TETHER" run -c "$WORK/$1.toml" > "$2" 2>&1 &
}
t_start a "$WORK/a.log"; A=$!; PIDS+=($A)
t_start b "$WORK/b.0.log"; B=$!; PIDS+=($B)
t=$(now_ns); PY wait-line "$WORK/b.0.log" "link with a up" "$t" 60 >/dev/null
PY wait-line "$WORK/a.log" "link with b up" "$t" 60 >/dev/null
echo "tether: filling a with $ENTRIES bindings (/.tether/test/bind?n=10000)" >&2
out=$(PY tether-fill 29080 "$ENTRIES"); read -r T_FILL_MS T_WRITTEN <<<"$out"
[ "$T_WRITTEN" -ge "$ENTRIES" ] || { echo "tether a wrote $T_WRITTEN bindings, not $ENTRIES" >&2; exit 1; }
t=$(now_ns)
for _ in $(seq $((TIMEOUT * 10))); do
  kill -USR1 $B 2>/dev/null || { echo "tether b (pid $B) is gone; its log:" >&2; tail -5 "$WORK/b.0.log" >&2; exit 1; }
  sleep 0.1
  nb=$(field "$WORK/b.0.log" "store records=" bindings)
  [ -n "$nb" ] && [ "$nb" -ge "$ENTRIES" ] && break
done
[ "${nb:-0}" -ge "$ENTRIES" ] || { echo "tether b holds ${nb:-0} bindings, not $ENTRIES" >&2; exit 1; }
echo "tether: a filled in $T_FILL_MS ms; b holds them $(( ($(now_ns) - t) / 1000000 )) ms later (SIGUSR1 every 100 ms)" >&2

# ---------------------------------------------------------------------------------------------------------
HA_WALL=(); HA_FIRST=(); HA_LEARNT=(); HA_DONE=(); HA_FLAGS=()
T_WALL=(); T_LOG=(); T_LINK=(); T_LEARNT=(); T_RECORDS=(); T_BUILT=(); T_STAGED=(); T_HOW=(); T_FINISH=()
for r in $(seq "$ROUNDS"); do
  echo "round $r/$ROUNDS: haproxy hb killed and started again" >&2
  kill -9 $HB; wait $HB 2>/dev/null || true
  t=$(now_ns); ha_start hb; HB=$!; PIDS+=($HB)
  out=$(PY wait-used "$WORK/ha/hb.sock" "$ENTRIES" "$t" $TIMEOUT); read -r wall first learnt <<<"$out"
  HA_WALL+=("$wall"); HA_FIRST+=("$first"); HA_LEARNT+=("$learnt")
  out=$(PY wait-resynced "$WORK/ha/hb.sock" "$t" $TIMEOUT); read -r done flags <<<"$out"
  HA_DONE+=("$done"); HA_FLAGS+=("$flags")

  echo "round $r/$ROUNDS: tether b killed and started again" >&2
  kill -9 $B; wait $B 2>/dev/null || true
  blog="$WORK/b.$r.log"
  t=$(now_ns); t_start b "$blog"; B=$!; PIDS+=($B)
  wall=$(PY wait-line "$blog" "synced from a peer" "$t" $TIMEOUT "serving alone")
  T_WALL+=("$wall"); T_LOG+=("$(PY log-ms "$blog" "synced from a peer")"); T_LINK+=("$(PY log-ms "$blog" "link with a up")")
  T_RECORDS+=("$(grep "synced from a peer" "$blog" | head -1 | sed 's/.*(\([0-9]*\) record.*/\1/')")
  line=$(grep "snapshot of .* merged" "$blog" | tail -1)
  T_HOW+=("$(grep -q "applied in place" <<<"$line" && echo "in place" || echo staged)")
  T_STAGED+=("$(sed -n 's/.* in \([0-9]*\) ms, then.*/\1/p' <<<"$line")")
  T_FINISH+=("$(sed -n 's/.*then \([0-9]*\) ms to finish.*/\1/p' <<<"$line")")
  T_BUILT+=("$(grep "to b: snapshot of" "$WORK/a.log" | tail -1 | sed -n 's/.*built in \([0-9]*\) ms.*/\1/p')")
  kill -USR1 $B 2>/dev/null || { echo "tether b (pid $B) is gone; its log:" >&2; tail -5 "$blog" >&2; exit 1; }
  for _ in $(seq 50); do grep -q "store records=" "$blog" && break; sleep 0.1; done
  T_LEARNT+=("$(field "$blog" "store records=" bindings)")
done

# ---------------------------------------------------------------------------------------------------------
HA_MED=$(echo "${HA_WALL[*]}" | median)
T_MED=$(echo "${T_WALL[*]}" | median)
T_LOG_MED=$(echo "${T_LOG[*]}" | median)
join() { local IFS=/; echo "$*" | sed 's#/# / #g'; }
rate() { awk -v n="$1" -v ms="$2" 'BEGIN { if (ms > 0) printf "%.0f", n / ms * 1000; else print "-" }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }

echo
echo "Restarted peer learning a $ENTRIES-entry table, $ROUNDS round(s), $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) CPUs"
echo
echo "| system | learning time, median ms | each round, ms | entries learnt | fill of the first peer |"
echo "| --- | ---: | --- | --- | --- |"
echo "| HAProxy $("$HAPROXY" -v | head -1 | awk '{print $3}') peers (spawn to \`used:$ENTRIES\`) | $HA_MED | $(join "${HA_WALL[@]}") | $(join "${HA_LEARNT[@]}") | $HA_FILL_MS ms ($(rate "$ENTRIES" "$HA_FILL_MS")/s, CLI \`set table\`) |"
echo "| tether (spawn to \"synced from a peer\") | $T_MED | $(join "${T_WALL[@]}") | $(join "${T_LEARNT[@]}") | $T_FILL_MS ms ($(rate "$ENTRIES" "$T_FILL_MS")/s, test/bind) |"
echo "| tether, from its own log (first line to \"synced\") | $T_LOG_MED | $(join "${T_LOG[@]}") | | |"
echo
echo "Ratio HAProxy / tether (medians, spawn to learnt; above 1 means tether is faster): **$(ratio "$HA_MED" "$T_MED")×** (with tether's time from its own log: $(ratio "$HA_MED" "$T_LOG_MED")×)"
echo
echo "| round | HAProxy hb: first entry, ms | all entries, ms | resync over, ms (peers flags) | tether b: link with a up, ms (log) | synced, ms (log) | records in snapshot | a: built in, ms | b: how | b: received (and applied or staged), ms | b: then to finish, ms |"
echo "| ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | --- | ---: | ---: |"
for i in $(seq 0 $((ROUNDS - 1))); do
  echo "| $((i + 1)) | ${HA_FIRST[$i]} | ${HA_WALL[$i]} | ${HA_DONE[$i]} (${HA_FLAGS[$i]}) | ${T_LINK[$i]} | ${T_LOG[$i]} | ${T_RECORDS[$i]} | ${T_BUILT[$i]} | ${T_HOW[$i]} | ${T_STAGED[$i]} | ${T_FINISH[$i]} |"
done
echo
echo "HAProxy's times are from hb's spawn, polled every 20 ms over its CLI; peers flags 0x200 = learnt from a remote"
echo "peer that was up to date (\"resync finished\"), 0x10 = no old local process was waited for. tether's records"
echo "include its TLS ticket keys; \"entries learnt\" are its bindings (SIGUSR1)."
