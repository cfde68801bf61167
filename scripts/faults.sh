#!/usr/bin/env bash
# The fault suite (the_nemesis_finds_no_anomaly in
# bookshelf-services/tests/e2e/books_scaled.rs) for longer than the test
# command runs it: three books instances on tansu with the Consul double and
# the gateway, clients recording every command and read, a seeded nemesis
# (kills and restarts, pauses, an instance cut off from the broker, from
# Consul or from its peers, Consul restarted), then the checker. Prints the
# seed; the same seed runs the same faults in the same order again.
#
#   scripts/faults.sh [--minutes N] [--seed S] [--break stale-reads]
#
# --break stale-reads runs the instances without read barriers, to see the
# suite find stale reads.
set -euo pipefail
cd "$(dirname "$0")/.."
minutes=5
while [ $# -gt 0 ]; do
    case "$1" in
        --minutes) minutes=$2; shift 2 ;;
        --seed) export BOOKSHELF_FAULT_SEED=$2; shift 2 ;;
        --break) export BOOKSHELF_FAULT_BREAK=$2; shift 2 ;;
        *) echo "usage: scripts/faults.sh [--minutes N] [--seed S] [--break stale-reads]" >&2; exit 2 ;;
    esac
done
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-${BOOKSHELF_CACHE:-$HOME/.cache/bookshelf}/target}
export BOOKSHELF_FAULT_SECONDS=$((minutes * 60))
faults=$(scripts/fault-env.sh)
export "${faults?}"
scripts/tansu.sh install
trap 'scripts/tansu.sh stop' EXIT
broker=$(scripts/tansu.sh start)
export "${broker?}"
cargo test -p bookshelf-services --all-features --test e2e -- the_nemesis_finds_no_anomaly --nocapture 2>&1 |
    grep -v -E ' (INFO|DEBUG) '
