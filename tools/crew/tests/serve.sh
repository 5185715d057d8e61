#!/usr/bin/env bash
# crew serve end to end: start on a free port, answer health and a task over HTTP (bash's
# /dev/tcp, no client needed), drain on SIGTERM with exit 0; a bad plugin exits 78 at start.
#
#   serve.sh <path-to-crew>
set -euo pipefail
crew=$1
work=$(mktemp -d)
trap 'kill -9 "${pid:-}" 2>/dev/null || true; rm -rf "$work"' EXIT
fail() { echo "serve.sh: FAIL: $*" >&2; exit 1; }

http() {  # http <port> <method> <path> [json-body] -> prints the whole response
  local port=$1 method=$2 path=$3 body=${4:-}
  exec 3<>"/dev/tcp/127.0.0.1/$port"
  printf '%s %s HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s' \
    "$method" "$path" "${#body}" "$body" >&3
  cat <&3
  exec 3<&-
}

"$crew" serve --port 0 --log-format off --task-nice 7 >"$work/out" 2>&1 &
pid=$!
for _ in $(seq 1 3000); do  # up to 30 s: sanitizer builds start slowly
  port=$(grep -o 'http://127.0.0.1:[0-9]*' "$work/out" | head -n1 | cut -d: -f3 || true)
  [[ -n $port ]] && break
  kill -0 "$pid" 2>/dev/null || fail "crew serve exited early: $(cat "$work/out")"
  sleep 0.01
done
[[ -n ${port:-} ]] || fail "no 'listening on' line: $(cat "$work/out")"

grep -q '^HTTP/1.1 200' <<<"$(http "$port" GET /healthz)" || fail "/healthz is not 200"
reply=$(http "$port" POST /v1/tasks/sum_range '{"args": [100000]}')
grep -q '"result":4999950000' <<<"$reply" || fail "sum_range: $reply"
reply=$(http "$port" POST /v1/tasks/fib '{"args": ["x"]}')
grep -q '^HTTP/1.1 400' <<<"$reply" || fail "bad arguments: $reply"

# --task-nice 7: the task thread that ran sum_range is at nice 7, the I/O thread at the nice value
# it was started with (this script's own: 0 unless the test itself runs under nice).
nices() {  # nices <thread-name-glob>: the nice value of each such thread
  local t
  for t in /proc/"$pid"/task/*; do
    # shellcheck disable=SC2053 # $1 is a glob on purpose
    if [[ $(cat "$t/comm") == $1 ]]; then awk '{print $19}' "$t/stat"; fi
  done
}
grep -qx 7 <<<"$(nices 'crew-task*')" || fail "no task thread at nice 7: $(nices 'crew-task*')"
base=$(awk '{print $19}' /proc/$$/stat)
grep -qx "$base" <<<"$(nices crew)" || fail "no I/O thread at nice $base: $(nices crew)"

kill -TERM "$pid"
rc=0
wait "$pid" || rc=$?
[[ $rc == 0 ]] || fail "exit code $rc after SIGTERM, expected 0: $(cat "$work/out")"
grep -q 'drained' "$work/out" || fail "no drain message"

rc=0
"$crew" serve --port 0 --task-nice 25 >"$work/usage" 2>&1 || rc=$?
[[ $rc == 2 ]] || fail "--task-nice 25: exit $rc, expected 2 (usage)"
grep -q -- "--task-nice" "$work/usage" || fail "--task-nice 25: the message does not name the option"

rc=0
"$crew" serve --port 0 --plugin "$work/missing.so" >"$work/bad" 2>&1 || rc=$?
[[ $rc == 78 ]] || fail "bad plugin: exit $rc, expected 78"
grep -q "missing.so" "$work/bad" || fail "bad plugin: the message does not name the file"
echo "serve.sh: ok"
