#!/usr/bin/env bash
# Bookshelf on PostgreSQL beside postgres-es and the driver floors
# (benches/postgres.rs), and on SQLite beside sqlite-es (the peers_sqlite
# group of benches/peers.rs), on a throwaway PostgreSQL server of its own;
# then the medians and ratios.
#
#   scripts/bench-postgres.sh [criterion filter]
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-${BOOKSHELF_CACHE:-$HOME/.cache/bookshelf}/target}
export BOOKSHELF_POSTGRES_NAME=bench
trap 'scripts/postgres.sh stop' EXIT
database=$(scripts/postgres.sh start)
export "${database?}"
cargo bench --features postgres --bench postgres -- "$@"
# cqrs-es's stores print a line per load and per commit.
cargo bench --bench peers -- peers_sqlite > /dev/null
python3 scripts/bench-report.py postgres
