#!/usr/bin/env bash
# Load through the gateway, on release builds, with every answer checked.
#
#   scripts/load.sh [REQUESTS] [CONCURRENCY]     (defaults: 20000 and 32)
#
# Runs, one after another in the same run:
#   1. the embedded last_read directly, then through the gateway (in-process
#      discovery): the ratio is the gateway's cost;
#   2. books and last_read on Kafka (tansu, started here), through the gateway.
# Each run is bounded (REQUESTS requests, at most 120 s) and fails if any
# request fails, is answered wrongly, or loses its write. Logs go to
# $BOOKSHELF_CACHE/run/load-*.log.
set -euo pipefail
cd "$(dirname "$0")/.."
requests=${1:-20000}
concurrency=${2:-32}
export CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-2}
cache=${BOOKSHELF_CACHE:-$HOME/.cache/bookshelf}
mkdir -p "$cache/run"

cargo build --release --all-features --example last_read --example books --example gateway --example load >&2
bin=${CARGO_TARGET_DIR:-target}/release/examples

logs="$cache/run/load-$$"
mkdir -p "$logs"
# shellcheck source=scripts/services.sh
source scripts/services.sh

load() {
    echo
    echo "== $1"
    "$bin/load" --target "$2" --requests "$requests" --concurrency "$concurrency" --books 200 --max-seconds 120 --json
}

start last_read
shelf=$url
start gateway --service "books=$shelf" --service "last-read=$shelf" --service "authors=$shelf"
gateway=$url
direct=$(load "embedded last_read, directly" "$shelf" | tee /dev/stderr | tail -n 1)
through=$(load "embedded last_read, through the gateway" "$gateway" | tee /dev/stderr | tail -n 1)
python3 - "$direct" "$through" <<'EOF'
import json, sys
direct, through = (json.loads(a) for a in sys.argv[1:])
print(f"\ngateway / direct, same run: throughput {through['requests_per_second'] / direct['requests_per_second']:.2f}x,"
      f" p50 {through['p50_ms'] / direct['p50_ms']:.2f}x, p99 {through['p99_ms'] / direct['p99_ms']:.2f}x")
EOF
stop_all

scripts/tansu.sh install
broker=$(scripts/tansu.sh start)
brokers=${broker#KAFKA_BROKERS=}
topic="load-$(date +%s)"
start books --broker "$brokers" --topic "$topic"
books=$url
start last_read --broker "$brokers" --topic "$topic"
view=$url
start gateway --service "books=$books" --service "last-read=$view"
load "books and last_read on Kafka (tansu), through the gateway" "$url" >&2
