#!/usr/bin/env bash
# crew serve --backend redis://… end to end, with a redis-server of its own (temp dir, free port)
# and a crew worker: an unreachable Redis exits 69 naming the URL and a bad URL 2 naming the flag;
# a POST waits for the worker's result; ?wait=false answers 202 with a Location that GET follows to
# the result; unknown jobs and tasks are 404; a job past its timeout is 504, and GET shows it dead
# with TimedOut; SIGTERM drains with exit 0.
#
#   serve_redis.sh <path-to-crew>
set -euo pipefail
crew=$1
work=$(mktemp -d)
trap 'kill -9 "${pid:-}" "${worker:-}" 2>/dev/null || true; stop_redis; rm -rf "$work"' EXIT
# shellcheck source=common.bash
source "$(dirname "${BASH_SOURCE[0]}")/common.bash"
fail() { echo "serve_redis.sh: FAIL: $*" >&2; exit 1; }

command -v redis-server >/dev/null || fail "redis-server not found: run scripts/bootstrap"

http() {  # http <method> <path> [json-body] -> prints the whole response
  local method=$1 path=$2 body=${3:-}
  exec 3<>"/dev/tcp/127.0.0.1/$port"
  printf '%s %s HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s' \
    "$method" "$path" "${#body}" "$body" >&3
  cat <&3
  exec 3<&-
}

job_in_state() {  # job_in_state <location> <state>: prints GET <location> once the job is in <state>
  local reply="" deadline=$((SECONDS + 60))  # sanitizer builds on a busy machine are slow
  while ((SECONDS < deadline)); do
    reply=$(http GET "$1")
    if grep -q "\"state\":\"$2\"" <<<"$reply"; then
      echo "$reply"
      return 0
    fi
    sleep 0.01
  done
  fail "job $1 is not $2 after 60 s: $reply"
}

# A port nothing listens on: crew serve must not start, and must name the URL.
closed=$(closed_port)
rc=0
"$crew" serve --port 0 --backend "redis://127.0.0.1:$closed" >"$work/unreachable" 2>&1 || rc=$?
[[ $rc == 69 ]] || fail "unreachable Redis: exit $rc, expected 69: $(cat "$work/unreachable")"
grep -q "127.0.0.1:$closed" "$work/unreachable" || fail "no URL in: $(cat "$work/unreachable")"
for bad in "http://127.0.0.1:$closed" "redis://127.0.0.1:99999"; do
  rc=0
  "$crew" serve --port 0 --backend "$bad" >"$work/bad" 2>&1 || rc=$?
  [[ $rc == 2 ]] || fail "--backend $bad: exit $rc, expected 2 (usage): $(cat "$work/bad")"
  grep -q -- "--backend" "$work/bad" || fail "--backend $bad: the flag is not named: $(cat "$work/bad")"
done

start_redis "$work"
url="redis://127.0.0.1:$redis_port"

"$crew" worker --redis "$url" --queue s --workers 2 >"$work/worker" 2>&1 &
worker=$!
"$crew" serve --port 0 --backend "$url" --queue s --log-format off >"$work/serve" 2>&1 &
pid=$!
port=$(wait_port "$work/serve" 127.0.0.1)
grep -q "Redis queue 's'" "$work/serve" || fail "the start line does not name the queue: $(cat "$work/serve")"

reply=$(http POST /v1/tasks/fib '{"args": [30]}')
grep -q '"result":832040' <<<"$reply" || fail "fib(30) through the queue: $reply"

reply=$(http POST '/v1/tasks/fib?wait=false' '{"args": [20]}')
grep -q '^HTTP/1.1 202' <<<"$reply" || fail "?wait=false is not 202: $reply"
location=$(grep -o '^Location: [^[:space:]]*' <<<"$reply" | cut -d' ' -f2 || true)
[[ $location == /v1/jobs/* ]] || fail "no Location header: $reply"
grep -q "\"location\":\"$location\"" <<<"$reply" || fail "the body does not give the location: $reply"
reply=$(job_in_state "$location" completed)
grep -q '"result":6765' <<<"$reply" || fail "fib(20) job: $reply"

reply=$(http GET /v1/jobs/no-such-job)
grep -q '^HTTP/1.1 404' <<<"$reply" || fail "unknown job is not 404: $reply"
reply=$(http POST /v1/tasks/no_such_task '{"args": []}')
grep -q '^HTTP/1.1 404' <<<"$reply" || fail "unknown task is not 404: $reply"

reply=$(http POST '/v1/tasks/sleep_ms?timeout_ms=300' '{"args": [60000]}')
grep -q '^HTTP/1.1 504' <<<"$reply" || fail "a job past its timeout is not 504: $reply"
grep -q '"type":"TimedOut"' <<<"$reply" || fail "a job past its timeout: $reply"
reply=$(http POST '/v1/tasks/sleep_ms?timeout_ms=300&wait=false' '{"args": [60000]}')
location=$(grep -o '^Location: [^[:space:]]*' <<<"$reply" | cut -d' ' -f2 || true)
[[ $location == /v1/jobs/* ]] || fail "no Location header: $reply"
reply=$(job_in_state "$location" dead)
grep -q '"type":"TimedOut"' <<<"$reply" || fail "the timed-out job's status: $reply"

grep -q '^HTTP/1.1 200' <<<"$(http GET /readyz)" || fail "/readyz is not 200"

# /metrics carries the queue's numbers, read once a second off the I/O threads: two jobs
# completed (fib 30 and 20), two dead of their timeouts.
deadline=$((SECONDS + 30))
until metrics=$(http GET /metrics) &&
  grep -qF 'crew_queue_jobs_total{queue="s",outcome="completed"} 2' <<<"$metrics" &&
  grep -qF 'crew_queue_jobs_total{queue="s",outcome="dead"} 2' <<<"$metrics"; do
  ((SECONDS < deadline)) || fail "/metrics lacks the queue's numbers: $metrics"
  sleep 0.01
done
grep -qx 'crew_queue_up 1' <<<"$(tr -d '\r' <<<"$metrics")" || fail "crew_queue_up is not 1: $metrics"
grep -qF 'crew_queue_latency_seconds_count{queue="s"} 2' <<<"$metrics" || fail "no latency count: $metrics"

kill -TERM "$pid"
rc=0
wait "$pid" || rc=$?
pid=
[[ $rc == 0 ]] || fail "crew serve: exit $rc after SIGTERM, expected 0: $(cat "$work/serve")"
kill -TERM "$worker"
rc=0
wait "$worker" || rc=$?
worker=
[[ $rc == 0 ]] || fail "crew worker: exit $rc after SIGTERM, expected 0: $(cat "$work/worker")"
echo "serve_redis.sh: ok"
