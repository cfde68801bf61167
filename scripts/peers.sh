#!/usr/bin/env bash
# Commands beside cqrs-es, in one run (benches/peers.rs): the bench's own
# output goes to /dev/null, because cqrs-es's MemStore prints a line per
# load and per commit; then the medians and ratios.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-${BOOKSHELF_CACHE:-$HOME/.cache/bookshelf}/target}
cargo bench --bench peers "$@" > /dev/null
python3 scripts/bench-report.py peers
