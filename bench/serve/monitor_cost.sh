#!/usr/bin/env bash
# What watching `crew serve` costs: the CPU time of the server (and its task worker processes)
# over a quiet minute, first with nobody watching, then with three dashboards' event streams and
# one `crew top`-style poller (GET /api/monitor every second) open. Prints both as a share of
# one core, and the difference: the monitor's cost.
#
#   bench/serve/monitor_cost.sh [build-dir] [seconds]
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
build=${1:-$root/build/release}
seconds=${2:-60}
crew=$build/tools/crew/crew
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
url=http://127.0.0.1:$port

"$crew" serve --isolation process --workers 2 --port "$port" --log-format off >/dev/null 2>&1 &
server=$!
watchers=()
cleanup() {
  for p in "${watchers[@]}"; do kill "$p" 2>/dev/null || true; done
  kill "$server" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap cleanup EXIT
for _ in $(seq 200); do curl -sf "$url/healthz" >/dev/null && break; sleep 0.05; done
curl -sf -d '{"args": [10]}' "$url/v1/tasks/fib" >/dev/null  # the task workers are up

# CPU seconds (user + system) of the server and its children that are alive now.
cpu_seconds() {
  local total=0 pid ticks
  for pid in $server $(pgrep -P "$server" || true); do
    ticks=$(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null || echo 0)
    total=$((total + ticks))
  done
  echo "scale=4; $total / $(getconf CLK_TCK)" | bc
}
measure() {
  local a b
  a=$(cpu_seconds)
  sleep "$seconds"
  b=$(cpu_seconds)
  echo "scale=3; ($b - $a) * 100 / $seconds" | bc
}

idle=$(measure)
for _ in 1 2 3; do
  curl -sN "$url/api/events" >/dev/null &
  watchers+=($!)
done
(while :; do curl -sf "$url/api/monitor?history=1" >/dev/null; sleep 1; done) &
watchers+=($!)
watched=$(measure)
echo "seconds: $seconds"
echo "idle, nobody watching:        ${idle}% of a core"
echo "3 event streams + 1 poller:   ${watched}% of a core"
echo "the watching costs:           $(echo "scale=3; $watched - $idle" | bc)% of a core"
