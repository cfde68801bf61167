#!/usr/bin/env bash
# Installs, starts and stops the throwaway PostgreSQL server that the
# PostgreSQL tests and benches run against.
#
#   scripts/postgres.sh start    install PostgreSQL from the system's packages when
#                                missing, create a new cluster in a scratch directory,
#                                start it on a free 127.0.0.1 port as the `postgres`
#                                user, wait until it answers, and print
#                                DATABASE_URL=postgres://postgres@127.0.0.1:PORT/bookshelf
#   scripts/postgres.sh stop     stop the server started by `start` and delete its cluster
#   scripts/postgres.sh down     stop the server at once, as a crash would (its data kept)
#   scripts/postgres.sh up       start it again on the same port
#
# BOOKSHELF_POSTGRES_NAME=NAME keeps a server apart from the others (tests
# that take their server down start one of their own).
#
# The server refuses to run as root, so it runs as `postgres` (made when
# missing); the cluster trusts connections from 127.0.0.1 only, and lives
# as long as the run: nothing of it is reused.
set -euo pipefail

CACHE=${BOOKSHELF_CACHE:-$HOME/.cache/bookshelf}
RUN="$CACHE/run"
STATE="$RUN/postgres${BOOKSHELF_POSTGRES_NAME:+-$BOOKSHELF_POSTGRES_NAME}.state"

bindir() {
    local found
    found=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    if [ -n "$found" ] && [ -x "$found/initdb" ]; then
        echo "$found"
    fi
}

install() {
    if [ -n "$(bindir)" ]; then
        return
    fi
    echo "PostgreSQL: not installed, installing the system's package..." >&2
    if [ "$(id -u)" -ne 0 ]; then
        echo "PostgreSQL is missing and installing it needs root (apt-get install postgresql)" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq postgresql >&2
    [ -n "$(bindir)" ] || { echo "apt-get installed postgresql but no initdb was found" >&2; exit 1; }
}

# Runs a server program as the `postgres` user (as is when not root).
as_postgres() {
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

launch() {
    local bin=$1 dir=$2 port=$3
    as_postgres "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
        -o "-p $port -k $dir -c listen_addresses=127.0.0.1" start >&2 || {
        echo "PostgreSQL did not start; its log ($dir/server.log):" >&2
        cat "$dir/server.log" >&2
        exit 1
    }
}

start() {
    install
    local bin dir port
    bin=$(bindir)
    if [ "$(id -u)" -eq 0 ] && ! id postgres >/dev/null 2>&1; then
        useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
    fi
    mkdir -p "$RUN"
    dir=$(mktemp -d /tmp/bookshelf-postgres.XXXXXX)
    chmod 755 "$dir"
    [ "$(id -u)" -eq 0 ] && chown postgres: "$dir"
    as_postgres "$bin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --no-locale >"$dir/initdb.log" 2>&1 || {
        cat "$dir/initdb.log" >&2
        exit 1
    }
    # Room for several services and the benches' 64 clients.
    cat >>"$dir/data/postgresql.conf" <<EOF
max_connections = 300
shared_buffers = 256MB
EOF
    port=$(free_port)
    launch "$bin" "$dir" "$port"
    as_postgres "$bin/psql" -h 127.0.0.1 -p "$port" -U postgres -qAt -c "CREATE DATABASE bookshelf" >&2
    printf '%s %s %s\n' "$bin" "$dir" "$port" >"$STATE"
    echo "PostgreSQL $("$bin/postgres" --version | awk '{print $3}') ready on 127.0.0.1:$port (cluster $dir)" >&2
    echo "DATABASE_URL=postgres://postgres@127.0.0.1:$port/bookshelf"
}

stop() {
    [ -f "$STATE" ] || return 0
    local bin dir port
    read -r bin dir port <"$STATE"
    as_postgres "$bin/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null 2>&1 || true
    rm -rf "$dir" "$STATE"
}

down() {
    local bin dir port
    read -r bin dir port <"$STATE"
    as_postgres "$bin/pg_ctl" -D "$dir/data" -m immediate -w stop >&2
}

up() {
    local bin dir port
    read -r bin dir port <"$STATE"
    launch "$bin" "$dir" "$port"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    down) down ;;
    up) up ;;
    *) echo "usage: $0 start|stop|down|up" >&2; exit 2 ;;
esac
