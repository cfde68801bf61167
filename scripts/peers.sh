#!/usr/bin/env bash
# Commands beside cqrs-es (benches/peers.rs), ROUNDS times (default 3): the
# bench's own output goes to /dev/null, because cqrs-es's MemStore prints a
# line per load and per commit; after each round its medians and ratios,
# and at the end each ratio's rounds and their median (the machine is
# shared: one round's ratio moves with what else runs).
#
#   ROUNDS=3 scripts/peers.sh [criterion arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-${BOOKSHELF_CACHE:-$HOME/.cache/bookshelf}/target}
rounds=${ROUNDS:-3}
ratios=$(mktemp)
trap 'rm -f "$ratios"' EXIT
for round in $(seq 1 "$rounds"); do
    echo "round $round of $rounds"
    cargo bench --bench peers "$@" > /dev/null
    PEERS_RATIOS=$ratios python3 scripts/bench-report.py peers
done
python3 scripts/bench-report.py peers-rounds "$ratios"
