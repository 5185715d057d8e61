#!/usr/bin/env bash
# crew serve access control end to end: a non-loopback --host without a token file refuses to
# start (exit 78) unless --insecure-no-auth; with --auth-token-file, 401 without a token and 200
# with one; SIGHUP picks up a changed file; the tokens never reach the log.
#
#   serve_auth.sh <path-to-crew>
set -euo pipefail
crew=$1
work=$(mktemp -d)
trap 'kill -9 "${pid:-}" 2>/dev/null || true; rm -rf "$work"' EXIT
# shellcheck source=common.bash
source "$(dirname "${BASH_SOURCE[0]}")/common.bash"
fail() { echo "serve_auth.sh: FAIL: $*" >&2; exit 1; }


status() {  # status <port> <path> [token]: the HTTP status of a GET
  local auth=""
  [[ -n ${3:-} ]] && auth="Authorization: Bearer $3"$'\r\n'
  exec 3<>"/dev/tcp/127.0.0.1/$1"
  printf 'GET %s HTTP/1.1\r\nHost: t\r\nConnection: close\r\n%s\r\n' "$2" "$auth" >&3
  head -n1 <&3 | cut -d' ' -f2
  exec 3<&-
}

rc=0
"$crew" serve --host 0.0.0.0 --port 0 >"$work/open" 2>&1 || rc=$?
[[ $rc == 78 ]] || fail "--host 0.0.0.0 without a token file: exit $rc, expected 78"
grep -q -- "--auth-token-file" "$work/open" || fail "the refusal does not say what to do"

rc=0
"$crew" serve --port 0 --auth-token-file "$work/missing" >"$work/missing.log" 2>&1 || rc=$?
[[ $rc == 78 ]] || fail "a missing token file: exit $rc, expected 78"

"$crew" serve --host 0.0.0.0 --port 0 --insecure-no-auth >"$work/insecure" 2>&1 &
pid=$!
port=$(wait_port "$work/insecure" 0.0.0.0)
[[ $(status "$port" /v1/tasks) == 200 ]] || fail "--insecure-no-auth: /v1/tasks is not open"
kill -TERM "$pid"
wait "$pid" || true

printf 'first-secret-token\n' >"$work/tokens"
"$crew" serve --port 0 --auth-token-file "$work/tokens" >"$work/auth" 2>&1 &
pid=$!
port=$(wait_port "$work/auth" 127.0.0.1)
[[ $(status "$port" /healthz) == 200 ]] || fail "/healthz needs no token"
[[ $(status "$port" /v1/tasks) == 401 ]] || fail "/v1/tasks without a token is not 401"
[[ $(status "$port" /v1/tasks first-secret-token) == 200 ]] || fail "the token is refused"

printf 'second-secret-token\n' >"$work/tokens"
kill -HUP "$pid"
reloaded=0
for _ in $(seq 1 3000); do
  if [[ $(status "$port" /v1/tasks second-secret-token) == 200 ]]; then reloaded=1; break; fi
  sleep 0.01
done
((reloaded)) || fail "SIGHUP did not load the new token: $(cat "$work/auth")"
[[ $(status "$port" /v1/tasks first-secret-token) == 401 ]] || fail "the old token still works"
kill -0 "$pid" || fail "SIGHUP ended the server"

kill -TERM "$pid"
rc=0
wait "$pid" || rc=$?
[[ $rc == 0 ]] || fail "exit $rc after SIGTERM"
if grep -q "secret-token" "$work/auth"; then fail "a token reached the log: $(cat "$work/auth")"; fi
grep -q "bearer token" "$work/auth" || fail "the log does not say access control is on"
echo "serve_auth.sh: ok"
