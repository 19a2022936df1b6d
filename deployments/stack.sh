#!/usr/bin/env bash
# The whole stack on 127.0.0.1, all its state under .stack/: `make stack` and `make stack-down`.
#   deployments/stack.sh up     Postgres (databases mlflow, prefect, audit), an MLflow tracking
#                               server and a Prefect server on it, a process worker with the
#                               deployments of prefect.yaml applied; with STACK_BUNDLE=DIR or
#                               STACK_MODEL=models:/edgeroute@champion, also two edge services
#                               (edge-1, edge-2) and a cloud service writing one audit trail.
#   deployments/stack.sh down   SIGTERM to each process, newest first; Postgres last.
# Ports: STACK_PG_PORT (5433), STACK_MLFLOW_PORT (5000), PREFECT_PORT (4200), STACK_EDGE1_PORT
# (8001), STACK_EDGE2_PORT (8002), STACK_CLOUD_PORT (8100); STACK_GRACE_S (10): how long `down`
# waits after a SIGTERM before a SIGKILL. Each process leaves NAME.pid and NAME.log in .stack/.
# The Prefect server, the worker and the deployments are the Makefile's targets of those names.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
state=$root/.stack
bin=$root/.venv/bin
make=${MAKE:-make}
pg_port=${STACK_PG_PORT:-5433}
mlflow_port=${STACK_MLFLOW_PORT:-5000}
export PREFECT_PORT=${PREFECT_PORT:-4200}
edge_ports=("${STACK_EDGE1_PORT:-8001}" "${STACK_EDGE2_PORT:-8002}")
cloud_port=${STACK_CLOUD_PORT:-8100}
grace_s=${STACK_GRACE_S:-10}  # from SIGTERM to SIGKILL, per process
database=postgresql://edgeroute@127.0.0.1:$pg_port
# Stopped in this order: the services before what they write to, Postgres after everything.
order=(edge-2 edge-1 cloud worker prefect mlflow)

# Whether NAME, or any process of its group (its pid is the group's id), still runs: the
# process itself until setsid has made the group, the group once its leader has exited.
alive() {
  [ -f "$state/$1.pid" ] || return 1
  local pid
  pid=$(cat "$state/$1.pid")
  kill -0 "$pid" 2>/dev/null || kill -0 -- "-$pid" 2>/dev/null
}

# A process in its own session, so that `down` can signal its whole group (make and its child).
launch() {
  local name=$1
  shift
  setsid "$@" >"$state/$name.log" 2>&1 </dev/null &
  echo $! >"$state/$name.pid"
}

# Poll `check` every second for up to `seconds`; give up early if the process died.
wait_for() {
  local name=$1 seconds=$2
  shift 2
  for _ in $(seq "$seconds"); do
    "$@" >/dev/null 2>&1 && return 0
    alive "$name" || { echo "stack: $name exited; see $state/$name.log" >&2; return 1; }
    sleep 1
  done
  echo "stack: $name not ready after $seconds s; see $state/$name.log" >&2
  return 1
}

ready() { curl -fsS "$1" >/dev/null; }

worker_online() {
  curl -fsS -X POST -H 'Content-Type: application/json' -d '{}' \
    "$PREFECT_API_URL/work_pools/edgeroute-process/workers/filter" | grep -q '"status":"ONLINE"'
}

serve() {
  local name=$1 role=$2 port=$3
  shift 3
  local model=(--bundle "${STACK_BUNDLE:-}")
  [ -n "${STACK_BUNDLE:-}" ] || model=(--model "$STACK_MODEL")
  launch "$name" "$bin/edgeroute" serve "${model[@]}" --role "$role" --port "$port" \
    --audit "$database/audit" --set audit.instance="$name" --set audit.spool="$state/spool-$name.jsonl" "$@"
  wait_for "$name" 120 ready "http://127.0.0.1:$port/readyz"
}

