#!/usr/bin/env bash
# crew serve next to Express + Piscina, same machine, same run, loopback, bounded duration:
#   1. compute endpoint (sum of i < 100,000): requests/s and p99
#   2. /healthz p99 while the compute endpoint saturates both cores (crew, Express + Piscina,
#      and Express running the loop on its event loop as the contrast)
#   3. GET /healthz requests/s: crew serve --cluster 2 vs Node's cluster hello world, 2 workers,
#      and the ceiling of this machine: a canned-response epoll server (ceiling.cpp) under the
#      same wrk; then the two clusters again with wrk on a CPU of its own
#
#   bench/serve/run.sh <path-to-crew> [--quick]
# Node anchors come from bench/node/package.json (installed by bench/node/install.sh into
# $CREW_NODE_DIR, default build/bench-node). Needs wrk (scripts/bootstrap installs it).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
crew=${1:?usage: run.sh <path-to-crew> [--quick]}
duration=10s
[[ ${2:-} == --quick ]] && duration=3s
node_dir=${CREW_NODE_DIR:-$root/build/bench-node}
bash "$root/bench/node/install.sh" "$node_dir" >&2
export NODE_PATH=$node_dir/node_modules
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

wait_port() {  # wait_port <port>
  for _ in $(seq 1 500); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.02
  done
  echo "run.sh: nothing listens on $1" >&2
  return 1
}
# wrk_stats <wrk args...> -> "rps p99_ms"
wrk_stats() {
  local out
  out=$(${WRK_PREFIX:-} wrk --latency "$@")
  local rps p99
  rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
  p99=$(awk '$1 == "99%" {v=$2; if (v ~ /us$/) {sub(/us/,"",v); v/=1000} else if (v ~ /ms$/) {sub(/ms/,"",v)} else if (v ~ /s$/) {sub(/s/,"",v); v*=1000}; print v}' <<<"$out")
  echo "$rps $p99"
}
compute() { wrk_stats -t2 -c32 -d"$duration" -s "$here/post.lua" "http://127.0.0.1:$1$2"; }
# healthz p99 while another wrk saturates the compute endpoint. The probe runs at nice -10 when
# allowed (for every server alike): on two cores shared with the load, a probe at the load's
# priority measures its own wait for a CPU as much as the server's answer.
probe=""
nice -n -10 true 2>/dev/null && probe="nice -n -10"
responsive() {
  wrk -t1 -c32 -d"$duration" -s "$here/post.lua" "http://127.0.0.1:$1$2" >/dev/null &
  local load=$!
  sleep 0.5
  WRK_PREFIX=$probe wrk_stats -t1 -c4 -d"$duration" "http://127.0.0.1:$1/healthz"
  wait "$load"
}

"$crew" serve --port 18080 --workers 2 --log-format off >"$work/crew.log" 2>&1 &
pids+=($!)
PORT=18081 node "$here/express_piscina.js" >"$work/express.log" 2>&1 &
pids+=($!)
PORT=18082 INLINE=1 node "$here/express_piscina.js" >"$work/inline.log" 2>&1 &
pids+=($!)
wait_port 18080
wait_port 18081
wait_port 18082

read -r crew_rps crew_p99 < <(compute 18080 /v1/tasks/sum_range)
read -r ex_rps ex_p99 < <(compute 18081 /compute)
read -r crew_h _ crew_hp99 < <(responsive 18080 /v1/tasks/sum_range | awk '{print $1, "x", $2}')
read -r ex_h _ ex_hp99 < <(responsive 18081 /compute | awk '{print $1, "x", $2}')
read -r in_h _ in_hp99 < <(responsive 18082 /compute | awk '{print $1, "x", $2}')

