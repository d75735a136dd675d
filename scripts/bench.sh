#!/usr/bin/env bash
# Load benchmark of the example server: one tokio worker pinned to core 0, wrk (closed loop,
# 32 connections, 1 thread) pinned to core 1, stacks alternated within one run so every ratio
# is against `--stack bare` measured under the same conditions (the order reversed every
# other round).
#
#   scripts/bench.sh [--duration SECONDS] [--rounds N] [--path PATH] [--server-args "ARGS"] [--otlp] [--interleave] [--alt BINARY] [STACK...]
#
# Default stacks: bare red full. A STACK may carry its own server arguments after a colon, e.g.
# "bare:--echo-work-ns 1000" (bare with 1 us of busy work per /echo request: what a known
# in-process cost does to throughput here). Prints a Markdown table: median requests/s, p99,
# ratio to bare (of the medians, paired by round with a 95% bootstrap interval of the paired
# median, and of the 90th percentiles), and how busy the load core was.
# A STACK named peers/NAME is the peer stack NAME (bare, axum-prometheus, trace-layer,
# trace-layer-event, otel, stack) of benches/peers, a separate crate built on demand: what
# users assemble today, on the same route, e.g. `scripts/bench.sh bare peers/bare red
# peers/axum-prometheus`. --server-args go to the example server only.
# --alt BINARY: a STACK named alt/NAME is stack NAME of that example-server binary (a build of
# another commit or setting, copied aside), e.g. `--alt /tmp/server-old bare red+log
# alt/red+log`: an A/B of two builds measured in the same run.
# --otlp: a live OTLP receiver (examples/otlp_sink, on the load core) gets the spans of `full`
# and of the peers' `otel` and `stack` (every request sampled and batch-exported); its totals
# are printed at the end.
# --interleave: every stack's server is started once and stays up; each round is a window of
# wrk against each stack in turn (2 s of warm-up per server at the start only), so that a stack
# and bare are measured seconds apart, and short windows (e.g. --duration 1) give many pairs.
set -euo pipefail
cd "$(dirname "$0")/.."

duration=10
rounds=3
path=/echo/42
server_args=""
otlp=0
interleave=0
alt=""
stacks=()
while [ $# -gt 0 ]; do
  case "$1" in
    --duration) duration=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    --path) path=$2; shift 2 ;;
    --server-args) server_args=$2; shift 2 ;;
    --otlp) otlp=1; shift ;;
    --interleave) interleave=1; shift ;;
    --alt) alt=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
    *) stacks+=("$1"); shift ;;
  esac
