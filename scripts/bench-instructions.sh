#!/usr/bin/env bash
# Deterministic companion of scripts/bench.sh: user-space instructions per request of the
# example server for each stack, counted by callgrind (repeatable whatever the machine's noise;
# kernel time, the larger share of a request on loopback, is not counted).
#
#   scripts/bench-instructions.sh [--requests N] [--path PATH] [--server-args "ARGS"] [--cache] [--atomics] [--keep DIR] [STACK...]
#
# --cache: callgrind also simulates the caches (the host's L1 and last-level geometry, read by
# valgrind from the CPU; LRU, no prefetching) and the table gains the first-level instruction
# and data misses per request: what code and data each request touches that was not still in
# L1 (slower: about 3x the run time).
#
# --atomics: the table gains the atomic read-modify-writes per request (`lock`-prefixed
# instructions and `xchg` with memory, executed, found by matching callgrind's per-instruction
# counts against `objdump -d`): one instruction each for callgrind, about 20 cycles each even
# uncontended, and a cache line moved between cores for every one on a line that two workers
# share. With --keep, DIR/atomics-STACK.txt lists them by function.
#
# --keep DIR: the callgrind outputs are kept there (cg-STACK.out), for callgrind_annotate, e.g.
# `callgrind_annotate --show=Ir,I1mr --sort=I1mr DIR/cg-red.out`.
#
# A STACK named peers/NAME is a peer stack of benches/peers (see scripts/bench.sh), built on
# demand; --server-args go to the example server only.
set -euo pipefail
cd "$(dirname "$0")/.."
requests=3000
path=/echo/42
server_args=""
cache=0
atomics=0
keep=""
stacks=()
while [ $# -gt 0 ]; do
  case "$1" in
    --requests) requests=$2; shift 2 ;;
    --path) path=$2; shift 2 ;;
    --server-args) server_args=$2; shift 2 ;;
    --cache) cache=1; shift ;;
    --atomics) atomics=1; shift ;;
    # Relative to where the script was called from, not to the repository root it moved to.
    --keep) case $2 in /*) keep=$2 ;; *) keep=$OLDPWD/$2 ;; esac; shift 2 ;;
    *) stacks+=("$1"); shift ;;
  esac
done
[ ${#stacks[@]} -gt 0 ] || stacks=(bare red full)
command -v valgrind >/dev/null || { echo "valgrind is missing: apt-get install valgrind" >&2; exit 1; }
cargo build --release --example server >&2
bin=$PWD/target/release/examples/server
peers_bin=$PWD/benches/peers/target/release/towerscope-peers
case " ${stacks[*]}" in
  *" peers/"*) cargo build --release --manifest-path benches/peers/Cargo.toml >&2 ;;
esac
tmp=$(mktemp -d)
if [ -n "$keep" ]; then mkdir -p "$keep"; fi
trap 'rm -rf "$tmp"; kill $(jobs -p) 2>/dev/null || true' EXIT

# A keep-alive client that sends exactly N requests over one connection.
client() { # port n
  python3 - "$1" "$2" "$path" <<'PY'
import socket, sys
port, n, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
s = socket.create_connection(("127.0.0.1", port))
req = f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
buf = b""
for _ in range(n):
    s.sendall(req)
    while True:
        head, sep, rest = buf.partition(b"\r\n\r\n")
        if sep:
            length = int([l.split(b":")[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")][0])
            if len(rest) >= length:
                buf = rest[length:]
                break
        buf += s.recv(65536)
PY
}

# Atomic read-modify-writes per request in a callgrind output made with --dump-instr=yes
# --dump-line=no: prints the count; with a third argument, writes the by-function list there.
atomic_rmws() { # callgrind.out requests [by-function file]
  python3 - "$@" <<'PY'
import collections, re, subprocess, sys
out, n = sys.argv[1], int(sys.argv[2])
names, objects = {}, {}
def name(s, table):
    m = re.match(r"\((\d+)\)(?: (.*))?", s)
    if not m:
        return s
    if m.group(2):
        table[m.group(1)] = m.group(2)
    return table.get(m.group(1), "?")
counts = collections.Counter()  # (object, address): executions
fn_of = {}
ob = fn = None
last = 0
call_cost = False
for line in open(out):
    line = line.rstrip("\n")
    key, _, value = line.partition("=")
    if key in ("ob", "cob"):
        o = name(value, objects)
        if key == "ob":
            ob = o
        continue
    if key in ("fn", "cfn"):
        f = name(value, names)
        if key == "fn":
            fn = f
        continue
    if key in ("fl", "fi", "fe", "cfi", "cfl"):
        continue
    if key == "calls":
        call_cost = True  # the next cost line is the call's inclusive cost
        continue
    if not line or not (line[0].isdigit() or line[0] in "+-*"):
        continue
    p = line.split()
    a = p[0]
    if a == "*":
        addr = last
    elif a[0] in "+-":
        addr = last + int(a, 0)
    else:
        addr = int(a, 0)
    last = addr
    if call_cost:
        call_cost = False
        continue
    if len(p) > 1:
        counts[(ob, addr)] += int(p[1])
        fn_of[(ob, addr)] = fn
total = 0
by_fn = collections.Counter()
for obj in {o for o, _ in counts}:
    if not obj or not obj.startswith("/"):
        continue
    text = subprocess.run(["objdump", "-d", "--no-show-raw-insn", obj],
                          capture_output=True, text=True).stdout
    locked = set()
    for l in text.splitlines():
        m = re.match(r"\s+([0-9a-f]+):\s+(\S+)(.*)", l)
        if m and (m.group(2) == "lock" or (m.group(2).startswith("xchg") and "(" in m.group(3))):
            locked.add(int(m.group(1), 16))
    # callgrind gives addresses as the object's own (ELF) addresses.
    for (o, addr), c in counts.items():
        if o == obj and addr in locked:
            total += c
            by_fn[fn_of[(o, addr)]] += c
print(f"{total / n:.1f}")
if len(sys.argv) > 3:
    with open(sys.argv[3], "w") as f:
        for fn, c in by_fn.most_common():
            f.write(f"{c / n:8.2f}  {fn}\n")
PY
}

sim=""
if [ "$cache" = 1 ]; then
  sim=--cache-sim=yes
  echo "| stack | instructions per request | ratio to bare | L1 instruction misses per request | L1 data misses per request |"
  echo "|---|---:|---:|---:|---:|"
else
  echo "| stack | instructions per request | ratio to bare |$([ "$atomics" = 1 ] && echo ' atomic read-modify-writes per request |')"
  echo "|---|---:|---:|$([ "$atomics" = 1 ] && echo '---:|')"
fi
if [ "$atomics" = 1 ]; then
  [ "$cache" = 0 ] || { echo "bench-instructions.sh: --atomics and --cache are separate runs" >&2; exit 2; }
  sim="--dump-instr=yes --dump-line=no"
fi
base=""
for stack in "${stacks[@]}"; do
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  file=$(tr -c 'A-Za-z0-9+\n' _ <<<"$stack")
  out="${keep:-$tmp}/cg-$file.out"
  case $stack in
    peers/*) exe=$peers_bin; name=${stack#peers/}; args="" ;;
    *) exe=$bin; name=$stack; args=$server_args ;;
  esac
  valgrind --tool=callgrind $sim --instr-atstart=no --callgrind-out-file="$out" \
    "$exe" --addr "127.0.0.1:$port" --stack "$name" --workers 1 $args >"$tmp/log-$file" 2>&1 &
  pid=$!
  for _ in $(seq 200); do curl -fs "http://127.0.0.1:$port/" >/dev/null 2>&1 && break; sleep 0.1; done
  client "$port" 200                      # warm-up: route handles, buffers
  callgrind_control -i on "$pid" >/dev/null
  client "$port" "$requests"
  callgrind_control -i off "$pid" >/dev/null
  kill -INT "$pid"; wait "$pid" 2>/dev/null || true
  total=$(awk '/^totals:/ {print $2; exit}' "$out")
  per=$(( total / requests ))
  [ -n "$base" ] || base=$per
  if [ "$cache" = 1 ]; then
    misses=$(awk -v n="$requests" '
      /^events:/ { for (i = 2; i <= NF; i++) col[$i] = i }
      /^totals:/ { printf "%.0f | %.0f", $col["I1mr"] / n, ($col["D1mr"] + $col["D1mw"]) / n; exit }' "$out")
    python3 -c "print(f'| $stack | {$per:,} | {$per/$base:.3f}x | $misses |')"
  elif [ "$atomics" = 1 ]; then
    rmws=$(atomic_rmws "$out" "$requests" ${keep:+"$keep/atomics-$file.txt"})
    python3 -c "print(f'| $stack | {$per:,} | {$per/$base:.3f}x | $rmws |')"
  else
    python3 -c "print(f'| $stack | {$per:,} | {$per/$base:.3f}x |')"
  fi
done
