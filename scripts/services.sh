# Sourced by the load scripts: start example services as processes, stop
# them (and tansu) on exit. Expects $bin (where the example binaries are)
# and $logs (a directory for their output).

pids=()
stop_all() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    pids=()
}
trap 'stop_all; scripts/tansu.sh stop 2>/dev/null || true' EXIT

# start NAME ARGS...: runs example NAME on a free port, waits until it says
# where it listens, and sets $url.
start() {
    local name=$1
    shift
    local out="$logs/$name-${#pids[@]}"
    "$bin/$name" --port 0 "$@" >"$out.out" 2>"$out.log" &
    pids+=($!)
    for _ in $(seq 1 300); do
        url=$(sed -n 's/.*listening on \(http:[^ ]*\)\/.*/\1/p' "$out.out" | head -n 1)
        [ -n "$url" ] && return
        sleep 0.1
    done
    echo "$name did not start; its log:" >&2
    cat "$out.log" >&2
    exit 1
}
