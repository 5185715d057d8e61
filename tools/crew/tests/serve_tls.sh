#!/usr/bin/env bash
# crew serve over TLS end to end (loopback, a throwaway certificate): a bad --tls-cert/--tls-key
# exits 78 with OpenSSL's reason, also in a cluster; curl gets its answers over one kept-alive
# connection; plain HTTP and TLS 1.1 are refused; a garbage, a stalled and a slowloris client
# each lose their own connection at the header timeout while others are served; a client that
# hangs up has its task cancelled; a cluster serves TLS and a SIGHUP reload reads new files.
#
#   serve_tls.sh <path-to-crew>
set -euo pipefail
crew=$1
for tool in openssl curl; do
  command -v "$tool" >/dev/null || { echo "serve_tls.sh: $tool not found (scripts/bootstrap installs it)" >&2; exit 1; }
done
work=$(mktemp -d)
trap 'kill -9 "${pid:-}" "${slow:-}" "${idle:-}" 2>/dev/null || true; rm -rf "$work"' EXIT
# shellcheck source=common.bash
source "$(dirname "${BASH_SOURCE[0]}")/common.bash"
fail() { echo "serve_tls.sh: FAIL: $*" >&2; exit 1; }
now_ms() { echo $(($(date +%s%N) / 1000000)); }

# cert <name>: a self-signed certificate for 127.0.0.1, <name>.crt and <name>.key.
cert() {
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
    -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 \
    -keyout "$work/$1.key" -out "$work/$1.crt" 2>/dev/null
}
cert a
cert b
printf 'not PEM at all\n' >"$work/junk.pem"

# refused <what the message must say> <args...>: exit 78, and the reason on the way out.
refused() {
  local reason=$1 rc=0
  shift
  "$crew" serve --port 0 "$@" >"$work/refused" 2>&1 || rc=$?
  [[ $rc == 78 ]] || fail "serve $*: exit $rc, expected 78: $(cat "$work/refused")"
  grep -qF -- "$reason" "$work/refused" || fail "serve $*: no '$reason' in: $(cat "$work/refused")"
  if grep -q "listening on" "$work/refused"; then fail "serve $*: listened first"; fi
}
refused "needs --tls-key" --tls-cert "$work/a.crt"
refused "needs --tls-cert" --tls-key "$work/a.key"
refused "No such file or directory" --tls-cert "$work/missing.crt" --tls-key "$work/a.key"
refused "no start line" --tls-cert "$work/junk.pem" --tls-key "$work/a.key"  # OpenSSL's reason
refused "unsupported" --tls-cert "$work/a.crt" --tls-key "$work/junk.pem"
refused "key values mismatch" --tls-cert "$work/a.crt" --tls-key "$work/b.key"
refused "key values mismatch" --cluster 2 --tls-cert "$work/a.crt" --tls-key "$work/b.key"
rc=0
CREW_TLS_CERT="$work/a.crt" "$crew" serve --port 0 >"$work/refused" 2>&1 || rc=$?
[[ $rc == 78 ]] || fail "CREW_TLS_CERT alone: exit $rc, expected 78"
echo "bad certificates and keys: exit 78 with OpenSSL's reason"

"$crew" serve --port 0 --workers 2 --header-timeout-ms 1000 --log-format off \
  --tls-cert "$work/a.crt" --tls-key "$work/a.key" >"$work/log" 2>&1 &
pid=$!
port=$(wait_port "$work/log" 127.0.0.1 https)
url="https://127.0.0.1:$port"
c() { curl -sS --max-time 10 --cacert "$work/a.crt" "$@"; }

[[ $(c "$url/healthz") == '{"status":"ok"}' ]] || fail "GET /healthz over TLS"
grep -q '"name":"fib"' <<<"$(c "$url/v1/tasks")" || fail "GET /v1/tasks does not list fib"
r=$(c -w ' %{http_code}' -d '{"args":[20]}' "$url/v1/tasks/fib")
[[ $r == *'"result":6765'*' 200' ]] || fail "POST /v1/tasks/fib [20]: $r"
connects=$(c -o /dev/null -o /dev/null -w '%{num_connects}\n' "$url/healthz" "$url/v1/tasks")
[[ $connects == $'1\n0' ]] || fail "two requests did not share one connection: $connects"
echo "curl over TLS: /healthz, fib(20) = 6765, keep-alive"

# A response larger than the socket's buffers (many TLS records) arrives whole; limits hold.
seq 1 60000 | paste -sd, - | sed 's/^/{"args":[[/; s/$/]]}/' >"$work/numbers.json"
r=$(c -H 'Content-Type: application/json' --data-binary @"$work/numbers.json" "$url/v1/tasks/sort_numbers")
n=$(grep -o '"result":\[[^]]*\]' <<<"$r" | tr ',' '\n' | wc -l)
[[ $n == 60000 && $r == *',59999,60000]'* ]] || fail "sort_numbers of 60000 numbers: $n numbers back"
big=$(head -c 20000 /dev/zero | tr '\0' a)
r=$(c -o /dev/null -w '%{http_code}' -H "X-Big: $big" "$url/healthz")
[[ $r == 431 ]] || fail "a 20 kB header over TLS: $r, expected 431"
echo "a 60000-number response arrives whole; --max-header holds (431)"

