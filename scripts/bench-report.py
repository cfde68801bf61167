#!/usr/bin/env python3
"""Prints the medians of the last criterion run, as events per second, and
the ratios the README reports. Run after `cargo bench --bench projection`,
or with the argument `kafka` after `cargo bench --features kafka --bench kafka`."""
import json
import os
import sys

target = os.environ.get("CARGO_TARGET_DIR", "target")
root = os.path.join(target, "criterion")


def median(group, bench):
    path = os.path.join(root, group, bench, "new", "estimates.json")
    with open(path) as f:
        return json.load(f)["median"]["point_estimate"]  # nanoseconds per iteration


def elements(group, bench):
    path = os.path.join(root, group, bench, "new", "benchmark.json")
    with open(path) as f:
        throughput = json.load(f).get("throughput") or {}
    return throughput.get("Elements", 1)


def rate(group, bench):
    return elements(group, bench) / (median(group, bench) / 1e9)


def kafka():
    rows = [
        ("kafka_projection", "bare_consume", "bare rdkafka consume loop"),
        ("kafka_projection", "projection", "runner over KafkaLog, last-read view"),
        ("kafka_append", "one_event_per_append", "append: 1 event per append, 1 writer"),
        ("kafka_append", "eight_writers_one_event_each", "append: 1 event per append, 8 writers"),
        ("kafka_append", "hundred_events_per_append", "append: 100 events per append"),
        ("kafka_commands", "pipelined", "commands, 64 clients, pipelined appends"),
        ("kafka_commands", "one_at_a_time", "commands, 64 clients, one append at a time"),
        ("kafka_commands", "bare_produce", "plain producer, 64 clients, await each ack"),
    ]
    rates = {}
    for group, bench, label in rows:
        if not os.path.exists(os.path.join(root, group, bench, "new", "estimates.json")):
            continue  # a run filtered to some of the benches
        rates[bench] = rate(group, bench)
        print(f"{label:45} median {median(group, bench) / 1e6:10.1f} ms  {rates[bench]:>12,.0f} per s")
    for (a, b, label) in [
        ("projection", "bare_consume", "projection / bare consume"),
        ("pipelined", "one_at_a_time", "pipelined / one at a time"),
        ("pipelined", "bare_produce", "pipelined / bare produce"),
    ]:
        if a in rates and b in rates:
            print(f"{label} = {rates[a] / rates[b]:.3f}")


def stores():
    rows = [("stores_append", f"{store}_{n}_per_append", f"append, {n} per append: {label}")
            for n in (1, 10)
            for store, label in (("memory", "in memory"), ("sqlite", "SQLite, NORMAL"), ("sqlite_full", "SQLite, FULL"))]
    rows += [
        ("stores_commands", "memory", "commands (load + handle + append): in memory"),
        ("stores_commands", "sqlite", "commands (load + handle + append): SQLite"),
        ("stores_projection", "memory", "projection (subscription + runner): in memory"),
        ("stores_projection", "sqlite", "projection (subscription + runner): SQLite"),
    ]
    rates = {}
    for group, bench, label in rows:
        if not os.path.exists(os.path.join(root, group, bench, "new", "estimates.json")):
            continue
        rates[(group, bench)] = rate(group, bench)
        print(f"{label:52} median {median(group, bench) / 1e6:9.1f} ms  {rates[(group, bench)]:>11,.0f} per s")
    for group, a, b in [("stores_append", f"sqlite_{n}_per_append", f"memory_{n}_per_append") for n in (1, 10)] + [
        ("stores_append", f"sqlite_full_{n}_per_append", f"sqlite_{n}_per_append") for n in (1, 10)
    ] + [("stores_commands", "sqlite", "memory"), ("stores_projection", "sqlite", "memory")]:
        if (group, a) in rates and (group, b) in rates:
            print(f"{group} {a} / {b} = {rates[(group, a)] / rates[(group, b)]:.3f}")


def peers():
    for books in ("1000", "10000", "20"):
        group = f"peers_{books}"
        if not os.path.exists(os.path.join(root, group)):
            continue
        rates = {}
        for bench, label in (("cqrs_es", "cqrs-es 0.5, MemStore + query"),
                             ("bookshelf", "Bookshelf, InMemoryStore + Repository + runner"),
                             ("bookshelf_cached", "the same, Repository with a state cache")):
            if os.path.exists(os.path.join(root, group, bench, "new", "estimates.json")):
                rates[bench] = rate(group, bench)
                print(f"{books:>6} books: {label:50} median {median(group, bench) / 1e6:9.1f} ms  {rates[bench]:>11,.0f} commands/s")
        for bench in ("bookshelf", "bookshelf_cached"):
            if bench in rates and "cqrs_es" in rates:
                ratio = rates[bench] / rates["cqrs_es"]
                print(f"{books:>6} books: {bench} / cqrs_es = {ratio:.2f}")
                if os.environ.get("PEERS_RATIOS"):
                    import json
                    with open(os.environ["PEERS_RATIOS"], "a") as out:
                        out.write(json.dumps({"books": books, "bench": bench, "ratio": ratio}) + "\n")


