# Shared by the crew tool's script tests (sourced; not a test itself: only *.sh files are).

# wait_port <log> <host> [scheme]: prints the port once `crew serve` (pid $pid) says it is
# listening on <scheme>://<host>:<port> (scheme: http unless given, https with --tls-cert).
wait_port() {
  local port
  for _ in $(seq 1 3000); do  # up to 30 s: sanitizer builds start slowly
    port=$(grep -o "${3:-http}://$2:[0-9]*" "$1" | head -n1 | cut -d: -f3 || true)
    [[ -n $port ]] && { echo "$port"; return 0; }
    kill -0 "$pid" 2>/dev/null || fail "crew serve exited early: $(cat "$1")"
    sleep 0.01
  done
  fail "no 'listening on' line: $(cat "$1")"
}