# Plain HTTP gets no HTTP answer: the handshake fails and the connection is closed at once.
rc=0
reply=$(curl -sS --max-time 5 "http://127.0.0.1:$port/healthz" 2>&1) || rc=$?
[[ $rc == 52 || $rc == 56 ]] || fail "plain HTTP to the TLS port: curl exit $rc ($reply)"
[[ $(c "$url/healthz") == '{"status":"ok"}' ]] || fail "no answer after a plain HTTP client"

# TLS 1.1 is refused by the server (the protocol version alert), TLS 1.2 is not. The client's
# SECLEVEL=0 lets it offer TLS 1.1 at all.
tls() { timeout 10 openssl s_client -connect "127.0.0.1:$port" -cipher 'DEFAULT@SECLEVEL=0' "$@" </dev/null 2>&1; }
if out=$(tls -tls1_1); then fail "TLS 1.1 was accepted: $out"; fi
grep -q "alert protocol version" <<<"$out" || fail "TLS 1.1 not refused by the server: $out"
grep -q "Protocol *: TLSv1.2" <<<"$(tls -tls1_2)" || fail "TLS 1.2 was refused"
echo "plain HTTP and TLS 1.1 refused, TLS 1.2 accepted"

# Garbage, a connection that sends nothing, and half a ClientHello (a record promising 512
# bytes): other clients are answered at once while they are open, and the server closes each
# at the header timeout (1 s).
t0=$(now_ms)  # before the connections: the server's clock for them starts later
exec 4<>"/dev/tcp/127.0.0.1/$port" 5<>"/dev/tcp/127.0.0.1/$port" 6<>"/dev/tcp/127.0.0.1/$port"
head -c 2048 /dev/urandom >&4
printf '\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03' >&6
r=$(c -w ' %{time_total}' "$url/healthz")
[[ $r == '{"status":"ok"} '* ]] || fail "no answer beside the stalled handshakes: $r"
awk -v t="${r#* }" 'BEGIN { exit !(t < 1.0) }' || fail "an answer beside the stalled handshakes took ${r#* } s"
for fd in 4 5 6; do
  rc=0
  # EOF: read returns 1 (perhaps after an alert's bytes); a timeout would be > 128.
  while :; do IFS= read -r -t 10 -u "$fd" _ || { rc=$?; break; }; done
  [[ $rc == 1 ]] || fail "stalled connection $fd not closed within 10 s (read: $rc)"
done
waited=$(($(now_ms) - t0))
((waited >= 900)) || fail "the stalled handshakes were closed after $waited ms, before the header timeout"
exec 4<&- 5<&- 6<&-
# Their sessions are gone too: the only connection left is the one asking.
stat() { c "$url/api/stats" | grep -o "\"$1\":[0-9]*" | head -n1 | cut -d: -f2; }
for _ in $(seq 1 1000); do
  [[ $(stat connections) == 1 ]] && break
  sleep 0.01
done
[[ $(stat connections) == 1 ]] || fail "sessions outlived their connections: $(c "$url/api/stats")"
# Counted: the plain-HTTP client above, the garbage, the silent and the half ClientHello.
failures=$(stat tls_handshake_failures)
((failures >= 4)) || fail "tls_handshake_failures is '$failures', expected at least 4"
grep -q "^crew_tls_handshake_failures_total $failures$" <<<"$(c "$url/metrics")" ||
  fail "/metrics does not count the failed handshakes"
echo "garbage and stalled handshakes: closed after $waited ms, others served meanwhile"

# Slowloris over TLS: a completed handshake, then the headers trickle. The server answers 408 at
# the header timeout, serving others meanwhile.
(printf 'GET /healthz HTTP/1.1\r\nHost: t\r\nX-Slow: '; sleep 4; printf 'x\r\n\r\n') |
  timeout 20 openssl s_client -quiet -connect "127.0.0.1:$port" -CAfile "$work/a.crt" \
    >"$work/slow" 2>"$work/slow.err" &
slow=$!
for _ in $(seq 1 1000); do
  grep -q "verify return:1" "$work/slow.err" && break
  sleep 0.01
done
grep -q "verify return:1" "$work/slow.err" || fail "the slow client's handshake: $(cat "$work/slow.err")"
r=$(c -w ' %{time_total}' "$url/healthz")
[[ $r == '{"status":"ok"} '* ]] || fail "no answer beside the slow client: $r"
awk -v t="${r#* }" 'BEGIN { exit !(t < 1.0) }' || fail "an answer beside the slow client took ${r#* } s"
wait "$slow" || true
slow=
grep -q "^HTTP/1.1 408" "$work/slow" || fail "the slow client was not cut off with 408: $(cat "$work/slow")"
echo "slowloris over TLS: 408 at the header timeout"

