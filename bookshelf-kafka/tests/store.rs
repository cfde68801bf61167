//! The Kafka event store against a real Kafka-protocol broker: tansu, started
//! by `scripts/test.sh`, whose address comes in `KAFKA_BROKERS`.

mod common;

use common::{brokers, counted, topic};
use std::sync::Arc;
use std::time::Duration;

use bookshelf_core::{
    DomainEvent, Envelope, EventStore, ExpectedVersion, Position, ProjectionRunner, StoreError, StreamId, Version, View,
};
use bookshelf_kafka::{headers, KafkaConfig, KafkaStore};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use serde::{Deserialize, Serialize};

async fn open(topic: &str, partitions: i32) -> KafkaStore {
    KafkaStore::open(
        KafkaConfig::new(brokers(), topic)
            .partitions(partitions)
            .create_topic(true),
    )
    .await
    .expect("the store opens on the test broker")
}

#[tokio::test]
async fn appends_read_back_in_order_with_metadata_in_headers() {
    let topic = topic("roundtrip");
    let store = open(&topic, 3).await;
    let stream = StreamId::new("counter-1");
    let out = store
        .append(&stream, ExpectedVersion::NoStream, vec![counted(1), counted(2)])
        .await
        .unwrap();
    assert_eq!(out.version, Version(2));
    let out = store
        .append(&stream, ExpectedVersion::Exact(Version(2)), vec![counted(3)])
        .await
        .unwrap();
    assert_eq!(out.version, Version(3));

    let events = store.read_stream(&stream, Version(1)).await.unwrap();
    let seen: Vec<(u64, &str)> = events.iter().map(|e| (e.version.0, e.payload.get())).collect();
    assert_eq!(seen, vec![(1, r#"{"n":1}"#), (2, r#"{"n":2}"#), (3, r#"{"n":3}"#)]);
    assert_eq!(events[2].metadata.correlation_id.as_deref(), Some("req-3"));
    assert_eq!(store.read_stream(&stream, Version(3)).await.unwrap().len(), 1);
    assert!(store
        .read_stream(&StreamId::new("counter-none"), Version(1))
        .await
        .unwrap()
        .is_empty());

    // The same record seen by a plain Kafka consumer: keyed by stream, fields in headers.
    let consumer: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("group.id", "bookshelf-test-raw")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut assignment = rdkafka::TopicPartitionList::new();
    assignment
        .add_partition_offset(&topic, store.partition_of(&stream), rdkafka::Offset::Beginning)
        .unwrap();
    consumer.assign(&assignment).unwrap();
    // The partition opens with the store's claim (see `bookshelf_kafka::rule`).
    let claim = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(claim.key(), Some(bookshelf_kafka::rule::CLAIM_KEY.as_bytes()));
    let raw = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(raw.key(), Some("counter-1".as_bytes()));
    let header = |name: &str| {
        raw.headers()
            .and_then(|h| h.iter().find(|h| h.key == name))
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
    };
    assert_eq!(header(headers::VERSION).as_deref(), Some("1"));
    assert_eq!(
        header(headers::EPOCH).as_deref(),
        Some("1"),
        "written under the store's first claim"
    );
    assert_eq!(header(headers::EVENT_TYPE).as_deref(), Some("Counted"));
    assert_eq!(header(headers::CORRELATION_ID).as_deref(), Some("req-1"));
    assert_eq!(header(&format!("{}n", headers::META_PREFIX)).as_deref(), Some("1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conflicting_appends_exactly_one_wins() {
    let store = open(&topic("race"), 3).await;
    for round in 0..20 {
        let stream = StreamId::new(format!("counter-{round}"));
        let barrier = Arc::new(tokio::sync::Barrier::new(4));
        let tasks: Vec<_> = (0..4)
            .map(|n| {
                let (store, stream, barrier) = (store.clone(), stream.clone(), Arc::clone(&barrier));
                tokio::spawn(async move {
                    barrier.wait().await;
                    store.append(&stream, ExpectedVersion::NoStream, vec![counted(n)]).await
                })
            })
            .collect();
        let mut wins = 0;
        for task in tasks {
            match task.await.unwrap() {
                Ok(_) => wins += 1,
                Err(StoreError::Conflict { actual, .. }) => assert_eq!(actual, Version(1)),
                Err(other) => panic!("unexpected: {other}"),
            }
        }
        assert_eq!(wins, 1, "round {round}");
        assert_eq!(store.read_stream(&stream, Version(1)).await.unwrap().len(), 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_stream_stays_in_order_across_partitions() {
    let store = open(&topic("order"), 3).await;
    let streams: Vec<StreamId> = (0..9).map(|n| StreamId::new(format!("counter-{n}"))).collect();
    let partitions: std::collections::BTreeSet<i32> = streams.iter().map(|s| store.partition_of(s)).collect();
    assert!(partitions.len() > 1, "the streams spread over several partitions");
    let writers: Vec<_> = streams
        .iter()
        .cloned()
        .map(|stream| {
            let store = store.clone();
            tokio::spawn(async move {
                for n in 0..15 {
                    store
                        .append(&stream, ExpectedVersion::Any, vec![counted(n)])
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }
    for stream in &streams {
        let events = store.read_stream(stream, Version(1)).await.unwrap();
        let payloads: Vec<String> = events.iter().map(|e| e.payload.get().to_owned()).collect();
        let expected: Vec<String> = (0..15).map(|n| format!(r#"{{"n":{n}}}"#)).collect();
        assert_eq!(payloads, expected, "stream {stream}");
        assert!(events.windows(2).all(|w| w[0].position < w[1].position));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_whose_caller_goes_away_still_counts_for_the_next() {
    // A caller that stops waiting (an HTTP client that hung up) drops the
    // append's future just after its record went out. The next append on
    // the stream must see that record's version, not write it again.
    let store = open(&topic("abandoned"), 1).await;
    for round in 0..20 {
        let stream = StreamId::new(format!("counter-{round}"));
        let abandoned = tokio::time::timeout(
            Duration::from_micros(200),
            store.append(&stream, ExpectedVersion::NoStream, vec![counted(1)]),
        )
        .await;
        let next = store
            .append(&stream, ExpectedVersion::Any, vec![counted(2)])
            .await
            .unwrap();
        assert_eq!(
            next.version,
            Version(2),
            "round {round} (first append abandoned: {})",
            abandoned.is_err()
        );
        let versions: Vec<u64> = store
            .read_stream(&stream, Version(1))
            .await
            .unwrap()
            .iter()
            .map(|e| e.version.0)
            .collect();
        assert_eq!(versions, vec![1, 2], "round {round}");
    }
}

#[tokio::test]
async fn reopening_learns_every_streams_version_from_the_topic() {
    let topic = topic("reopen");
    let store = open(&topic, 3).await;
    for n in 0..5 {
        for stream in ["counter-a", "counter-b"] {
            store
                .append(&StreamId::new(stream), ExpectedVersion::Any, vec![counted(n)])
                .await
                .unwrap();
        }
    }
    store.flush(Duration::from_secs(10)).await.unwrap();
    drop(store);
    let reopened = open(&topic, 3).await;
    let a = StreamId::new("counter-a");
    assert_eq!(reopened.stream_version(&a).await.unwrap(), Version(5));
    let stale = reopened
        .append(&a, ExpectedVersion::Exact(Version(4)), vec![counted(9)])
        .await;
    assert!(matches!(stale, Err(StoreError::Conflict { actual: Version(5), .. })));
    reopened
        .append(&a, ExpectedVersion::Exact(Version(5)), vec![counted(9)])
        .await
        .unwrap();
    assert_eq!(
        reopened.read_stream(&a, Version(6)).await.unwrap()[0].payload.get(),
        r#"{"n":9}"#
    );
}

#[derive(Debug, Clone, Serialize, Deserialize)]
enum CounterEvent {
    Counted { n: u64 },
}
impl DomainEvent for CounterEvent {}

#[derive(Default)]
struct Sum {
    total: u64,
    positions: Vec<u64>,
}

impl View for Sum {
    type Event = CounterEvent;
    fn apply(&mut self, event: Envelope<CounterEvent>) {
        let CounterEvent::Counted { n } = event.payload;
        self.total += n;
        self.positions.push(event.position.0);
    }
}

#[tokio::test]
async fn the_core_projection_runner_runs_on_a_one_partition_topic() {
    let store = open(&topic("project"), 1).await;
    for n in 1..=50 {
        let stream = StreamId::new(format!("counter-{}", n % 4));
        store
            .append(&stream, ExpectedVersion::Any, vec![counted(n)])
            .await
            .unwrap();
    }
    let running = ProjectionRunner::<Sum, _>::new("sum", store.clone()).start();
    let head = store.head().await.unwrap();
    assert_eq!(head, Position(51), "the store's claim, then 50 events");
    let reached = tokio::time::timeout(Duration::from_secs(30), running.handle().wait_for(head)).await;
    reached.expect("caught up in time").expect("the runner still runs");
    running.handle().read(|sum| {
        assert_eq!(sum.total, (1..=50).sum::<u64>());
        assert_eq!(
            sum.positions,
            (1..=50).collect::<Vec<_>>(),
            "the claim at 0 is not an event"
        );
    });
    running.stop().await.unwrap();

    let many = open(&topic("project-many"), 3).await;
    assert!(
        many.subscribe(Position::START).await.is_err(),
        "several partitions have no single log"
    );
}
