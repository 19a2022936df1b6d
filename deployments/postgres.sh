#!/usr/bin/env bash
# A Postgres server on 127.0.0.1 for the audit trail, MLflow and Prefect: `make stack` and the
# tests start it with this script, and nothing else does.
#   deployments/postgres.sh start DIR PORT   cluster in DIR/data (made on first use), user edgeroute
#   deployments/postgres.sh stop DIR
# It uses the system's PostgreSQL server binaries (Debian: postgresql). Postgres refuses to run as
# root: as root, the cluster belongs to the `postgres` user and the server runs as that user.
# PG_OPTIONS: more server settings, e.g. "-c fsync=off" for throwaway test clusters.
set -euo pipefail
usage() { echo "usage: $0 start DIR PORT | stop DIR" >&2; exit 2; }
[ $# -ge 2 ] || usage
action=$1 dir=$(realpath -m "$2")
bin=$(pg_config --bindir 2>/dev/null || true)
[ -x "$bin/initdb" ] || bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
[ -x "$bin/initdb" ] || { echo "$0: no PostgreSQL server binaries (initdb, pg_ctl): apt-get install postgresql" >&2; exit 1; }
as_owner() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
case $action in
  start)
    [ $# -eq 3 ] || usage
    port=$3
    mkdir -p "$dir"
    [ "$(id -u)" = 0 ] && chown postgres "$dir"
    if [ ! -f "$dir/data/PG_VERSION" ]; then
      as_owner "$bin/initdb" -D "$dir/data" -U edgeroute --auth=trust -E UTF8 --no-instructions >/dev/null
    fi
    as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
      -o "-p $port -h 127.0.0.1 -k $dir -c max_connections=200 ${PG_OPTIONS:-}" start >/dev/null
    echo "postgresql://edgeroute@127.0.0.1:$port/postgres"
    ;;
  stop)
    [ -f "$dir/data/postmaster.pid" ] || exit 0
    as_owner "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null
    ;;
  *) usage ;;
esac
