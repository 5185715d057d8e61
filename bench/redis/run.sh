#!/usr/bin/env bash
# crew::redis next to BullMQ 6.7 (ioredis), same run, same redis-server, same payload, results
# removed on completion for both:
#   (a) enqueue rate, one at a time and bulk
#   (b) processing rate of a pre-enqueued backlog, worker concurrency 1 and 32
#   (c) end-to-end p50/p99, a producer waiting for each result, and the same hops with plain
#       XADD/XREAD on this machine (the floor any queue pays)
#   (d) Redis commands and Redis CPU per job (INFO commandstats / INFO cpu deltas)
#
#   bench/redis/run.sh [--quick]
# crew's half is crew_queue_bench ($CREW_QUEUE_BENCH, default build/bench/bench/crew_queue_bench:
# `cmake --preset bench && cmake --build build/bench --target crew_queue_bench`). BullMQ and
# ioredis come from bench/node/package.json (installed by bench/node/install.sh into
# $CREW_NODE_DIR, default build/bench-node). Redis runs without persistence on a free loopback
# port in a temporary directory, on CPU 0; the clients run on CPU 1 (taskset, 2+ CPUs).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
quick=()
case ${1:-} in
  --quick) quick=(--quick) ;;
  "") ;;
  *) echo "usage: run.sh [--quick]" >&2; exit 64 ;;
esac
bench=${CREW_QUEUE_BENCH:-$root/build/bench/bench/crew_queue_bench}
[[ -x $bench ]] || { echo "run.sh: $bench not built (see the header of this script)" >&2; exit 1; }
command -v redis-server >/dev/null || { echo "run.sh: redis-server not found (scripts/bootstrap)" >&2; exit 1; }
node_dir=${CREW_NODE_DIR:-$root/build/bench-node}
bash "$root/bench/node/install.sh" "$node_dir" >&2
export NODE_PATH=$node_dir/node_modules

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

server_cpu=() client_cpu=()
if command -v taskset >/dev/null && (($(nproc) >= 2)); then
  server_cpu=(taskset -c 0)
  client_cpu=(taskset -c 1)
fi

