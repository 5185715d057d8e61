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

# start_redis <dir>: a redis-server of the test's own on a free loopback port, without
# persistence, its files in <dir>; sets redis_port and redis_pid (stop it with stop_redis). The
# answer must come from that very process (INFO's process_id): another test's Redis may hold a
# port that looked free, and this test must neither use nor stop it.
start_redis() {
  local dir=$1 p
  for _ in $(seq 1 20); do
    p=$((20000 + RANDOM % 20000))
    redis-server --port "$p" --bind 127.0.0.1 --dir "$dir" --save '' --appendonly no \
      --logfile "$dir/redis.log" >/dev/null 2>&1 &
    redis_pid=$!
    for _ in $(seq 1 1000); do  # up to 10 s on a busy machine
      kill -0 "$redis_pid" 2>/dev/null || break  # it could not listen there: another port
      if grep -qx "process_id:$redis_pid" <<<"$(redis-cli -p "$p" info server 2>/dev/null | tr -d '\r')"; then
        redis_port=$p
        return 0
      fi
      sleep 0.01
    done
    kill -9 "$redis_pid" 2>/dev/null || true
  done
  fail "redis-server did not start: $(tail -3 "$dir/redis.log")"
}

# stop_redis: for the EXIT trap; stops only the server start_redis started.
stop_redis() {
  if [[ -n ${redis_pid:-} ]]; then
    kill -9 "$redis_pid" 2>/dev/null || true
    wait "$redis_pid" 2>/dev/null || true  # reaped here, so bash does not report "Killed"
  fi
}

# closed_port: prints a loopback port nothing listens on now (tried with a connect).
closed_port() {
  local p
  for _ in $(seq 1 50); do
    p=$((20000 + RANDOM % 20000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
      echo "$p"
      return 0
    fi
  done
  fail "no closed port found"
}