def postgres():
    """benches/postgres.rs and the peers_sqlite group of benches/peers.rs:
    each median, and the ratios the issue's targets name."""
    found = False
    for clients in ("1", "8", "64"):
        group = f"postgres_commands_{clients}"
        rates = {}
        for bench in ("postgres_es", "bookshelf"):
            if os.path.exists(os.path.join(root, group, bench, "new", "estimates.json")):
                rates[bench] = rate(group, bench)
                found = True
                print(f"commands, {clients:>2} clients: {bench:22} median {median(group, bench) / 1e6:9.1f} ms  "
                      f"{rates[bench]:>9,.0f} commands/s")
        if len(rates) == 2:
            print(f"commands, {clients:>2} clients: bookshelf / postgres_es = {rates['bookshelf'] / rates['postgres_es']:.2f}")
    for clients in ("1", "8", "64"):
        group = f"postgres_appends_{clients}"
        rates = {}
        for bench in ("floor_tokio_postgres", "floor_sqlx", "bookshelf"):
            if os.path.exists(os.path.join(root, group, bench, "new", "estimates.json")):
                rates[bench] = rate(group, bench)
                print(f"appends,  {clients:>2} clients: {bench:22} median {median(group, bench) / 1e6:9.1f} ms  "
                      f"{rates[bench]:>9,.0f} events/s")
        for floor in ("floor_tokio_postgres", "floor_sqlx"):
            if floor in rates and "bookshelf" in rates:
                print(f"appends,  {clients:>2} clients: bookshelf / {floor} = {rates['bookshelf'] / rates[floor]:.2f}")
        if "floor_tokio_postgres" in rates and "floor_sqlx" in rates:
            print(f"appends,  {clients:>2} clients: floor_tokio_postgres / floor_sqlx = "
                  f"{rates['floor_tokio_postgres'] / rates['floor_sqlx']:.2f}")
    group = "postgres_catch_up"
    rates = {}
    for bench in ("plain_select", "bookshelf_view"):
        if os.path.exists(os.path.join(root, group, bench, "new", "estimates.json")):
            rates[bench] = rate(group, bench)
            print(f"catch-up: {bench:32} median {median(group, bench) / 1e6:9.1f} ms  {rates[bench]:>11,.0f} events/s")
    if len(rates) == 2:
        print(f"catch-up: bookshelf_view / plain_select = {rates['bookshelf_view'] / rates['plain_select']:.2f}")
    for books in ("1000", "20"):
        group = f"peers_sqlite_{books}"
        rates = {}
        for bench in ("sqlite_es", "bookshelf"):
            if os.path.exists(os.path.join(root, group, bench, "new", "estimates.json")):
                rates[bench] = rate(group, bench)
                print(f"SQLite, {books} books: {bench:18} median {median(group, bench) / 1e6:9.1f} ms  "
                      f"{rates[bench]:>9,.0f} commands/s")
        if len(rates) == 2:
            print(f"SQLite, {books} books: bookshelf / sqlite_es = {rates['bookshelf'] / rates['sqlite_es']:.2f}")
    if not found:
        sys.exit("no PostgreSQL bench results: run scripts/bench-postgres.sh")


def peers_rounds(path):
    """The ratios scripts/peers.sh collected over its rounds (PEERS_RATIOS):
    each round's, and their median."""
    import json
    import statistics
    ratios = {}
    for line in open(path):
        row = json.loads(line)
        ratios.setdefault((int(row["books"]), row["bench"]), []).append(row["ratio"])
    for (books, bench), values in sorted(ratios.items()):
        rounds = ", ".join(f"{v:.2f}" for v in values)
        print(f"{books:>6} books: {bench} / cqrs_es over {len(values)} rounds: {rounds}; "
              f"median {statistics.median(values):.2f}")


