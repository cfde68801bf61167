#!/usr/bin/env bash
# Runs the Kafka benches against a tansu broker started (and stopped) here;
# then prints their medians and ratios. Extra arguments go to criterion.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/tansu.sh install
trap 'scripts/tansu.sh stop' EXIT
broker=$(scripts/tansu.sh start)
export "${broker?}"
cargo bench --features kafka --bench kafka -- --noplot "$@"
python3 scripts/bench-report.py kafka
