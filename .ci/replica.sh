#!/usr/bin/env bash
# A self-contained primary + streaming standby pair of PostgreSQL clusters, for the
# read-replica tests (issue 12 §3; docs/guide/replicas.md). The machine's own
# cluster (127.0.0.1:5432) is not touched: its pg_hba has no replication line.
#
#   .ci/replica.sh start DIR   initdb's a primary in DIR/primary (trust on
#                              127.0.0.1, replication included, wal_level=replica,
#                              fsync=off), starts it, makes DIR/standby with
#                              `pg_basebackup -R`, starts it (hot_standby), waits
#                              until the primary's pg_stat_replication shows it
#                              streaming, writes DIR/env and prints, as the last
#                              three lines of stdout:
#                                PG_ATOMIC_PRIMARY_URL=postgres://postgres@127.0.0.1:PORT/postgres
#                                PG_ATOMIC_REPLICA_URL=postgres://postgres@127.0.0.1:PORT/postgres
#                                PG_ATOMIC_REPLICA_DIR=DIR
#                              Exit status 1 when it cannot.
#   .ci/replica.sh stop DIR    stops both clusters started with DIR (the folder stays;
#                              the caller removes it).
#
# Ports: PG_ATOMIC_REPLICA_PRIMARY_PORT / PG_ATOMIC_REPLICA_STANDBY_PORT, else
# free loopback ports. Binaries: PG_BIN, else /usr/lib/postgresql/15/bin. As root,
# the clusters run as the postgres OS user (DIR is made reachable by it).
set -euo pipefail

usage() {
  echo "usage: $0 start|stop DIR" >&2
  exit 2
}
[ $# -eq 2 ] || usage
command="$1"
dir="$2"
PG_BIN="${PG_BIN:-/usr/lib/postgresql/15/bin}"

# Runs a command as the postgres OS user when we are root (initdb refuses root).
as_pg() {
  if [ "$(id -u)" = 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

free_port() {
  node -e "const s = require('net').createServer().listen(0, '127.0.0.1', () => { console.log(s.address().port); s.close() })"
}

psql_at() {
  # psql_at PORT SQL: one value, unaligned, no headers.
  "$PG_BIN/psql" -X -q -At -h 127.0.0.1 -p "$1" -U postgres -d postgres -c "$2"
}

wait_ready() {
  local port="$1" i
  for i in $(seq 1 60); do
    "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$port" -t 1 && return 0
    sleep 0.5
  done
  echo "PostgreSQL on 127.0.0.1:$port did not become ready" >&2
  return 1
}

start() {
  if [ ! -x "$PG_BIN/initdb" ] || [ ! -x "$PG_BIN/pg_basebackup" ]; then
    echo "!!! $PG_BIN has no initdb/pg_basebackup (install postgresql-15). !!!" >&2
    return 1
  fi
  mkdir -p "$dir"
  [ "$(id -u)" = 0 ] && chown postgres: "$dir"
  chmod 0755 "$dir"
  local primary_port="${PG_ATOMIC_REPLICA_PRIMARY_PORT:-$(free_port)}"
  local standby_port="${PG_ATOMIC_REPLICA_STANDBY_PORT:-$(free_port)}"
  if [ "$primary_port" = "$standby_port" ]; then standby_port="$(free_port)"; fi

  as_pg "$PG_BIN/initdb" -D "$dir/primary" -U postgres --auth=trust --no-sync >"$dir/initdb.log" 2>&1 || {
    cat "$dir/initdb.log" >&2
    return 1
  }
  cat >>"$dir/primary/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $primary_port
unix_socket_directories = '$dir'
wal_level = replica
max_wal_senders = 5
hot_standby = on
fsync = off
synchronous_commit = on
full_page_writes = off
max_connections = 100
CONF
  cat >"$dir/primary/pg_hba.conf" <<HBA
local all         all              trust
host  all         all 127.0.0.1/32 trust
host  replication all 127.0.0.1/32 trust
HBA
  as_pg "$PG_BIN/pg_ctl" -D "$dir/primary" -l "$dir/primary.log" -w -t 60 start >/dev/null || {
    cat "$dir/primary.log" >&2
    return 1
  }
  wait_ready "$primary_port"

  as_pg "$PG_BIN/pg_basebackup" -D "$dir/standby" -R -X stream -c fast -h 127.0.0.1 -p "$primary_port" -U postgres \
    >"$dir/basebackup.log" 2>&1 || {
    cat "$dir/basebackup.log" >&2
    return 1
  }
  # postgresql.auto.conf (written by -R) holds primary_conninfo; the rest overrides the copied config.
  cat >>"$dir/standby/postgresql.conf" <<CONF
port = $standby_port
hot_standby = on
hot_standby_feedback = on
CONF
  as_pg "$PG_BIN/pg_ctl" -D "$dir/standby" -l "$dir/standby.log" -w -t 60 start >/dev/null || {
    cat "$dir/standby.log" >&2
    return 1
  }
  wait_ready "$standby_port"

  local i state=''
  for i in $(seq 1 60); do
    state="$(psql_at "$primary_port" "select state from pg_stat_replication limit 1" || true)"
    [ "$state" = streaming ] && break
    sleep 0.5
  done
  if [ "$state" != streaming ]; then
    echo "The standby on port $standby_port is not streaming from the primary (state: '${state:-none}')" >&2
    cat "$dir/standby.log" >&2
    return 1
  fi
  if [ "$(psql_at "$standby_port" 'select pg_is_in_recovery()')" != t ]; then
    echo "The server on port $standby_port is not a standby" >&2
    return 1
  fi

  local primary_url="postgres://postgres@127.0.0.1:$primary_port/postgres"
  local replica_url="postgres://postgres@127.0.0.1:$standby_port/postgres"
  cat >"$dir/env" <<ENV
export PG_ATOMIC_PRIMARY_URL='$primary_url'
export PG_ATOMIC_REPLICA_URL='$replica_url'
export PG_ATOMIC_REPLICA_DIR='$dir'
ENV
  echo "primary 127.0.0.1:$primary_port, standby 127.0.0.1:$standby_port (streaming)" >&2
  echo "PG_ATOMIC_PRIMARY_URL=$primary_url"
  echo "PG_ATOMIC_REPLICA_URL=$replica_url"
  echo "PG_ATOMIC_REPLICA_DIR=$dir"
}

stop() {
  local cluster
  for cluster in standby primary; do
    if [ -f "$dir/$cluster/postmaster.pid" ]; then
      as_pg "$PG_BIN/pg_ctl" -D "$dir/$cluster" -m immediate -w -t 30 stop >/dev/null 2>&1 || true
    fi
  done
}

case "$command" in
  start) start ;;
  stop) stop ;;
  *) usage ;;
esac
