"""Drives a Consul HTTP API with a standard client library, py-consul from
PyPI (not Bookshelf's code): register with one TTL check, pass it by the id
Consul gives it, read health and the catalog, wait in a blocking query, and
deregister. Exits non-zero, saying what differed, when the API does not
answer as Consul does.

Usage: python standard_client.py http://127.0.0.1:PORT
"""
import sys
import threading
import time
from urllib.parse import urlparse

import consul


def wait_until(what, check, seconds=10):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    sys.exit(f"FAILED: {what} within {seconds} s")


def main():
    url = urlparse(sys.argv[1])
    c = consul.Consul(host=url.hostname, port=url.port)

    # One TTL check, the usual way: its id is service:<service id>.
    c.agent.service.register(
        "py-web", service_id="py-web-1", address="127.0.0.1", port=8081,
        tags=["blue", "v1"], check=consul.Check.ttl("10s"),
    )
    checks = c.agent.checks()
    assert "service:py-web-1" in checks, f"check ids: {sorted(checks)}"
    c.agent.check.ttl_pass("service:py-web-1", notes="ready")

    def healthy():
        _, nodes = c.health.service("py-web", passing=True)
        return nodes
    nodes = wait_until("the instance is healthy", healthy)
    assert [n["Service"]["ID"] for n in nodes] == ["py-web-1"], nodes
    assert nodes[0]["Service"]["Port"] == 8081, nodes

    index, services = c.catalog.services()
    assert int(index) > 0, index
    assert sorted(services["py-web"]) == ["blue", "v1"], services
    assert "consul" in services, services
    index, entries = c.catalog.service("py-web")
    assert [(e["ServiceID"], e["ServicePort"], e["ServiceAddress"]) for e in entries] == [
        ("py-web-1", 8081, "127.0.0.1")
    ], entries
    _, tagged = c.catalog.service("py-web", tag="blue")
    assert len(tagged) == 1, tagged
    _, untagged = c.catalog.service("py-web", tag="green")
    assert untagged == [], untagged

    # A blocking query returns when a second instance comes, with a
    # higher index, well before its wait is over.
    index, _ = c.health.service("py-web")
    answer = {}

    def block():
        started = time.monotonic()
        answer["index"], answer["nodes"] = c.health.service("py-web", index=index, wait="20s")
        answer["took"] = time.monotonic() - started

    waiter = threading.Thread(target=block)
    waiter.start()
    time.sleep(0.3)
    c.agent.service.register("py-web", service_id="py-web-2", address="127.0.0.1", port=8082,
                             check=consul.Check.ttl("10s"))
    waiter.join(25)
    assert answer.get("took", 99) < 10, answer
    assert int(answer["index"]) > int(index), (answer["index"], index)
    assert sorted(n["Service"]["ID"] for n in answer["nodes"]) == ["py-web-1", "py-web-2"], answer
    # Two TTL checks, one per instance, each service:<its id>.
    assert {"service:py-web-1", "service:py-web-2"} <= set(c.agent.checks())

    # A blocking query on the catalog too.
    index, _ = c.catalog.services()
    c.agent.service.deregister("py-web-2")
    new_index, services = c.catalog.services(index=index, wait="20s")
    assert int(new_index) > int(index), (new_index, index)

    c.agent.service.deregister("py-web-1")
    def gone():
        _, nodes = c.health.service("py-web")
        _, services = c.catalog.services()
        return nodes == [] and "py-web" not in services
    wait_until("the service is gone from health and the catalog", gone)
    print("OK: register, TTL pass by service:<id>, health, catalog, blocking queries, deregister")


if __name__ == "__main__":
    try:
        main()
    except AssertionError as failed:
        sys.exit(f"FAILED: {failed!r}")
