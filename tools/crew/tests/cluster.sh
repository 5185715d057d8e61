#!/usr/bin/env bash
# crew serve --cluster 2 under wrk load (loopback, a few seconds each):
#   1. kill -9 of one worker: failed requests <= that worker's connections, a replacement is
#      serving within 1 s, no connection refused meanwhile;
#   2. SIGHUP: rolling reload with 0 failed requests, every old worker pid replaced;
#   3. SIGTERM: an in-flight request completes, exit code 0 within the shutdown timeout.
#
#   cluster.sh <path-to-crew>
set -euo pipefail
crew=$1
command -v wrk >/dev/null || { echo "cluster.sh: wrk not found (scripts/bootstrap installs it)" >&2; exit 1; }
work=$(mktemp -d)
trap 'kill -9 "${pid:-}" 2>/dev/null || true; rm -rf "$work"' EXIT
fail() { echo "cluster.sh: FAIL: $*" >&2; cat "$work/out" >&2 || true; exit 1; }
children() { pgrep -P "$pid" | sort; }
healthz() { (exec 3<>"/dev/tcp/127.0.0.1/$port" && printf 'GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n' >&3 && head -n1 <&3) 2>/dev/null; }
# errors <wrk output>: connect + read + write + timeout socket errors plus non-2xx responses
errors() {
  awk '/Socket errors/ { gsub(/,/, ""); n += $4 + $6 + $8 + $10 } /Non-2xx/ { n += $5 } END { print n + 0 }' <<<"$1"
}
ready() {  # waits until n children answer
  for _ in $(seq 1 500); do
    [[ $(children | wc -l) -ge $1 ]] && grep -q 200 <<<"$(healthz)" && return 0
    sleep 0.01
  done
  return 1
}

"$crew" serve --cluster 2 --port 0 --workers 1 --log-format off --shutdown-timeout-ms 5000 >"$work/out" 2>&1 &
pid=$!
for _ in $(seq 1 3000); do  # up to 30 s: sanitizer builds start slowly
  port=$(grep -o 'http://127.0.0.1:[0-9]*' "$work/out" | head -n1 | cut -d: -f3 || true)
  [[ -n $port ]] && break
  sleep 0.01
done
[[ -n ${port:-} ]] || fail "no 'listening on' line"
ready 2 || fail "two workers never came up"
url="http://127.0.0.1:$port/v1/tasks/sum_range"
lua=$(dirname "$0")/../../../bench/serve/post.lua

# 0. /metrics on any worker answers for the whole cluster: one series per worker plus totals.
get() { (exec 3<>"/dev/tcp/127.0.0.1/$port" && printf 'GET %s HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n' "$1" >&3 && cat <&3) 2>/dev/null || true; }
post_fib() { (exec 3<>"/dev/tcp/127.0.0.1/$port" && printf 'POST /v1/tasks/fib HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: 12\r\n\r\n{"args":[9]}' >&3 && head -n1 <&3) 2>/dev/null; }
for _ in $(seq 1 10); do grep -q '^HTTP/1.1 200' <<<"$(post_fib)" || fail "POST /v1/tasks/fib failed"; done
whole=0
for _ in $(seq 1 500); do  # workers publish every 500 ms
  m=$(get /metrics)
  if grep -q '^crew_tasks_total{worker="all",outcome="ok"} 10' <<<"$m" &&
    grep -q '^crew_pool_workers{worker="1"} 1' <<<"$m" && grep -q '^crew_pool_workers{worker="2"} 1' <<<"$m"; then
    whole=1
    break
  fi
  sleep 0.01
done
((whole)) || fail "/metrics never showed both workers and 10 tasks in total: $m"
grep -q '"workers_reporting":2' <<<"$(get /api/stats)" || fail "/api/stats does not cover both workers"
echo "cluster metrics: both workers and the totals on one worker's /metrics"

# 1. kill -9 one worker under load.
wrk -t2 -c8 -d3s -s "$lua" "$url" >"$work/wrk1" &
load=$!
sleep 1
victim=$(children | head -n1)
kill -9 "$victim"
killed=$(date +%s%N)
for _ in $(seq 1 200); do
  [[ $(children | wc -l) -ge 2 ]] && ! grep -qx "$victim" <<<"$(children)" && break
  sleep 0.005
done
replaced_ms=$((($(date +%s%N) - killed) / 1000000))
wait "$load"
e=$(errors "$(cat "$work/wrk1")")
grep -q 'connect [1-9]' "$work/wrk1" && fail "connections refused after kill -9: $(cat "$work/wrk1")"
((e <= 8)) || fail "kill -9: $e failed requests, more than the 8 connections could have had in flight"
((replaced_ms <= 1000)) || fail "kill -9: replacement took $replaced_ms ms"
echo "kill -9: $e failed requests (<= 8 connections), replacement up in $replaced_ms ms"

# 2. SIGHUP under load: zero failures, all workers replaced.
ready 2 || fail "workers not back"
before=$(children)
wrk -t2 -c8 -d4s -s "$lua" "$url" >"$work/wrk2" &
load=$!
sleep 1
kill -HUP "$pid"
wait "$load"
e=$(errors "$(cat "$work/wrk2")")
((e == 0)) || fail "SIGHUP: $e failed requests: $(cat "$work/wrk2")"
for _ in $(seq 1 500); do
  after=$(children)
  [[ $(comm -12 <(echo "$before") <(echo "$after") | wc -l) == 0 && $(echo "$after" | wc -l) == 2 ]] && break
  sleep 0.01
done
[[ $(comm -12 <(echo "$before") <(echo "$after") | wc -l) == 0 ]] || fail "SIGHUP: old workers remain ($before -> $after)"
echo "SIGHUP: 0 failed requests, workers $(echo $before) -> $(echo $after)"

# 3. SIGTERM with a request in flight: it completes, the primary exits 0.
exec 5<>"/dev/tcp/127.0.0.1/$port"
printf 'POST /v1/tasks/sleep_ms HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: 14\r\n\r\n{"args":[800]}' >&5
busy=0
for _ in $(seq 1 500); do  # a fresh connection lands on some worker; the busy one answers 1
  stats=$( (exec 3<>"/dev/tcp/127.0.0.1/$port" && printf 'GET /api/stats HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n' >&3 && cat <&3) 2>/dev/null || true)
  grep -q '"busy":1' <<<"$stats" && { busy=1; break; }
done
((busy)) || fail "the slow request never showed up as running"
kill -TERM "$pid"
reply=$(cat <&5)
exec 5<&-
rc=0
wait "$pid" || rc=$?
grep -q '^HTTP/1.1 200' <<<"$reply" || fail "SIGTERM: the in-flight request got: $reply"
((rc == 0)) || fail "SIGTERM: exit code $rc"
echo "SIGTERM: in-flight request answered 200, exit 0"
echo "cluster.sh: ok"
