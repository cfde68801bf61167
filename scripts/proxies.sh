#!/usr/bin/env bash
# The gateway beside nginx, and latency at a fixed offered rate, in one run.
#
#   scripts/proxies.sh [SECONDS] [CONNECTIONS] [RATE]   (defaults: 10, 32, 2000)
#
# 1. Throughput: the embedded last_read (release build, in memory) is
#    loaded with wrk (`GET /last-read`, keep-alive) directly, through nginx
#    (Debian's package, one worker, keep-alive to the upstream, access log
#    on, and set to send what the gateway sends: a correlation id, the
#    caller's or its own, both ways, a traceparent continuing the caller's
#    trace or starting one, and X-Forwarded-For, -Host, -Proto) and
#    through the gateway (in-process discovery, balancing, correlation ids,
#    limits, logging at its default level; `--threads 1`, one thread as
#    nginx has one worker), then with the checking load
#    generator (examples/load: writes and reads, every answer checked) the
#    same three ways, then wrk and the checking load on nginx and the
#    gateway turn about (ROUNDS rounds, default 4, each first in every
#    other round). Printed: requests/s, p50
#    and p99 of each, the CPU time per request of the proxy and of the
#    service behind it, and the gateway's ratios to nginx, per round and
#    their median.
# 2. Latency at a fixed offered rate (RATE requests/s, open loop, latency
#    counted from when each request was due): commands and queries on the
#    in-memory store directly and through the gateway, and on Kafka (books
#    and last_read on tansu, started here): commands alone to books
#    directly, and the mixed load through the gateway. The commands' own
#    percentiles are reported beside the whole mix's.
#
# nginx and wrk come from the system's packages, installed here when
# missing (root, or sudo without a password). Every run is bounded in time
# and goes to 127.0.0.1 only. Logs go to $BOOKSHELF_CACHE/run/proxies-*.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-10}
connections=${2:-32}
rate=${3:-2000}
export CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-2}
cache=${BOOKSHELF_CACHE:-$HOME/.cache/bookshelf}
run="$cache/run/proxies-$$"
mkdir -p "$run"

if ! command -v nginx >/dev/null || ! command -v wrk >/dev/null; then
    sudo=""
    [ "$(id -u)" -ne 0 ] && sudo="sudo -n"
    echo "installing nginx and wrk from the system's packages" >&2
    $sudo apt-get install -y -q nginx-light wrk >&2 ||
        { $sudo apt-get update -q >&2 && $sudo apt-get install -y -q nginx-light wrk >&2; }
fi
nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)

cargo build --release --example last_read --example books --example gateway --example load >&2
bin=${CARGO_TARGET_DIR:-target}/release/examples

logs=$run
# shellcheck source=scripts/services.sh
source scripts/services.sh

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# nginx UPSTREAM: a reverse proxy to UPSTREAM (host:port); sets $url.
nginx_to() {
    local port
    port=$(free_port)
    mkdir -p "$run/nginx"
    cat >"$run/nginx/nginx.conf" <<EOF
worker_processes 1;
pid $run/nginx/nginx.pid;
error_log $run/nginx/error.log;
events { worker_connections 1024; }
http {
    access_log $run/nginx/access.log;
    client_body_temp_path $run/nginx/body;
    proxy_temp_path $run/nginx/proxy;
    fastcgi_temp_path $run/nginx/fastcgi;
    uwsgi_temp_path $run/nginx/uwsgi;
    scgi_temp_path $run/nginx/scgi;
    upstream shelf { server $1; keepalive 64; }
    # The caller's correlation id, or nginx's own request id.
    map \$http_x_correlation_id \$correlation_id {
        "" \$request_id;
        default \$http_x_correlation_id;
    }
    # A W3C traceparent, as the gateway sends: the caller's trace continued
    # under a new span id, or a new trace (ids from nginx's request id).
    map \$request_id \$span_id {
        "~(?<span>[0-9a-f]{16})\$" \$span;
    }
    map \$http_traceparent \$traceparent {
        "~^00-(?<trace>[0-9a-f]{32})-[0-9a-f]{16}-(?<flags>[0-9a-f]{2})\$" "00-\$trace-\$span_id-\$flags";
        default "00-\$request_id-\$span_id-01";
    }
    server {
        listen 127.0.0.1:$port;
        location / {
            proxy_pass http://shelf;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Correlation-Id \$correlation_id;
            proxy_set_header traceparent \$traceparent;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Host \$host;
            proxy_set_header X-Forwarded-Proto \$scheme;
            add_header X-Correlation-Id \$correlation_id always;
        }
    }
}
EOF
    "$nginx_bin" -c "$run/nginx/nginx.conf" -p "$run/nginx" -g 'daemon off;' 2>"$run/nginx/stderr.log" &
    pids+=($!)
    url="http://127.0.0.1:$port"
    for _ in $(seq 1 100); do
        curl -s -o /dev/null "$url/health" && return
        sleep 0.1
    done
    echo "nginx did not start:" >&2
    cat "$run/nginx/stderr.log" "$run/nginx/error.log" >&2
    exit 1
}

# cpu_ticks PID: the CPU time (user and system, clock ticks) process PID has
# spent so far.
cpu_ticks() {
    awk '{print $14, $15}' "/proc/$1/stat"
}

# per_request JSON PROXY_BEFORE PROXY_AFTER UPSTREAM_BEFORE UPSTREAM_AFTER:
# the JSON line (with its "requests") with the CPU time per request (µs) of
# the proxy and of the service behind it added (none for times given as -).
per_request() {
    python3 - "$@" "$(getconf CLK_TCK)" <<'EOF'
import json, sys
run, p0, p1, u0, u1, tick = sys.argv[1:]
run = json.loads(run)
def add(prefix, before, after):
    if "-" in (before, after):
        return
    (user0, sys0), (user1, sys1) = (map(int, x.split()) for x in (before, after))
    per = lambda ticks: ticks / int(tick) / run["requests"] * 1e6
    run[prefix + "user_us"] = per(user1 - user0)
    run[prefix + "system_us"] = per(sys1 - sys0)
add("", p0, p1)
add("upstream_", u0, u1)
print(json.dumps(run))
EOF
}

