# shellcheck shell=bash
# Process helpers the test servers' scripts share (sourced, not run): free loopback ports, starting
# a component with its log and PID file, and stopping one by its PID file.

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Starts a component in the background, its output in $state/logs/NAME.log, its PID in
# $state/pids/NAME.
# shellcheck disable=SC2154 # $state is the sourcing script's state folder
launch() { # name, command...
  local name=$1
  shift
  "$@" >"$state/logs/$name.log" 2>&1 &
  echo $! >"$state/pids/$name"
}

# SIGTERM, five seconds to exit, then SIGKILL; removes the PID file.
stop_pid_file() { # PID file
  local pid
  [ -f "$1" ] || return 0
  pid=$(cat "$1")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$1"
}
