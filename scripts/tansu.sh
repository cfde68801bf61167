#!/usr/bin/env bash
# Installs, starts and stops tansu, the Apache-Kafka-compatible broker that the
# Kafka tests and benches run against.
#
#   scripts/tansu.sh install           build tansu once into the cache (never rebuilt when present)
#   scripts/tansu.sh bin               print the path of the cached binary
#   scripts/tansu.sh start [ENGINE]    start a broker on a free 127.0.0.1 port, wait until it
#                                      accepts connections, and print KAFKA_BROKERS=127.0.0.1:PORT;
#                                      ENGINE is a tansu storage URL (default memory://tansu/;
#                                      sqlite://PATH keeps records in a file across restarts)
#   scripts/tansu.sh stop              stop the broker started by `start`
#
# The cache lives in $BOOKSHELF_CACHE (default ~/.cache/bookshelf) so that CI
# and later sessions on the same machine reuse the ~12 minute build.
set -euo pipefail

TANSU_VERSION=0.6.0
CACHE=${BOOKSHELF_CACHE:-$HOME/.cache/bookshelf}
ROOT="$CACHE/tansu-$TANSU_VERSION"
BIN="$ROOT/bin/tansu"
RUN="$CACHE/run"
PIDFILE="$RUN/tansu.pid"

install() {
    if [ -x "$BIN" ]; then
        echo "tansu $TANSU_VERSION: cached at $BIN" >&2
        return
    fi
    echo "tansu $TANSU_VERSION: not cached, building (about 12 minutes on 2 cores)..." >&2
    mkdir -p "$ROOT"
    cargo install tansu --version "$TANSU_VERSION" --locked \
        --features dynostore,libsql --root "$ROOT" -j "${CARGO_BUILD_JOBS:-2}" >&2
}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

start() {
    local engine=${1:-memory://tansu/}
    [ -x "$BIN" ] || { echo "tansu is not installed: run $0 install" >&2; exit 1; }
    mkdir -p "$RUN"
    local port
    port=$(free_port)
    local log="$RUN/tansu-$port.log"
    "$BIN" broker \
        --listener-url "tcp://127.0.0.1:$port" \
        --advertised-listener-url "tcp://127.0.0.1:$port" \
        --storage-engine "$engine" >"$log" 2>&1 &
    local pid=$!
    echo "$pid" >"$PIDFILE"
    for _ in $(seq 1 300); do
        if ! kill -0 "$pid" 2>/dev/null; then
            echo "tansu exited at start; its log ($log):" >&2
            cat "$log" >&2
            exit 1
        fi
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "tansu $TANSU_VERSION ready on 127.0.0.1:$port (pid $pid, storage $engine, log $log)" >&2
            echo "KAFKA_BROKERS=127.0.0.1:$port"
            return
        fi
        sleep 0.1
    done
    echo "tansu did not accept connections on 127.0.0.1:$port within 30 s; its log ($log):" >&2
    cat "$log" >&2
    kill "$pid" 2>/dev/null || true
    exit 1
}

stop() {
    [ -f "$PIDFILE" ] || return 0
    local pid
    pid=$(cat "$PIDFILE")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$PIDFILE"
}

case "${1:-}" in
install) install ;;
bin) echo "$BIN" ;;
start) start "${2:-}" ;;
stop) stop ;;
*) echo "usage: $0 install|bin|start [ENGINE]|stop" >&2; exit 2 ;;
esac
