"""A Kafka client that is not Bookshelf's (confluent-kafka from PyPI), for
the CloudEvents tests.

  produce BROKERS TOPIC   writes CloudEvents in binary and structured mode
  inspect BROKERS TOPIC   prints the CloudEvents headers of every record
                          Bookshelf wrote (one JSON object per line)
"""
import json
import sys
import uuid

from confluent_kafka import Consumer, Producer, TopicPartition


def produce(brokers, topic):
    producer = Producer({"bootstrap.servers": brokers})
    # Binary mode: attributes in ce_ headers, the data as the body.
    producer.produce(topic, key="counter-x", value=json.dumps({"n": 10}), headers=[
        ("ce_specversion", b"1.0"), ("ce_id", str(uuid.uuid4()).encode()), ("ce_source", b"/python/sensor"),
        ("ce_type", b"Counted"), ("ce_subject", b"counter-x"), ("ce_time", b"2026-11-23T10:00:00Z"),
        ("content-type", b"application/json"),
    ])
    # A non-UUID id: Bookshelf derives one from source and id.
    producer.produce(topic, value=json.dumps({"n": 20}), headers=[
        ("ce_specversion", b"1.0"), ("ce_id", b"reading-0002"), ("ce_source", b"/python/sensor"),
        ("ce_type", b"Counted"),
    ])
    # Structured mode: the whole event as JSON.
    producer.produce(topic, key="counter-y", value=json.dumps({
        "specversion": "1.0", "id": "reading-0003", "source": "/python/sensor", "type": "Counted",
        "subject": "counter-y", "time": "2026-11-23T10:00:02+01:00", "datacontenttype": "application/json",
        "data": {"n": 30},
    }), headers=[("content-type", b"application/cloudevents+json; charset=utf-8")])
    # A type no view here knows.
    producer.produce(topic, value=json.dumps({"level": 3}), headers=[
        ("ce_specversion", b"1.0"), ("ce_id", b"other-1"), ("ce_source", b"/python/sensor"), ("ce_type", b"Other"),
    ])
    # Data that is not JSON: reported and set aside.
    producer.produce(topic, value=b"plain text", headers=[
        ("ce_specversion", b"1.0"), ("ce_id", b"text-1"), ("ce_source", b"/python/sensor"), ("ce_type", b"Counted"),
        ("content-type", b"text/plain"),
    ])
    left = producer.flush(30)
    if left:
        sys.exit(f"FAILED: {left} records not delivered")
    print("produced 5")


def inspect(brokers, topic):
    consumer = Consumer({"bootstrap.servers": brokers, "group.id": f"inspect-{uuid.uuid4()}",
                         "enable.auto.commit": False, "enable.partition.eof": True})
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
    open_partitions = set(partitions)
    while open_partitions:
        message = consumer.poll(10)
        if message is None:
            sys.exit("FAILED: no record within 10 s")
        if message.error():
            if message.error().code() == -191:  # end of partition
                open_partitions.discard(message.partition())
                continue
            sys.exit(f"FAILED: {message.error()}")
        headers = {k: v.decode() for k, v in (message.headers() or [])}
        if "bookshelf.epoch" in headers and "bookshelf.kind" not in headers:
            print(json.dumps({k: v for k, v in headers.items()
                              if k.startswith("ce_") or k in ("content-type", "bookshelf.event_id",
                                                              "bookshelf.event_type", "bookshelf.stream_id")}))
    consumer.close()


if __name__ == "__main__":
    command, brokers, topic = sys.argv[1:4]
    {"produce": produce, "inspect": inspect}[command](brokers, topic)
