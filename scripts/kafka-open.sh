#!/usr/bin/env bash
# What opening a KafkaStore costs on a large topic: fills a 3-partition topic
# with EVENTS book reads of BOOKS books (default 1,000,000 and 100,000) with a
# batching producer, then, each as a process of its own, measures:
#   open (no local state)    the one writer replaying the topic into its state file
#   open (local state)       the same again, resuming from that file
#   takeover                 a member following the topic from scratch, then taking
#                            every partition over (the time after it caught up)
#   takeover (local state)   the same member restarted on its state file
# and prints seconds and peak/final resident memory (KiB) for each. Starts its
# own tansu broker (in-memory storage) unless KAFKA_BROKERS is set.
set -euo pipefail
cd "$(dirname "$0")/.."
events=${1:-1000000}
books=${2:-100000}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target}
if [ -z "${KAFKA_BROKERS:-}" ]; then
    scripts/tansu.sh install
    trap 'scripts/tansu.sh stop' EXIT
    broker=$(scripts/tansu.sh start)
    export "${broker?}"
fi
cargo build --release -p bookshelf-kafka --example kafka_open
bin="$CARGO_TARGET_DIR/release/examples/kafka_open"
topic="bookshelf-open-$(date +%s%N)"
dir=$(mktemp -d)
"$bin" fill "$KAFKA_BROKERS" "$topic" "$events" "$books"
echo "open, no local state:     $("$bin" open "$KAFKA_BROKERS" "$topic" "$dir/writer.sqlite")"
echo "open, local state:        $("$bin" open "$KAFKA_BROKERS" "$topic" "$dir/writer.sqlite")"
echo "takeover, no local state: $("$bin" takeover "$KAFKA_BROKERS" "$topic" "$dir/member.sqlite")"
echo "takeover, local state:    $("$bin" takeover "$KAFKA_BROKERS" "$topic" "$dir/member.sqlite")"
echo "local state files: $(du -sh "$dir" | cut -f1)"
rm -rf "$dir"