for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
wait 2>/dev/null || true
pids=()
"$crew" serve --cluster 2 --workers 1 --port 18083 --log-format off >"$work/cluster.log" 2>&1 &
pids+=($!)
PORT=18084 node "$here/node_cluster.js" >"$work/node_cluster.log" 2>&1 &
pids+=($!)
"${CXX:-c++}" -O2 -std=c++20 -o "$work/ceiling" "$here/ceiling.cpp"
"$work/ceiling" 18085 2 &
pids+=($!)
wait_port 18083
wait_port 18084
wait_port 18085
read -r cl_rps cl_p99 < <(wrk_stats -t2 -c64 -d"$duration" "http://127.0.0.1:18083/healthz")
read -r nc_rps nc_p99 < <(wrk_stats -t2 -c64 -d"$duration" "http://127.0.0.1:18084/")
read -r ce_rps ce_p99 < <(wrk_stats -t2 -c64 -d"$duration" "http://127.0.0.1:18085/healthz")

# The same two clusters with the load generator on a CPU of its own (servers on CPU 0, wrk -t1 on
# CPU 1). On shared cores wrk takes about a core's worth of CPU from whichever server it drives,
# which compresses the ratio; pinned, each server gets the same one core and the ratio is the
# servers' own cost per request.
for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
wait 2>/dev/null || true
pids=()
pc_rps=0 pn_rps=0
if (($(nproc) >= 2)); then
  taskset -c 0 "$crew" serve --cluster 2 --workers 1 --port 18086 --log-format off >"$work/cluster_pinned.log" 2>&1 &
  pids+=($!)
  PORT=18087 taskset -c 0 node "$here/node_cluster.js" >"$work/node_cluster_pinned.log" 2>&1 &
  pids+=($!)
  wait_port 18086
  wait_port 18087
  read -r pc_rps _ < <(WRK_PREFIX="taskset -c 1" wrk_stats -t1 -c64 -d"$duration" "http://127.0.0.1:18086/healthz")
  read -r pn_rps _ < <(WRK_PREFIX="taskset -c 1" wrk_stats -t1 -c64 -d"$duration" "http://127.0.0.1:18087/")
fi

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }
# verdict <a> <b> <target>: a/b against the target, unrounded (1.996 is not 2)
verdict() { awk -v a="$1" -v b="$2" -v t="$3" 'BEGIN { print (b > 0 && a / b >= t) ? "met" : "NOT met" }'; }
printf '\ncrew serve vs Express + Piscina (2 workers each, wrk -c32, %s per run)\n' "$duration"
printf '%-46s %12s %14s %8s  %s\n' "figure" "crew" "Express+Pisc." "ratio" "target"
r=$(ratio "$crew_rps" "$ex_rps")
printf '%-46s %12.0f %14.0f %7sx  >= 5x: %s\n' "compute requests/s" "$crew_rps" "$ex_rps" "$r" "$(verdict "$crew_rps" "$ex_rps" 5)"
r=$(ratio "$ex_p99" "$crew_p99")
printf '%-46s %12.2f %14.2f %7sx  <= 1/5: %s\n' "compute p99 (ms)" "$crew_p99" "$ex_p99" "$r" "$(verdict "$ex_p99" "$crew_p99" 5)"
met=$(awk -v v="$crew_hp99" 'BEGIN { print (v <= 2) ? "met" : "NOT met" }')
printf '%-46s %12.2f %14.2f %8s  crew <= 2 ms: %s\n' "/healthz p99 under compute load (ms)" "$crew_hp99" "$ex_hp99" "" "$met"
printf '%-46s %12s %14.2f %8s  (loop on the event loop)\n' "/healthz p99, Express computing inline (ms)" "-" "$in_hp99" ""
r=$(ratio "$cl_rps" "$nc_rps")
printf '%-46s %12.0f %14.0f %7sx  >= 2x: %s\n' "cluster of 2: /healthz requests/s (Node cluster)" "$cl_rps" "$nc_rps" "$r" "$(verdict "$cl_rps" "$nc_rps" 2)"
printf '%-46s %12.0f %14s %7sx  (ceiling/Node: %sx)\n' "  ceiling: canned responder, 2 processes" "$ce_rps" "" "$(ratio "$cl_rps" "$ce_rps")" "$(ratio "$ce_rps" "$nc_rps")"
r=$(ratio "$pc_rps" "$pn_rps")
printf '%-46s %12.0f %14.0f %7sx  >= 2x: %s\n' "  same, servers on CPU 0, wrk on CPU 1" "$pc_rps" "$pn_rps" "$r" "$(verdict "$pc_rps" "$pn_rps" 2)"