done
[ ${#stacks[@]} -gt 0 ] || stacks=(bare red full)

if ! command -v wrk >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
  else
    echo "bench.sh: wrk is missing: apt-get install wrk" >&2; exit 1
  fi
fi
command -v taskset >/dev/null || { echo "bench.sh: taskset (util-linux) is missing" >&2; exit 1; }

cargo build --release --example server >&2
bin=target/release/examples/server
[ "$otlp" = 0 ] || cargo build --release --example otlp_sink >&2
peers_bin=benches/peers/target/release/towerscope-peers
case " ${stacks[*]}" in
  *" peers/"*) cargo build --release --manifest-path benches/peers/Cargo.toml >&2 ;;
esac
cores=$(nproc)
server_cpu=0
load_cpu=$(( cores > 1 ? 1 : 0 ))

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"; kill $(jobs -p) 2>/dev/null || true' EXIT

if [ "$otlp" = 1 ]; then
  sink_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  taskset -c "$load_cpu" target/release/examples/otlp_sink --addr "127.0.0.1:$sink_port" >"$tmp/sink.log" 2>&1 &
  sink_pid=$!
  export OTEL_EXPORTER_OTLP_TRACES_ENDPOINT="http://127.0.0.1:$sink_port/v1/traces"
fi

# A core's total and idle jiffies (idle + iowait), from /proc/stat.
cpu_times() { # cpu
  awk -v c="cpu$1" '$1 == c { t = 0; for (i = 2; i <= 9; i++) t += $i; print t, $5 + $6 }' /proc/stat
}

# Starts a stack's server on the server core and waits until it answers; sets `port`, `pid`
# and `log`.
start_server() { # stack[:args] tag
  local stack=$1 name own="" exe=$bin args=$server_args
  name=${stack%%:*}
  [ "$name" = "$stack" ] || own=${stack#*:}
  case $name in
    peers/*) exe=$peers_bin; name=${name#peers/}; args="" ;;
    alt/*)
      [ -x "$alt" ] || { echo "bench.sh: $stack needs --alt BINARY" >&2; exit 2; }
      exe=$alt; name=${name#alt/} ;;
  esac
  log="$tmp/server-$2-$(tr -c 'A-Za-z0-9+\n' _ <<<"$stack")"
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  # Appending, so that the file can be emptied under the running server (--interleave).
  taskset -c "$server_cpu" "$exe" --addr "127.0.0.1:$port" --stack "$name" --workers 1 $args $own >>"$log.log" 2>&1 &
  pid=$!
  for _ in $(seq 100); do
    curl -s -o /dev/null "http://127.0.0.1:$port/" 2>/dev/null && break
    sleep 0.05
  done
  # Warm up (route handles, connections).
  taskset -c "$load_cpu" wrk -t1 -c32 -d2s "http://127.0.0.1:$port$path" >/dev/null
}

# One measured window of wrk against a running server; appends a row to the results.
measure() { # stack round port log
  local stack=$1 round=$2 port=$3 log=$4 out before after busy
  before=$(cpu_times "$load_cpu")
  out=$(taskset -c "$load_cpu" wrk -t1 -c32 -d"${duration}s" --latency "http://127.0.0.1:$port$path")
  after=$(cpu_times "$load_cpu")
  busy=$(awk -v a="$before" -v b="$after" 'BEGIN { split(a, x); split(b, y);
    t = y[1] - x[1]; print (t > 0 ? int(100 * (1 - (y[2] - x[2]) / t) + 0.5) : "-") }')
  # The logging stacks write ~40 MB/s to their log file: keep its head, drop the rest, and let
  # the page cache's writeback finish before the next stack is measured.
  [ -e "$log.head" ] || head -n 20 "$log.log" >"$log.head"
  truncate -s 0 "$log.log"
  sync
  local rps p99
  rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
  p99=$(awk '$1=="99%" {print $2}' <<<"$out")
  printf '%s\t%s\t%s\t%s\t%s\n' "$stack" "$round" "$rps" "$p99" "$busy" >>"$tmp/results"
  echo "round $round  $stack: $rps req/s, p99 $p99, load core ${busy}% busy" >&2
}

run_one() { # stack[:args] round
  local port pid log
  start_server "$1" "$2"
  measure "$1" "$2" "$port" "$log"
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

# The stacks' order is reversed every other round: on this kind of host the second of two
# back-to-back runs is measured faster (about 5%, seen with either order of bare and red), so a
# fixed order would favour the stacks run after bare.
reversed=()
for (( i=${#stacks[@]}-1; i>=0; i-- )); do reversed+=("${stacks[$i]}"); done
if [ "$interleave" = 1 ]; then
  # Every stack's server up at once (idle ones wait in epoll), then the rounds: windows of
  # `duration` seconds against each in turn, with no restart in between, so a stack and bare
  # are measured seconds apart.
  declare -A ports pids logs
  for stack in "${stacks[@]}"; do
    start_server "$stack" all
    ports[$stack]=$port; pids[$stack]=$pid; logs[$stack]=$log
  done
fi
for round in $(seq "$rounds"); do
  if (( round % 2 )); then order=("${stacks[@]}"); else order=("${reversed[@]}"); fi
  for stack in "${order[@]}"; do
    if [ "$interleave" = 1 ]; then
      measure "$stack" "$round" "${ports[$stack]}" "${logs[$stack]}"
    else
      run_one "$stack" "$round"
    fi
  done
done
if [ "$interleave" = 1 ]; then
  for stack in "${stacks[@]}"; do kill "${pids[$stack]}"; wait "${pids[$stack]}" 2>/dev/null || true; done
fi

if [ "$otlp" = 1 ]; then
  kill -TERM "$sink_pid"; wait "$sink_pid" 2>/dev/null || true
  echo "otlp sink: $(tail -1 "$tmp/sink.log")" >&2
fi

python3 - "$tmp/results" "${stacks[@]}" <<'PY'
import random, statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])]
stacks = sys.argv[2:]
def ms(v):
    for unit, f in (("us", 0.001), ("ms", 1.0), ("s", 1000.0)):
        if v.endswith(unit):
            return float(v[: -len(unit)]) * f
    return float(v)
# The ratio of the 90th percentiles: on this kind of host a run is only ever slowed down (the
# same binary spreads over 56,000-101,000 requests/s, in a long tail below a steady top), so
# the top of each stack's runs is its least disturbed throughput. Over 30 rounds of two
# red+log binaries that measured alike, its bootstrap spread was half that of the medians
# (1.8% against 3.7%; BENCHMARKS.md, sessions 11 and 12).
def q90(xs):
    # The 90th percentile, interpolated between the two nearest ranks.
    xs = sorted(xs)
    i = 0.9 * (len(xs) - 1)
    lo = int(i)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (i - lo)
med = {}
top = {}
p99 = {}
for s in stacks:
    r = [float(x[2]) for x in rows if x[0] == s]
    med[s] = statistics.median(r)
    top[s] = q90(r)
    p99[s] = statistics.median([ms(x[3]) for x in rows if x[0] == s])
base = med.get("bare")
# Paired ratios: each stack against the bare run of the same round, which shares the machine's
# state at that moment; their median is steadier than the ratio of medians on a noisy host.
bare_by_round = {x[1]: float(x[2]) for x in rows if x[0] == "bare"}
# The load core's busy time (wrk and the loopback work done on its side): near 100%, the
# generator is at its limit too and that stack's throughput is partly wrk's (BENCHMARKS.md,
# sessions 11 and 12).
def busy(s):
    b = [float(x[4]) for x in rows if x[0] == s and len(x) > 4 and x[4] != "-"]
    return f"{statistics.median(b):.0f}%" if b else "-"
# How far the paired median can be trusted: a 95% percentile-bootstrap interval of it (5,000
# resamples of the rounds, fixed seed). On a host whose single rounds spread over +-25%, it
# says whether a few points' difference from a target is resolved at all (session 21).
def interval(pairs):
    rng = random.Random(1)
    meds = sorted(statistics.median(rng.choices(pairs, k=len(pairs))) for _ in range(5000))
    return f"{meds[124]:.2f}-{meds[4874]:.2f}"
print("| stack | requests/s (median) | p99 (ms) | ratio to bare | paired ratio, median (min-max) | 95% interval of the paired median | ratio of the 90th percentiles | load core busy (median) |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
for s in stacks:
    ratio = f"{med[s] / base:.2f}x" if base else "-"
    pairs = [float(x[2]) / bare_by_round[x[1]] for x in rows if x[0] == s and x[1] in bare_by_round]
    paired = f"{statistics.median(pairs):.2f}x ({min(pairs):.2f}-{max(pairs):.2f})" if pairs else "-"
    spread = interval(pairs) if pairs and s != "bare" else "-"
    upper = f"{top[s] / top['bare']:.2f}x" if "bare" in top else "-"
    print(f"| {s} | {med[s]:,.0f} | {p99[s]:.2f} | {ratio} | {paired} | {spread} | {upper} | {busy(s)} |")
PY
