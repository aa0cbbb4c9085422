# Sourced by the bench scripts: stops what a run started, on any exit.
# stop_run WORK DRIVER: the driver process, then the servers it started (each in its own session,
# their ids in WORK/pids) that outlived it, e.g. after a SIGKILL of the driver.
stop_run() {
  local work="$1" driver="$2" pid
  if [ -n "$driver" ] && kill -0 "$driver" 2>/dev/null; then
    kill -TERM "$driver" 2>/dev/null || true
    wait "$driver" 2>/dev/null || true
  fi
  if [ -f "$work/pids" ]; then
    while read -r pid; do
      if kill -0 "$pid" 2>/dev/null; then
        kill -TERM -- "-$pid" 2>/dev/null || true
        sleep 1
        kill -KILL -- "-$pid" 2>/dev/null || true
      fi
    done < "$work/pids"
  fi
}
