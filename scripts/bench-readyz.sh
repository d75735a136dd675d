#!/usr/bin/env bash
# /readyz under load while a dependency check hangs: the example server's downstream check
# points at a listener that accepts connections and never answers, so every background run of
# that check hangs until its timeout. Probes must keep answering from the latest results.
#
#   scripts/bench-readyz.sh [--duration SECONDS] [--rounds N]
set -euo pipefail
cd "$(dirname "$0")/.."
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
python3 - "$port" <<'PY' &
import socket, sys, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(1024)
held = []
while True:
    c, _ = s.accept()
    held.append(c)  # never answer
PY
blackhole=$!
trap 'kill $blackhole 2>/dev/null || true' EXIT
sleep 0.3
scripts/bench.sh --path /readyz --server-args "--downstream http://127.0.0.1:$port/hang" "$@" full
