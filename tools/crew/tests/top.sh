#!/usr/bin/env bash
# crew top end to end against a real `crew serve --isolation process --workers 2`: --once and
# --json for scripts; the exit codes and messages for an unreachable server, a wrong path, a
# missing token and an untrusted certificate (and https with --cacert); then the live view under tmux (a private tmux server, a window of a fixed size):
# the worker lines and the log from the first frame, j moves the selection, s sorts, r answers in
# the status bar, a resized window changes the layout, q and SIGTERM leave with the terminal
# restored.
#
#   top.sh <path-to-crew>
set -euo pipefail
crew=$1
work=$(mktemp -d)
# A private tmux server per view: `kill-server` returns before the old server has gone, and a
# new session on the same socket could reach the dying server ("server exited unexpectedly").
views=0
tmux_socket=crew-top-test-$$-0
tmx() { tmux -L "$tmux_socket" "$@"; }
cleanup() {
  for ((v = 1; v <= views; v++)); do tmux -L "crew-top-test-$$-$v" kill-server 2>/dev/null || true; done
  kill -9 "${pid:-}" "${auth_pid:-}" "${tls_pid:-}" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
# shellcheck source=common.bash
source "$(dirname "${BASH_SOURCE[0]}")/common.bash"
fail() { echo "top.sh: FAIL: $*" >&2; exit 1; }
for tool in tmux openssl; do
  command -v "$tool" >/dev/null || fail "$tool is not installed (scripts/bootstrap installs it)"
done

"$crew" serve --isolation process --workers 2 --port 0 --log-format off >"$work/serve.log" 2>&1 &
pid=$!
port=$(wait_port "$work/serve.log" 127.0.0.1)
url=http://127.0.0.1:$port

# --once into a pipe: one plain frame with every worker, no escape codes, exit 0.
"$crew" top "$url" --once >"$work/once" 2>&1 || fail "--once: exit $?: $(cat "$work/once")"
grep -q 'crew-task-0' "$work/once" || fail "--once: no crew-task-0 line: $(cat "$work/once")"
grep -q 'crew-task-1' "$work/once" || fail "--once: no crew-task-1 line: $(cat "$work/once")"
if grep -q $'\x1b' "$work/once"; then fail "--once into a pipe wrote escape codes"; fi

# --json: the latest sample.
"$crew" top "$url" --json >"$work/json" || fail "--json: exit $?"
grep -q '^  "seq": [0-9]' "$work/json" || fail "--json: no seq: $(head -c 300 "$work/json")"
[[ $(grep -c '"kind": "task"' "$work/json") == 2 ]] ||
  fail "--json: not two task workers: $(head -c 300 "$work/json")"

expect_failure() {  # expect_failure <exit-code> <pattern> <crew top args...>
  local code=$1 pattern=$2 rc=0
  shift 2
  "$crew" top "$@" --once >"$work/failure" 2>&1 || rc=$?
  [[ $rc == "$code" ]] || fail "top $*: exit $rc, expected $code: $(cat "$work/failure")"
  grep -q -- "$pattern" "$work/failure" || fail "top $*: no '$pattern' in: $(cat "$work/failure")"
}
closed=$(closed_port)
expect_failure 69 "http://127.0.0.1:$closed.*crew serve" "http://127.0.0.1:$closed"
expect_failure 1 "404.*check the URL" "$url/no-such-prefix"
expect_failure 2 "scheme 'ftp'" "ftp://127.0.0.1:$port"

# With --auth-token-file: 401 without a token (the message says how to give one), then the token
# from --token-file and from CREW_TOKEN.
printf '# tokens\nsecret-1\n' >"$work/tokens"
"$crew" serve --port 0 --auth-token-file "$work/tokens" --log-format off >"$work/auth.log" 2>&1 &
auth_pid=$!
auth_port=$(pid=$auth_pid wait_port "$work/auth.log" 127.0.0.1)
expect_failure 1 "401.*--token-file" "http://127.0.0.1:$auth_port"
"$crew" top "http://127.0.0.1:$auth_port" --once --token-file "$work/tokens" >/dev/null ||
  fail "--token-file: exit $?"
CREW_TOKEN=secret-1 "$crew" top "http://127.0.0.1:$auth_port" --once >/dev/null ||
  fail "CREW_TOKEN: exit $?"
kill -9 "$auth_pid"
wait "$auth_pid" 2>/dev/null || true  # reaped here, so bash does not report "Killed"

# https: the server's self-signed certificate is refused (the message says what to do) unless
# --cacert trusts it.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
  -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 \
  -keyout "$work/tls.key" -out "$work/tls.crt" 2>/dev/null
"$crew" serve --port 0 --tls-cert "$work/tls.crt" --tls-key "$work/tls.key" --log-format off \
  >"$work/tls.log" 2>&1 &
tls_pid=$!
tls_url=https://127.0.0.1:$(pid=$tls_pid wait_port "$work/tls.log" 127.0.0.1 https)
expect_failure 69 "certificate verify failed.*--cacert" "$tls_url"
"$crew" top "$tls_url" --once --cacert "$work/tls.crt" >"$work/tls.once" 2>&1 ||
  fail "https with --cacert: exit $?: $(cat "$work/tls.once")"
grep -q '^> server ' "$work/tls.once" || fail "https: no server row: $(cat "$work/tls.once")"
kill -9 "$tls_pid"
wait "$tls_pid" 2>/dev/null || true

# The live view. The pane runs a shell that records the terminal settings before and after, and
# the exit code.
screen() { tmx capture-pane -p -t top; }
wait_screen() {  # wait_screen <description> <grep -E pattern>: up to 30 s
  for _ in $(seq 1 300); do
    grep -qE -- "$2" <<<"$(screen)" && return 0
    sleep 0.1
  done
  fail "$1: no /$2/ on the screen:"$'\n'"$(screen)"
}
printf 'set -g status off\n' >"$work/tmux.conf"  # the pane gets the whole window
start_view() {
  if ((views > 0)); then tmx kill-server 2>/dev/null || true; fi
  views=$((views + 1))
  tmux_socket=crew-top-test-$$-$views
  tmx -f "$work/tmux.conf" new-session -d -s top -x 100 -y 30 \
    "stty -g >'$work/stty.before'; '$crew' top '$url'; echo \"top exited \$?\"; stty -g >'$work/stty.after'; exec sleep 600"
}
terminal_restored() {  # terminal_restored <what>: the settings after equal those before
  for _ in $(seq 1 300); do [[ -s $work/stty.after ]] && break; sleep 0.1; done
  diff "$work/stty.before" "$work/stty.after" >/dev/null ||
    fail "$1: the terminal settings were not restored: $(diff "$work/stty.before" "$work/stty.after")"
}

start_view
wait_screen "first frame" '^> crew-task-0 '
grep -qE '^  crew-task-1 ' <<<"$(screen)" || fail "no crew-task-1 line:"$'\n'"$(screen)"
grep -q '── log crew-task-0' <<<"$(screen)" || fail "no log of the selected worker:"$'\n'"$(screen)"
# 100 columns: the core columns and uptime; 30 lines: the status bar on the last.
header=$(grep -E '^  ID' <<<"$(screen)")
for column in PID STATE CPU% RSS TASKS/S P99 RESTARTS UPTIME; do
  grep -q -- "$column" <<<"$header" || fail "100 columns: no $column in: $header"
done
[[ $(screen | wc -l) == 30 ]] || fail "not 30 lines:"$'\n'"$(screen)"
screen | tail -n1 | grep -q 'q quit' || fail "no status bar on line 30:"$'\n'"$(screen)"

tmx send-keys -t top j
wait_screen "j" '^> crew-task-1 '
grep -q '── log crew-task-1' <<<"$(screen)" || fail "j: the log is not crew-task-1's:"$'\n'"$(screen)"
tmx send-keys -t top s
wait_screen "s" 'sort: cpu'
grep -qE '^  ID +PID +STATE +CPU%▼' <<<"$(screen)" || fail "s: CPU% is not marked:"$'\n'"$(screen)"
tmx send-keys -t top r
wait_screen "r" 'reload: .*409'

tmx resize-window -t top -x 60 -y 20
wait_screen "resize to 60x20" '^  ID +PID +STATE +CPU%▼ +RSS +TASKS/S *$'
[[ $(screen | wc -l) == 20 ]] || fail "not 20 lines after the resize:"$'\n'"$(screen)"
screen | tail -n1 | grep -q '^reload: ' || fail "no status bar on line 20:"$'\n'"$(screen)"

tmx send-keys -t top q
wait_screen "q" '^top exited 0$'
if grep -q 'crew-task' <<<"$(screen)"; then fail "q: the view is still on the screen"; fi
terminal_restored "q"

# SIGTERM: the same restoration, exit 128+15.
rm -f "$work/stty.after"
start_view
wait_screen "second view" '^> crew-task-0 '
view_pid=$(pgrep -P "$(tmx display -p -t top '#{pane_pid}')" -x crew)
kill -TERM "$view_pid"
wait_screen "SIGTERM" '^top exited 143$'
terminal_restored "SIGTERM"

kill -TERM "$pid"
wait "$pid" || fail "crew serve: exit $? after SIGTERM"
