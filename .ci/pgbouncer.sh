#!/usr/bin/env bash
# PgBouncer in transaction pooling mode in front of the machine's PostgreSQL
# (127.0.0.1:5432), for CI's third test run (issue 3 §5; docs/guide/pgbouncer.md).
#
#   .ci/pgbouncer.sh start DIR   installs pgbouncer when missing (the Debian
#                                package, as root), writes its config, log and
#                                pidfile in DIR, starts it in the background and
#                                prints the port it listens on (the last line of
#                                stdout). Exit status 1 when it cannot. As root,
#                                PgBouncer runs as the postgres user: DIR must be
#                                reachable by it (e.g. a fresh `mktemp -d`).
#   .ci/pgbouncer.sh stop DIR    stops the PgBouncer started with DIR.
#
# The test harness creates and drops each file's database through a direct admin
# connection (DATABASE_URL); the pg-atomic databases under test (and their
# recorded pools) connect through the bouncer (PG_ATOMIC_TEST_POOLER_URL) and are
# created with transactionPooling: true.
set -euo pipefail

usage() {
  echo "usage: $0 start|stop DIR" >&2
  exit 2
}
[ $# -eq 2 ] || usage
command="$1"
dir="$2"

# Debian installs it in /usr/sbin, which a non-root PATH may lack.
case ":$PATH:" in *:/usr/sbin:*) ;; *) PATH="$PATH:/usr/sbin" ;; esac

ensure_pgbouncer() {
  command -v pgbouncer >/dev/null 2>&1 && return 0
  echo 'pgbouncer is not installed; installing the Debian package' >&2
  if [ "$(id -u)" != 0 ]; then
    echo '!!! Installing pgbouncer needs root (apt-get). Install it (apt-get install pgbouncer) and re-run. !!!' >&2
    return 1
  fi
  apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbouncer >/dev/null || return 1
  command -v pgbouncer >/dev/null 2>&1
}

free_port() {
  node -e "const s = require('net').createServer().listen(0, '127.0.0.1', () => { console.log(s.address().port); s.close() })"
}

listening() {
  node -e "require('net').connect($1, '127.0.0.1').on('connect', () => process.exit(0)).on('error', () => process.exit(1))"
}

start() {
  ensure_pgbouncer
  mkdir -p "$dir"
  local port
  port="$(free_port)"
  # trust, as on the machine's PostgreSQL; PgBouncer still wants the user in auth_file.
  echo '"postgres" ""' >"$dir/userlist.txt"
  cat >"$dir/pgbouncer.ini" <<INI
[databases]
; every database name (each test file creates its own) goes to the local server
* = host=127.0.0.1 port=5432

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $port
unix_socket_dir =
auth_type = trust
auth_file = $dir/userlist.txt
pool_mode = transaction
; server connections per test database: the most transactions a test holds
; open at once (invariants.test.ts: 6 workers at a barrier + 2 auditors).
; Fewer and such a test waits forever for a server connection.
default_pool_size = 8
; hand each transaction the next server connection in turn, so that a client's
; consecutive transactions run on different backends (what exposes session state)
server_round_robin = 1
max_client_conn = 200
; a client waiting this long for a server connection gets an error instead of hanging the run
query_wait_timeout = 60
logfile = $dir/pgbouncer.log
pidfile = $dir/pgbouncer.pid
INI
  # PgBouncer refuses to run as root.
  if [ "$(id -u)" = 0 ]; then
    local user=postgres
    id "$user" >/dev/null 2>&1 || user=nobody
    chown -R "$user" "$dir"
    runuser -u "$user" -- pgbouncer -d "$dir/pgbouncer.ini" >&2
  else
    pgbouncer -d "$dir/pgbouncer.ini" >&2
  fi
  local i
  for i in $(seq 1 50); do
    if listening "$port"; then
      echo "$(pgbouncer --version | head -n 1) listening on 127.0.0.1:$port" >&2
      echo "$port"
      return 0
    fi
    sleep 0.2
  done
  echo "PgBouncer did not start listening on 127.0.0.1:$port; its log:" >&2
  cat "$dir/pgbouncer.log" >&2 || true
  return 1
}

stop() {
  if [ -f "$dir/pgbouncer.pid" ]; then
    kill "$(cat "$dir/pgbouncer.pid")" 2>/dev/null || true
  fi
}

case "$command" in
  start) start ;;
  stop) stop ;;
  *) usage ;;
esac
