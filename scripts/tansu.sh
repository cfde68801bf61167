#!/usr/bin/env bash
# Installs, starts and stops tansu, the Apache-Kafka-compatible broker that the
# Kafka tests and benches run against.
#
#   scripts/tansu.sh install        build tansu once into the cache (never rebuilt when present)
#   scripts/tansu.sh start [engine] start a broker on a free 127.0.0.1 port; prints KAFKA_BROKERS=...
#   scripts/tansu.sh stop           stop the broker started by `start`
#
# The cache lives in $BOOKSHELF_CACHE (default ~/.cache/bookshelf) so that CI
# and later sessions on the same machine reuse the ~12 minute build.
set -euo pipefail

TANSU_VERSION=0.6.0
CACHE=${BOOKSHELF_CACHE:-$HOME/.cache/bookshelf}
ROOT="$CACHE/tansu-$TANSU_VERSION"
BIN="$ROOT/bin/tansu"
RUN="$CACHE/run"

install() {
    if [ -x "$BIN" ]; then
        echo "tansu $TANSU_VERSION: cached at $BIN"
        return
    fi
    echo "tansu $TANSU_VERSION: not cached, building (about 12 minutes on 2 cores)..."
    mkdir -p "$ROOT"
    cargo install tansu --version "$TANSU_VERSION" --locked \
        --features dynostore,libsql --root "$ROOT" -j "${CARGO_BUILD_JOBS:-2}"
}

case "${1:-}" in
install) install ;;
*) echo "usage: $0 install|start|stop" >&2; exit 2 ;;
esac