# redis-server has no --port 0: try free-looking ports until one starts. Its answer must come
# from our own process (INFO's process_id): another test's Redis may hold the port, and this
# script flushes the database.
port=
for _ in 1 2 3 4 5; do
  p=$((20000 + RANDOM % 40000))
  (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && continue
  "${server_cpu[@]}" redis-server --port "$p" --bind 127.0.0.1 --dir "$work" --save "" \
    --appendonly no --daemonize no --logfile "$work/redis.log" &
  pid=$!
  pids+=("$pid")
  for _ in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || break
    if grep -qx "process_id:$pid" <<<"$(redis-cli -p "$p" info server 2>/dev/null | tr -d '\r')"; then
      port=$p
      break
    fi
    sleep 0.05
  done
  [[ -n $port ]] && break
done
[[ -n $port ]] || { echo "run.sh: redis-server did not start: $(tail -3 "$work/redis.log")" >&2; exit 1; }

# run_driver <output> <command...>: in the background, so the trap can stop it on failure.
run_driver() {
  local out=$1
  shift
  "${client_cpu[@]}" "$@" >"$out" &
  local pid=$!
  pids+=("$pid")
  wait "$pid"
}
echo "crew ..." >&2
run_driver "$work/crew.txt" "$bench" --url "redis://127.0.0.1:$port" "${quick[@]}"
redis-cli -p "$port" flushall >/dev/null  # each system starts on an empty keyspace
echo "BullMQ ..." >&2
run_driver "$work/bullmq.txt" node "$here/bullmq_bench.js" --port "$port" "${quick[@]}"

# v[<system>.<key>]: every figure of both drivers (system: crew, bull).
declare -A v
while read -r k x; do v[crew.$k]=$x; done <"$work/crew.txt"
while read -r k x; do v[bull.$k]=$x; done <"$work/bullmq.txt"
# The Redis CPU target counts a job's whole life at throughput: bulk enqueue + concurrency 32.
for s in crew bull; do
  for m in cpu_us calls; do
    v[$s.life.$m]=$(awk -v a="${v[$s.enqueue_bulk.$m]}" -v b="${v[$s.process_c32.$m]}" 'BEGIN { print a + b }')
  done
done

ratio() { awk -v a="$1" -v b="${2:-0}" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }
# verdict <ratio expression> <a> <b>: met when a/b satisfies it, unrounded (2.996 is not 3)
verdict() { awk -v a="$2" -v b="$3" "BEGIN { r = b > 0 ? a / b : -1; print (r >= 0 && r $1) ? \"met\" : \"NOT met\" }"; }
# row <label> <key> <digits> [<target text> <target expression>]
row() {
  local c=${v[crew.$2]:-} b=${v[bull.$2]:-} t=""
  [[ -n ${4:-} ]] && t="$4: $(verdict "$5" "$c" "$b")"
  local line
  line=$(printf '%-44s %12s %12s %9s  %s' "$1" "$(printf "%.${3}f" "$c")" \
    "$([[ -n $b ]] && printf "%.${3}f" "$b" || echo -)" "$(ratio "$c" "$b")" "$t")
  echo "${line%"${line##*[! ]}"}"
}

printf '\ncrew::redis vs BullMQ 6.7.6 + ioredis 6.0.0%s: redis-server %s, clients %s\n' \
  "${quick:+ [quick]}" "${server_cpu[*]:-unpinned}" "${client_cpu[*]:-unpinned}"
printf '%-44s %12s %12s %9s  %s\n' "figure" "crew" "BullMQ" "crew/Bull" "target"
row "(a) enqueue one at a time (jobs/s)" enqueue_one.rate 0
row "(a) enqueue bulk (jobs/s)" enqueue_bulk.rate 0
row "(b) processing, concurrency 1 (jobs/s)" process_c1.rate 0 ">= 3x" ">= 3"
row "(b) processing, concurrency 32 (jobs/s)" process_c32.rate 0 ">= 3x" ">= 3"
row "(b)   crew process isolation, c 1 (jobs/s)" process_proc_c1.rate 0
row "(b)   crew process isolation, c 32 (jobs/s)" process_proc_c32.rate 0
row "(c) end-to-end p50 (us)" e2e.p50_us 0 "<= 1/3" "<= 1/3"
row "(c) end-to-end p99 (us)" e2e.p99_us 0
# What this machine's hops cost alone (crew_queue_bench's floor): a third of BullMQ's p50 minus
# it is what crew's queue work (functions, client threads) may take for (c) to be met.
floor=${v[crew.floor.p50_us]:-} bull_e2e=${v[bull.e2e.p50_us]:-}
if [[ -n $floor && -n $bull_e2e ]]; then
  printf '%-44s %12.0f %12s %9s  %s\n' "(c)   the hops alone, plain XADD/XREAD (us)" "$floor" - \
    "$(ratio "$floor" "$bull_e2e")" \
    "$(awk -v f="$floor" -v b="$bull_e2e" -v c="${v[crew.floor.cpu_us]:-0}" \
      'BEGIN { printf "Redis CPU %.0f us; 1/3 of BullMQ leaves %.0f us above it", c, b / 3 - f }')"
fi
workloads=(enqueue_one enqueue_bulk process_c1 process_c32 process_proc_c1 process_proc_c32 e2e)
for w in "${workloads[@]}"; do row "(d) Redis CPU per job, $w (us)" "$w.cpu_us" 1; done
row "(d) Redis CPU per job, enqueue bulk + c 32" life.cpu_us 1 "<= 1/2" "<= 1/2"
for w in "${workloads[@]}"; do row "(d) Redis commands per job, $w" "$w.calls" 2; done
row "(d) Redis commands per job, bulk + c 32" life.calls 2

# Which commands, per job, the ones run inside crew's functions and BullMQ's scripts included.
printf '\nRedis commands per job by command (crew | BullMQ)\n'
for w in enqueue_one enqueue_bulk process_c1 process_c32 e2e; do
  line=""
  for s in crew bull; do
    part=$(for k in "${!v[@]}"; do
      if [[ $k == "$s.$w.cmd."* ]]; then printf '%s %s\n' "${k#"$s.$w.cmd."}" "${v[$k]}"; fi
    done | sort -k2,2gr -k1,1 | awk '$2 >= 0.005 { printf "%s%s %.2f", (n++ ? ", " : ""), $1, $2 }')
    line+="${line:+ | }${part:--}"
  done
  printf '  %-13s %s\n' "$w" "$line"
done