def proxies(path):
    """The JSON lines scripts/proxies.sh wrote: a table, and the gateway's
    ratios to nginx from the same run, per round taken turn about and their
    median."""
    import json
    runs = {}
    print(f"{'run':52} {'requests/s':>11} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} "
          f"{'CPU us/request: proxy':>22} {'service':>12}")
    cpu = lambda run, prefix: (f"{run[prefix + 'user_us']:.1f} + {run[prefix + 'system_us']:.1f}"
                               if prefix + "user_us" in run else "")
    for line in open(path):
        run = json.loads(line)
        label = run["label"]
        runs[label] = run
        rps = run.get("rps", run.get("requests_per_second"))
        top = run.get("max_ms")
        proxy = "" if label.endswith("direct") else cpu(run, "")
        print(f"{label:52} {rps:11,.0f} {run['p50_ms']:8.2f} {run['p99_ms']:8.2f} "
              f"{'' if top is None else f'{top:8.2f}':>8} {proxy:>22} {cpu(run, 'upstream_'):>12}")
        commands = run.get("commands")
        if commands and run.get("offered_per_second"):
            print(f"{'  of which the commands (POST /books/{id}/read)':52} {'':11} {commands['p50_ms']:8.2f} "
                  f"{commands['p99_ms']:8.2f} {commands['max_ms']:8.2f}")
    rps = lambda r: r.get("rps", r.get("requests_per_second"))
    for tool in ("wrk", "load"):
        gateway, nginx = runs.get(f"{tool} gateway"), runs.get(f"{tool} nginx")
        if gateway and nginx:
            print(f"{tool}: gateway / nginx = {rps(gateway) / rps(nginx):.2f}x throughput, "
                  f"p99 {gateway['p99_ms'] / nginx['p99_ms']:.2f}x")
    for tool in ("wrk", "load"):
        turns = []
        for label, gateway in runs.items():
            if label.startswith(f"{tool} turn ") and label.endswith(" gateway"):
                nginx = runs.get(label[: -len("gateway")] + "nginx")
                if nginx:
                    turns.append((rps(gateway) / rps(nginx), gateway["p99_ms"] / nginx["p99_ms"]))
        for n, (throughput, p99) in enumerate(turns, 1):
            print(f"{tool}, turn about, round {n}: gateway / nginx = {throughput:.2f}x throughput, p99 {p99:.2f}x")
        if turns:
            middle = lambda values: sorted(values)[len(values) // 2]
            print(f"{tool}, turn about, median of the rounds: {middle([t for t, _ in turns]):.2f}x throughput, "
                  f"p99 {middle([p for _, p in turns]):.2f}x")


try:
    if sys.argv[1:2] == ["proxies"]:
        proxies(sys.argv[2])
        sys.exit(0)
    if sys.argv[1:] == ["peers"]:
        peers()
        sys.exit(0)
    if sys.argv[1:2] == ["peers-rounds"]:
        peers_rounds(sys.argv[2])
        sys.exit(0)
    if sys.argv[1:] == ["postgres"]:
        postgres()
        sys.exit(0)
    if sys.argv[1:] == ["kafka"]:
        kafka()
        sys.exit(0)
    if sys.argv[1:] == ["stores"]:
        stores()
        sys.exit(0)
    rows = [
        ("projection", "a_fold_decoded", "(a) fold decoded events"),
        ("projection", "b_decode_json_and_fold", "(b) decode JSON envelopes + fold"),
        ("projection", "c_store_subscription_and_runner", "(c) store subscription + projection runner"),
        ("projection", "d_rebuild_beside_the_one_serving", "(d) (c) as a rebuild beside the one serving"),
        ("projection", "floor_json_scan_only", "floor: scan the JSON only"),
        ("projection", "floor_json_borrowed_struct", "floor: JSON into borrowed strings"),
        ("commands", "add_then_read_twice", "commands: load + handle + append"),
    ]
    rates = {}
    for group, bench, label in rows:
        if not os.path.exists(os.path.join(root, group, bench, "new", "estimates.json")):
            continue  # a run filtered to some of the benches
        rates[bench] = rate(group, bench)
        print(f"{label:45} median {median(group, bench) / 1e6:10.1f} ms  {rates[bench]:>12,.0f} per s")
    for a, b, label in [
        ("b_decode_json_and_fold", "a_fold_decoded", "(b)/(a)"),
        ("c_store_subscription_and_runner", "b_decode_json_and_fold", "(c)/(b)"),
        ("d_rebuild_beside_the_one_serving", "c_store_subscription_and_runner", "(d)/(c)"),
        ("b_decode_json_and_fold", "floor_json_borrowed_struct", "(b)/borrowed-struct floor"),
    ]:
        if a in rates and b in rates:
            print(f"{label} = {rates[a] / rates[b]:.3f}")
    if not rates:
        sys.exit("no criterion results: run `cargo bench --bench projection` first")
except FileNotFoundError as missing:
    sys.exit(f"no criterion results at {missing.filename}: run `cargo bench --bench projection` first")
