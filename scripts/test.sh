#!/usr/bin/env bash
# Runs every test of the workspace: unit, behaviour, doc and end-to-end tests,
# and a smoke run of the benches. Whatever the tests need is set up (and torn
# down) here, so that this one command works on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-2}

log=$(mktemp)
trap 'scripts/tansu.sh stop; scripts/postgres.sh stop; rm -f "$log"' EXIT
run() { "$@" 2>&1 | tee -a "$log"; }

# The Kafka tests need a real Kafka-protocol broker: tansu, built once into a
# cache (about 12 minutes the first time), started on a free loopback port.
scripts/tansu.sh install
broker=$(scripts/tansu.sh start)
export "${broker?}"
echo "Kafka tests use the tansu broker at $KAFKA_BROKERS"
# The broker-restart test runs a tansu of its own, with file storage.
TANSU_BIN=$(scripts/tansu.sh bin)
export TANSU_BIN

# The PostgreSQL tests need a real server: the system's package (installed
# when missing), a throwaway cluster on a free loopback port.
database=$(scripts/postgres.sh start)
export "${database?}"
echo "PostgreSQL tests use the database at $DATABASE_URL"

# Python packages from PyPI that tests drive the services with (a standard
# Consul client, a Kafka client, an OpenAPI fuzzer), in a virtual environment
# made once into the cache.
BOOKSHELF_PYTHON=$(scripts/python.sh)
export BOOKSHELF_PYTHON

# The network-fault tests cut single instances off with nftables rules
# matching a Unix user per instance: nftables and the users, made here.
faults=$(scripts/fault-env.sh)
export "${faults?}"

# The web console is tested in headless Chromium through WebDriver: both
# from the system's packages, installed when missing.
browser=$(scripts/browser.sh)
# shellcheck disable=SC2086 # two NAME=VALUE words
export ${browser?}

# The Consul adapter's contract runs against the Consul double always, and
# against a real agent only when CONSUL_HTTP_ADDR names one.
if [ -n "${CONSUL_HTTP_ADDR:-}" ]; then
    echo "Consul contract: also running against the real agent at $CONSUL_HTTP_ADDR"
else
    echo "skipped: no real Consul agent (set CONSUL_HTTP_ADDR to run the Consul contract against one too)"
fi

# The Kafka adapter's kill and takeover tests start its examples as
# processes (the services' tests use the binaries cargo builds for them).
cargo build -p bookshelf-kafka --all-features --examples
# Each bench once, on a small log, to check that it still runs and agrees.
BOOKSHELF_BENCH_EVENTS=10000 run cargo test -p bookshelf --all-features --bench '*'
run cargo test --workspace --all-features --lib --bins --tests --examples
run cargo test --workspace --all-features --doc

# One closing line for the whole run, summed from every test binary's result.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($i ~ /^passed/) p += $(i-1); if ($i ~ /^failed/) f += $(i-1) } }
     END { printf "all tests: %d passed, %d failed\n", p, f }' "$log"
