#!/usr/bin/env bash
# crew worker end to end with a redis-server of its own (temp dir, free port): Redis unreachable
# exits 69 naming the URL; a job submitted with FCALL crew_submit runs in a task process (fib(10)
# = 55); an unknown task is dead-lettered as BadArguments; --metrics-port serves the worker's and
# the queue's numbers; SIGTERM stops the worker with exit 0.
#
#   worker.sh <path-to-crew>
set -euo pipefail
crew=$1
work=$(mktemp -d)
trap 'kill -9 "${pid:-}" 2>/dev/null || true; stop_redis; rm -rf "$work"' EXIT
# shellcheck source=common.bash
source "$(dirname "${BASH_SOURCE[0]}")/common.bash"
fail() { echo "worker.sh: FAIL: $*" >&2; exit 1; }

command -v redis-server >/dev/null || fail "redis-server not found: run scripts/bootstrap"

# A port nothing listens on: the worker must fail at start, naming the URL.
closed=$(closed_port)
set +e
"$crew" worker --redis "redis://127.0.0.1:$closed" --queue t >"$work/unreachable" 2>&1
rc=$?
set -e
[[ $rc -eq 69 ]] || fail "unreachable Redis: exit $rc, expected 69: $(cat "$work/unreachable")"
grep -q "127.0.0.1:$closed" "$work/unreachable" || fail "no URL in: $(cat "$work/unreachable")"

start_redis "$work"
port=$redis_port

"$crew" worker --redis "redis://127.0.0.1:$port" --queue t --workers 2 \
  --metrics-port 0 >"$work/out" 2>&1 &
pid=$!
for _ in $(seq 1 3000); do  # up to 30 s: sanitizer builds start slowly
  grep -q "queue 't'" "$work/out" && break
  kill -0 "$pid" 2>/dev/null || fail "crew worker exited early: $(cat "$work/out")"
  sleep 0.01
done
grep -q "queue 't'" "$work/out" || fail "no start line: $(cat "$work/out")"
metrics=$(grep -o 'http://127.0.0.1:[0-9]*/metrics' "$work/out" | head -n1 || true)
[[ -n $metrics ]] || fail "no metrics line: $(cat "$work/out")"

submit() {  # submit <id> <task> <msgpack args as \x escapes>
  printf 'FCALL crew_submit 1 crew:{t}: %s script %s "%s" 1 0 1 fixed 0 0 0 600000\n' "$1" "$2" "$3" |
    redis-cli -p "$port" >/dev/null
}
state_of() { redis-cli -p "$port" HGET "crew:{t}:job:$1" state; }
wait_state() {  # wait_state <id> <state>
  for _ in $(seq 1 6000); do  # up to 60 s
    [[ $(state_of "$1") == "$2" ]] && return 0
    sleep 0.01
  done
  fail "job $1 is '$(state_of "$1")', expected $2; worker: $(cat "$work/out")"
}

submit j1 fib '\x91\x0a'
wait_state j1 completed
[[ $(redis-cli -p "$port" HGET 'crew:{t}:job:j1' result) == 7 ]] || fail "fib(10) is not 55 (msgpack '7')"

submit j2 no_such_task '\x90'
wait_state j2 dead
[[ $(redis-cli -p "$port" HGET 'crew:{t}:job:j2' error_type) == BadArguments ]] ||
  fail "unknown task: $(redis-cli -p "$port" HGETALL 'crew:{t}:job:j2')"

# The worker's own counters, and the queue's as Redis counts them; a client that connects and
# says nothing holds up no one.
mport=${metrics#http://127.0.0.1:}
mport=${mport%/metrics}
exec 4<>"/dev/tcp/127.0.0.1/$mport"
scrape=$(curl -sS --max-time 30 "$metrics") || fail "GET $metrics failed"
for line in 'crew_worker_jobs_total{outcome="completed"} 1' 'crew_queue_up 1' \
  'crew_queue_jobs_total{queue="t",outcome="submitted"} 2' \
  'crew_queue_jobs_total{queue="t",outcome="dead"} 1' 'crew_queue_dead_letters{queue="t"} 1' \
  'crew_queue_latency_seconds_count{queue="t"} 1' \
  'crew_queue_latency_seconds_bucket{queue="t",le="+Inf"} 1'; do
  grep -qxF "$line" <<<"$scrape" || fail "no '$line' in /metrics: $scrape"
done
grep -qE '^crew_worker_prefetch [0-9]+$' <<<"$scrape" || fail "no crew_worker_prefetch gauge: $scrape"
[[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 30 "${metrics%/metrics}/healthz") == 200 ]] ||
  fail "/healthz is not 200"
[[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 30 -X POST "$metrics") == 405 ]] ||
  fail "POST /metrics is not 405"
exec 4<&-

kill -TERM "$pid"
set +e
wait "$pid"
rc=$?
set -e
pid=
[[ $rc -eq 0 ]] || fail "SIGTERM: exit $rc: $(cat "$work/out")"
grep -q "stopped; 1 completed" "$work/out" || fail "no summary: $(cat "$work/out")"
echo "worker.sh: ok"
