#!/usr/bin/env bash
# What TLS costs crew serve: keep-alive requests/s of GET /healthz and of a small task (POST
# /v1/tasks/fib [20]) over HTTPS and over plain HTTP, the same build, alternating (HTTP HTTPS
# HTTP HTTPS ...) so that a drift of the machine hits both; once with the load sharing the cores,
# once with the server on CPU 0 and wrk on CPU 1. wrk keeps its connections open, so this is the
# cost of encrypting requests and responses, not of handshakes.
#
#   bench/serve/tls.sh <path-to-crew> [rounds] [duration]     # defaults: 3 rounds of 5s
# Prints each run and the medians, and HTTPS as a share of HTTP. Needs wrk and openssl.
set -euo pipefail
crew=${1:?usage: tls.sh <path-to-crew> [rounds] [duration]}
rounds=${2:-3}
duration=${3:-5s}
work=$(mktemp -d)
pid=""
cleanup() { [[ -n $pid ]] && kill "$pid" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
  -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 \
  -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
cat >"$work/fib.lua" <<'LUA'
wrk.method = "POST"
wrk.body = '{"args": [20]}'
wrk.headers["Content-Type"] = "application/json"
LUA

run_one() {  # run_one <http|https> <healthz|fib> [server cpus] [wrk cpus] -> requests/s
  local scheme=$1 port=18095 tls=() script=() path=/healthz
  [[ $scheme == https ]] && tls=(--tls-cert "$work/cert.pem" --tls-key "$work/key.pem")
  [[ $2 == fib ]] && script=(-s "$work/fib.lua") path=/v1/tasks/fib
  ${3:+taskset -c "$3"} "$crew" serve --port "$port" --workers 2 --log-format off "${tls[@]}" \
    >"$work/serve.log" 2>&1 &
  pid=$!
  for _ in $(seq 1 500); do
    grep -q "listening on" "$work/serve.log" && break
    sleep 0.02
  done
  local url="$scheme://127.0.0.1:$port$path" threads=2
  [[ -n ${4:-} ]] && threads=1
  wrk -t2 -c32 -d1s "${script[@]}" "$url" >/dev/null  # warm-up
  ${4:+taskset -c "$4"} wrk -t"$threads" -c32 -d"$duration" "${script[@]}" "$url" |
    awk '/^Requests\/sec:/ {print $2}'
  kill "$pid"
  wait "$pid" 2>/dev/null || true
  pid=""
}

median() { sort -g | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }

report() {  # report <label> <healthz|fib> <server cpus> <wrk cpus>
  local plain=() tls=() ratios=() r
  for ((r = 1; r <= rounds; ++r)); do
    plain+=("$(run_one http "$2" "$3" "$4")")
    tls+=("$(run_one https "$2" "$3" "$4")")
    ratios+=("$(awk -v p="${plain[-1]}" -v t="${tls[-1]}" 'BEGIN { printf "%.3f", t / p }')")
    printf '%s round %d: http %8.0f req/s | https %8.0f req/s | https/http %s\n' "$1" "$r" \
      "${plain[-1]}" "${tls[-1]}" "${ratios[-1]}" >&2
  done
  local p t q
  p=$(printf '%s\n' "${plain[@]}" | median)
  t=$(printf '%s\n' "${tls[@]}" | median)
  q=$(printf '%s\n' "${ratios[@]}" | median)
  # The median of the rounds' ratios too: each round's pair ran back to back, so it is the figure
  # a drift of the machine during the run disturbs least.
  awk -v l="$1" -v p="$p" -v t="$t" -v q="$q" 'BEGIN {
    printf "%s medians: http %.0f req/s, https %.0f req/s: https/http %.2f (rounds: %.2f)\n", l, p, t, t / p, q }'
}

summary=()
for what in healthz fib; do
  summary+=("$(report "$what, shared cores" "$what" "" "")")
  echo "${summary[-1]}" >&2
  if (($(nproc) >= 2)); then
    summary+=("$(report "$what, server CPU 0, wrk CPU 1" "$what" 0 1)")
    echo "${summary[-1]}" >&2
  fi
done
printf '\ncrew serve, HTTPS against HTTP (wrk -c32, keep-alive, %s per run, %d rounds)\n' "$duration" "$rounds"
printf '%s\n' "${summary[@]}"