# wrk_json LABEL URL PID: one wrk run on GET URL/last-read, with the CPU time
# process PID (the proxy, or the service itself) and the service spent;
# prints a JSON line.
wrk_json() {
    local out="$run/wrk-${1//[^a-z0-9]/-}.txt"
    local before after upstream_before upstream_after line
    before=$(cpu_ticks "$3")
    upstream_before=$(cpu_ticks "$direct_pid")
    wrk -t2 -c"$connections" -d"${seconds}s" --latency "$2/last-read" >"$out"
    after=$(cpu_ticks "$3")
    upstream_after=$(cpu_ticks "$direct_pid")
    line=$(python3 - "$1" "$out" <<'EOF'
import json, re, sys
label, path = sys.argv[1:]
text = open(path).read()
def ms(value, unit):
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]
rate = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
count = int(re.search(r"(\d+) requests in", text).group(1))
pct = {p: ms(v, u) for p, v, u in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)", text, re.M)}
errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
non_2xx = int(errors.group(1)) if errors else 0
if non_2xx:
    sys.exit(f"{label}: {non_2xx} answers were not 2xx: see {path}")
print(json.dumps({"label": label, "rps": rate, "p50_ms": pct["50"], "p99_ms": pct["99"], "requests": count}))
EOF
    )
    per_request "$line" "$before" "$after" "$upstream_before" "$upstream_after"
}

# checked LABEL URL PID [RATE [MIX]]: the checking load generator, for
# SECONDS (at RATE requests/s when given, else as fast as answers come; MIX
# as its --mix), with the CPU time of process PID (the proxy, or - for
# none) and of the in-memory service; prints its JSON line.
checked() {
    local more=(--requests 100000000 --max-seconds "$seconds")
    [ -n "${4:-}" ] && more=(--requests $(($4 * seconds)) --max-seconds $((seconds * 3)) --rate "$4" --mix "${5:-mixed}")
    local out="$run/load-${1//[^a-z0-9]/-}.txt"
    local before=- after=- upstream_before=- upstream_after=- line
    if [ "$3" != - ]; then
        before=$(cpu_ticks "$3")
        upstream_before=$(cpu_ticks "$direct_pid")
    fi
    "$bin/load" --target "$2" --concurrency "$connections" --books 200 --json "${more[@]}" >"$out"
    if [ "$3" != - ]; then
        after=$(cpu_ticks "$3")
        upstream_after=$(cpu_ticks "$direct_pid")
    fi
    line=$(tail -n 1 "$out" | python3 -c "import json, sys; d = json.load(sys.stdin); d['label'] = '$1'; print(json.dumps(d))")
    per_request "$line" "$before" "$after" "$upstream_before" "$upstream_after"
}

start last_read --in-memory
direct=$url
direct_pid=${pids[-1]}
nginx_to "${direct#http://}"
nginx=$url
nginx_pid=$(pgrep -P "${pids[-1]}" | head -n 1) # its one worker
start gateway --threads 1 --service "books=$direct" --service "last-read=$direct" --service "authors=$direct"
gateway=$url
gateway_pid=${pids[-1]}
# A shelf with something on it for GET /last-read.
"$bin/load" --target "$direct" --requests 200 --concurrency 4 --books 20 >/dev/null

results="$run/results.jsonl"
: >"$results"
for target in direct nginx gateway; do
    pid=${target}_pid
    wrk_json "wrk $target" "${!target}" "${!pid}" | tee -a "$results"
done
for target in direct nginx gateway; do
    pid=${target}_pid
    checked "load $target" "${!target}" "${!pid}" | tee -a "$results"
done
# Then nginx and the gateway turn about, ROUNDS times (default 4), with wrk
# and with the checking load, so that each pair of runs sees the same
# moment of a shared machine. Each goes first in every other round: the
# checking load writes, so the service behind both holds more with every
# run, and whichever ran second would always meet the larger store.
for round in $(seq 1 "${ROUNDS:-4}"); do
    order="nginx gateway"
    if [ $((round % 2)) = 0 ]; then
        order="gateway nginx"
    fi
    for tool in wrk load; do
        for target in $order; do
            pid=${target}_pid
            if [ "$tool" = wrk ]; then
                wrk_json "wrk turn $round $target" "${!target}" "${!pid}" | tee -a "$results"
            else
                checked "load turn $round $target" "${!target}" "${!pid}" | tee -a "$results"
            fi
        done
    done
done
for target in direct gateway; do
    checked "rate $rate/s, in memory, via $target" "${!target}" - "$rate" | tee -a "$results"
done
stop_all

scripts/tansu.sh install >&2
broker=$(scripts/tansu.sh start)
brokers=${broker#KAFKA_BROKERS=}
topic="proxies-$(date +%s)"
start books --broker "$brokers" --topic "$topic" --data "$run/books"
books=$url
start last_read --broker "$brokers" --topic "$topic"
view=$url
start gateway --service "books=$books" --service "last-read=$view"
gateway=$url
kafka_rate=$((rate / 4))
checked "rate $kafka_rate/s, Kafka, commands only, direct" "$books" - "$kafka_rate" commands | tee -a "$results"
checked "rate $kafka_rate/s, Kafka, via the gateway" "$gateway" - "$kafka_rate" | tee -a "$results"

python3 scripts/bench-report.py proxies "$results"