up() {
  for name in "${order[@]}"; do
    ! alive "$name" || { echo "stack: $name is running already: make stack-down first" >&2; exit 1; }
  done
  mkdir -p "$state/mlflow-artifacts"
  trap '[ $? = 0 ] || echo "stack: not all up; make stack-down stops what started" >&2' EXIT
  deployments/postgres.sh start "$state/postgres" "$pg_port" >/dev/null
  for db in mlflow prefect audit; do
    [ -n "$(psql "$database/postgres" -tAc "SELECT 1 FROM pg_database WHERE datname = '$db'")" ] ||
      createdb -h 127.0.0.1 -p "$pg_port" -U edgeroute "$db"
  done

  MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false launch mlflow "$bin/mlflow" server --host 127.0.0.1 \
    --port "$mlflow_port" --backend-store-uri "postgresql+psycopg://edgeroute@127.0.0.1:$pg_port/mlflow" \
    --artifacts-destination "$state/mlflow-artifacts"
  export MLFLOW_TRACKING_URI=http://127.0.0.1:$mlflow_port
  # Prefect's home (profiles, flow results) is the stack's too, not the checkout's .prefect/.
  export PREFECT_HOME=$state/prefect PREFECT_API_URL=http://127.0.0.1:$PREFECT_PORT/api
  PREFECT_API_DATABASE_CONNECTION_URL=postgresql+asyncpg://edgeroute@127.0.0.1:$pg_port/prefect \
    launch prefect "$make" --no-print-directory prefect-server
  wait_for mlflow 120 ready "$MLFLOW_TRACKING_URI/health"
  wait_for prefect 180 ready "$PREFECT_API_URL/health"
  "$make" --no-print-directory deploy >"$state/deploy.log" 2>&1 ||
    { echo "stack: make deploy failed; see $state/deploy.log" >&2; false; }
  launch worker "$make" --no-print-directory worker
  wait_for worker 60 worker_online

  services=${STACK_BUNDLE:-}${STACK_MODEL:-}
  if [ -n "$services" ]; then
    # One key for the whole fleet (yours if EDGEROUTE_AUDIT_KEY is set), kept across restarts
    # in a file, so that a text hashes alike in every service and the key is never printed.
    [ -s "$state/audit.key" ] || (umask 077 && echo "${EDGEROUTE_AUDIT_KEY:-$(openssl rand -hex 32)}" >"$state/audit.key")
    EDGEROUTE_AUDIT_KEY=$(cat "$state/audit.key")
    export EDGEROUTE_AUDIT_KEY
    serve cloud cloud "$cloud_port"
    serve edge-1 edge "${edge_ports[0]}" --cloud-url "http://127.0.0.1:$cloud_port"
    serve edge-2 edge "${edge_ports[1]}" --cloud-url "http://127.0.0.1:$cloud_port"
  fi

  echo "Postgres  $database  (databases mlflow, prefect, audit)"
  echo "MLflow    $MLFLOW_TRACKING_URI"
  echo "Prefect   http://127.0.0.1:$PREFECT_PORT  (worker on pool edgeroute-process)"
  if [ -n "$services" ]; then
    echo "edges     http://127.0.0.1:${edge_ports[0]}  http://127.0.0.1:${edge_ports[1]}"
    echo "cloud     http://127.0.0.1:$cloud_port  (audit trail $database/audit)"
  fi
  echo
  echo "export MLFLOW_TRACKING_URI=$MLFLOW_TRACKING_URI"
  echo "export PREFECT_API_URL=$PREFECT_API_URL"
  [ -z "$services" ] || echo "export EDGEROUTE_AUDIT_KEY=\$(cat $state/audit.key)"
}

down() {
  for name in "${order[@]}"; do
    if alive "$name"; then
      pid=$(cat "$state/$name.pid")
      # make passes a SIGTERM on to its recipe: signalling the group as well would deliver two,
      # and Prefect takes the second as SIGKILL. The others get it as a group (mlflow's workers).
      case $name in prefect | worker) kill -TERM "$pid" ;; *) kill -TERM -- "-$pid" ;; esac
      for _ in $(seq "$grace_s"); do alive "$name" || break; sleep 1; done
      # Prefect 3.9.1's worker never gets here by itself: on SIGTERM it sends itself a SIGINT
      # and then hangs. It holds no state; a flow run it started would die with it.
      if alive "$name"; then
        echo "stack: $name still running $grace_s s after SIGTERM: SIGKILL" >&2
        kill -KILL -- "-$pid"
      fi
    fi
    rm -f "$state/$name.pid"
  done
  deployments/postgres.sh stop "$state/postgres"
}

case ${1:-} in
  up) up ;;
  down) down ;;
  *) echo "usage: $0 up | down" >&2; exit 2 ;;
esac
