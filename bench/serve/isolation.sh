#!/usr/bin/env bash
# crew serve's two isolations side by side, to choose the default by measurement: the compute
# endpoint (sum of i < 100,000) under the same wrk load as run.sh, thread isolation and process
# isolation alternating (A B A B ...) so that a drift of the machine hits both alike.
#
#   bench/serve/isolation.sh <path-to-crew> [rounds] [duration]     # defaults: 3 rounds of 10s
# Prints each run and the medians: requests/s and p99, and process as a share of thread.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
crew=${1:?usage: isolation.sh <path-to-crew> [rounds] [duration]}
rounds=${2:-3}
duration=${3:-10s}
work=$(mktemp -d)
pid=""
cleanup() { [[ -n $pid ]] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

run_one() {  # run_one <isolation> [taskset cpus for the server] [taskset cpus for wrk] -> "rps p99_ms"
  local iso=$1 port=18090
  ${2:+taskset -c "$2"} "$crew" serve --port "$port" --workers 2 --isolation "$iso" \
    --log-format off >"$work/$iso.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 500); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.02
  done
  # Warm-up: process workers start, thread pools grow.
  wrk -t2 -c32 -d2s -s "$here/post.lua" "http://127.0.0.1:$port/v1/tasks/sum_range" >/dev/null
  local out
  out=$(${3:+taskset -c "$3"} wrk --latency -t2 -c32 -d"$duration" -s "$here/post.lua" \
    "http://127.0.0.1:$port/v1/tasks/sum_range")
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  pid=""
  awk '/^Requests\/sec:/ {rps=$2}
       $1 == "99%" {v=$2; if (v ~ /us$/) {sub(/us/,"",v); v/=1000} else if (v ~ /ms$/) {sub(/ms/,"",v)} else if (v ~ /s$/) {sub(/s/,"",v); v*=1000}; p99=v}
       END {print rps, p99}' <<<"$out"
}

median() { sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

report() {  # report <label> <server cpus> <wrk cpus>
  local t_rps=() t_p99=() p_rps=() p_p99=() r a b
  for ((r = 1; r <= rounds; ++r)); do
    read -r a b < <(run_one thread "$2" "$3")
    t_rps+=("$a") t_p99+=("$b")
    read -r a b < <(run_one process "$2" "$3")
    p_rps+=("$a") p_p99+=("$b")
    printf '%s round %d: thread %8.0f req/s p99 %6.2f ms | process %8.0f req/s p99 %6.2f ms\n' \
      "$1" "$r" "${t_rps[-1]}" "${t_p99[-1]}" "${p_rps[-1]}" "${p_p99[-1]}"
  done
  local tr tp pr pp
  tr=$(printf '%s\n' "${t_rps[@]}" | median)
  tp=$(printf '%s\n' "${t_p99[@]}" | median)
  pr=$(printf '%s\n' "${p_rps[@]}" | median)
  pp=$(printf '%s\n' "${p_p99[@]}" | median)
  awk -v l="$1" -v tr="$tr" -v tp="$tp" -v pr="$pr" -v pp="$pp" 'BEGIN {
    printf "%s medians: thread %.0f req/s, p99 %.2f ms; process %.0f req/s (%.1f%% of thread), p99 %.2f ms (%.2fx thread)\n",
      l, tr, tp, pr, 100 * pr / tr, pp, pp / tp }'
}

report "shared cores" "" ""
if (($(nproc) >= 2)); then report "server CPU 0, wrk CPU 1" 0 1; fi