# A client that hangs up has its task cancelled: its close shows as the end of its TCP stream.
rc=0
c --max-time 1 -d '{"args":[600000]}' "$url/v1/tasks/sleep_ms" >/dev/null 2>&1 || rc=$?
[[ $rc == 28 ]] || fail "the ten-minute task did not time out on the client side: curl exit $rc"
for _ in $(seq 1 1000); do
  [[ $(stat abandoned) == 1 ]] && break
  sleep 0.01
done
[[ $(stat abandoned) == 1 ]] || fail "the hung-up client's task was not cancelled: $(c "$url/api/stats")"
[[ $(stat busy) == 0 ]] || fail "a worker is still busy after the hang-up"
echo "a TLS client that hangs up has its task cancelled"

kill -TERM "$pid"
rc=0
wait "$pid" || rc=$?
[[ $rc == 0 ]] || fail "exit $rc after SIGTERM: $(cat "$work/log")"

# Draining: an idle TLS connection and a handshake under way get the short grace of an idle
# plain connection, not the header timeout (10 s by default, past the shutdown timeout here).
"$crew" serve --port 0 --log-format off --shutdown-timeout-ms 4000 \
  --tls-cert "$work/a.crt" --tls-key "$work/a.key" >"$work/drain" 2>&1 &
pid=$!
port=$(wait_port "$work/drain" 127.0.0.1 https)
url="https://127.0.0.1:$port"
# -quiet ignores the end of its input: the connection stays open, idle, until it is closed.
timeout 20 openssl s_client -quiet -connect "127.0.0.1:$port" -CAfile "$work/a.crt" \
  </dev/null >/dev/null 2>"$work/idle.err" &
idle=$!
exec 7<>"/dev/tcp/127.0.0.1/$port"  # a handshake that never starts
for _ in $(seq 1 1000); do  # both accepted, the idle one past its handshake (+ the one asking)
  grep -q "verify return:1" "$work/idle.err" && [[ $(stat connections) == 3 ]] && break
  sleep 0.01
done
grep -q "verify return:1" "$work/idle.err" || fail "the idle client's handshake: $(cat "$work/idle.err")"
[[ $(stat connections) == 3 ]] || fail "not 3 connections: $(c "$url/api/stats")"
t0=$(now_ms)
kill -TERM "$pid"
rc=0
wait "$pid" || rc=$?
waited=$(($(now_ms) - t0))
[[ $rc == 0 ]] || fail "exit $rc after SIGTERM with an idle and a stalled TLS connection: $(cat "$work/drain")"
((waited < 3000)) || fail "SIGTERM with an idle and a stalled TLS connection took $waited ms"
exec 7<&-
kill "$idle" 2>/dev/null || true
idle=
echo "SIGTERM with an idle and a stalled TLS connection: drained in $waited ms"

# A cluster: every worker builds its own context from the same flags; a SIGHUP reload starts
# new workers, which read the files again.
cp "$work/a.crt" "$work/live.crt"
cp "$work/a.key" "$work/live.key"
"$crew" serve --port 0 --cluster 2 --workers 1 --log-format off \
  --tls-cert "$work/live.crt" --tls-key "$work/live.key" >"$work/cluster" 2>&1 &
pid=$!
port=$(wait_port "$work/cluster" 127.0.0.1 https)
url="https://127.0.0.1:$port"
for _ in 1 2 3 4; do
  r=$(c -w ' %{http_code}' -H 'Connection: close' -d '{"args":[20]}' "$url/v1/tasks/fib")
  [[ $r == *'"result":6765'*' 200' ]] || fail "cluster: POST /v1/tasks/fib [20]: $r"
done
served() { grep -q "Verify return code: 0" <<<"$(tls -CAfile "$work/$1.crt" -verify_return_error)"; }
served a || fail "cluster: not serving the first certificate"
cp "$work/b.crt" "$work/live.crt"
cp "$work/b.key" "$work/live.key"
kill -HUP "$pid"
reloaded=0
for _ in $(seq 1 1000); do
  # Connections go to either worker: the reload is done when only the new certificate shows.
  if served b && served b && served b && ! served a; then reloaded=1; break; fi
  sleep 0.01
done
((reloaded)) || fail "cluster: a SIGHUP reload did not bring the new certificate: $(cat "$work/cluster")"
# A reload with a broken pair (the key of another certificate): its new worker exits 78, the
# reload is aborted and the old workers keep serving with the pair they started with.
cp "$work/a.key" "$work/live.key"
kill -HUP "$pid"
for _ in $(seq 1 3000); do
  grep -q "reload aborted" "$work/cluster" && break
  sleep 0.01
done
grep -q "reload aborted" "$work/cluster" || fail "cluster: no 'reload aborted': $(cat "$work/cluster")"
for _ in 1 2 3 4; do
  served b || fail "cluster: not serving after a reload with a broken pair: $(cat "$work/cluster")"
done
kill -TERM "$pid"
rc=0
wait "$pid" || rc=$?
[[ $rc == 0 ]] || fail "cluster: exit $rc after SIGTERM: $(cat "$work/cluster")"
echo "cluster: TLS on every worker; a SIGHUP reload serves the new certificate"
echo "serve_tls.sh: ok"
