#!/usr/bin/env bash
# Where the time of a request goes under load, for two stacks of the example server: each one
# under the load benchmark's conditions (one worker pinned to core 0, wrk with 32 connections
# pinned to core 1), sampled by `perf record -e cpu-clock`, then per request in microseconds:
# the worker's user and kernel time, and the symbols whose time differs most between the two.
# Unlike callgrind (scripts/bench-instructions.sh), this sees the kernel and the cost of cold
# caches; like every load figure here, it is noisy: compare within one run.
#
#   scripts/bench-profile.sh [--duration SECONDS] [--path PATH] [--top N] [--otlp] STACK_A STACK_B
#
# A STACK may carry its own server arguments after a colon, as in scripts/bench.sh. --otlp, as
# in scripts/bench.sh: a live OTLP receiver on the load core gets the spans, and the export
# threads' time (other threads) is that of real exports.
set -euo pipefail
cd "$(dirname "$0")/.."
duration=8
path=/echo/42
top=25
otlp=0
stacks=()
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) duration=$2; shift 2 ;;
    --path) path=$2; shift 2 ;;
    --top) top=$2; shift 2 ;;
    --otlp) otlp=1; shift ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) stacks+=("$1"); shift ;;
  esac
done
[ ${#stacks[@]} = 2 ] || { sed -n '9p' "$0" >&2; exit 2; }
for tool in perf wrk taskset; do
  command -v "$tool" >/dev/null || {
    echo "bench-profile.sh: $tool is missing (Debian: linux-perf, wrk, util-linux)" >&2
    exit 1
  }
done
cargo build --release --example server >&2
bin=target/release/examples/server
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"; kill $(jobs -p) 2>/dev/null || true' EXIT
if [ "$otlp" = 1 ]; then
  cargo build --release --example otlp_sink >&2
  sink_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  taskset -c 1 target/release/examples/otlp_sink --addr "127.0.0.1:$sink_port" >"$tmp/sink.log" 2>&1 &
  export OTEL_EXPORTER_OTLP_TRACES_ENDPOINT="http://127.0.0.1:$sink_port/v1/traces"
fi

for i in 0 1; do
  spec=${stacks[$i]}
  name=${spec%%:*}
  own=""
  [ "$name" = "$spec" ] || own=${spec#*:}
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  taskset -c 0 "$bin" --addr "127.0.0.1:$port" --stack "$name" --workers 1 $own >"$tmp/server.log" 2>&1 &
  pid=$!
  for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.05; done
  taskset -c 1 wrk -t1 -c32 -d2s "http://127.0.0.1:$port$path" >/dev/null
  # The load outlasts the recording on both ends.
  taskset -c 1 wrk -t1 -c32 -d$((duration + 2))s "http://127.0.0.1:$port$path" >"$tmp/wrk-$i.txt" &
  wrk_pid=$!
  sleep 0.5
  perf record -q -e cpu-clock -F 4999 -p "$pid" -o "$tmp/perf-$i.data" -- sleep "$duration" >/dev/null 2>&1
  # Per request: divided by wrk's requests/s, averaged over a run that spans the recording.
  wait "$wrk_pid"
  kill "$pid"; wait "$pid" 2>/dev/null || true
  rm -f "$tmp/server.log"
  perf report -i "$tmp/perf-$i.data" --no-children --sort comm,dso,sym -F sample,comm,dso,sym \
    --stdio 2>/dev/null >"$tmp/report-$i.txt"
done

python3 - "$tmp" "$duration" "$top" "${stacks[@]}" <<'PY'
import collections, re, sys
tmp, duration, top, names = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
def load(i):
    rps = float(re.search(r"Requests/sec:\s*([\d.]+)", open(f"{tmp}/wrk-{i}.txt").read()).group(1))
    per = 1e6 / 4999 / (rps * duration)  # one sample, in microseconds per request
    d = collections.Counter()
    for line in open(f"{tmp}/report-{i}.txt"):
        m = re.match(r"\s*(\d+)\s+(\S+)\s+(\S+)\s+\[(.)\]\s+(.*)", line)
        if m and not line.startswith("#"):
            n, comm, _dso, kind, sym = m.groups()
            d[(comm, "kernel" if kind == "k" else "user", sym.strip()[:80])] += int(n) * per
    return d, rps
(a, ra), (b, rb) = load(0), load(1)
print(f"| | {names[0]} | {names[1]} |")
print("|---|---:|---:|")
print(f"| requests/s | {ra:,.0f} | {rb:,.0f} |")
def total(d, pred):
    return sum(v for k, v in d.items() if pred(k))
rows = [
    ("worker threads, user (us/request)", lambda k: k[0].startswith("tokio") and k[1] == "user"),
    ("worker threads, kernel (us/request)", lambda k: k[0].startswith("tokio") and k[1] == "kernel"),
    ("other threads (us/request)", lambda k: not k[0].startswith("tokio")),
]
for label, pred in rows:
    print(f"| {label} | {total(a, pred):.2f} | {total(b, pred):.2f} |")
print()
print(f"Symbols whose time per request differs most (us), {names[0]} -> {names[1]}:")
keys = sorted(set(a) | set(b), key=lambda k: -abs(b[k] - a[k]))
for k in keys[:top]:
    print(f"{a[k]:7.3f} {b[k]:7.3f} {b[k] - a[k]:+7.3f}  {k[0]} {k[1]} {k[2]}")
PY
