//! Kafka benches, against the broker in `KAFKA_BROKERS` (scripts/test.sh and
//! scripts/bench-kafka.sh start tansu):
//!
//! * `kafka_projection/bare_consume`: a plain rdkafka loop that reads every
//!   record of the topic and touches its bytes, the ceiling;
//! * `kafka_projection/projection`: the "last read books" view projected from
//!   the same records by `KafkaProjection` (decode, fold, offsets);
//! * `kafka_append/*`: `KafkaStore::append` with acknowledgement: one event
//!   per append, 100 events per append, and one-event appends from 8 writers
//!   on 8 streams at once.
//!
//! 1,000,000 events unless `BOOKSHELF_BENCH_EVENTS` says otherwise.

#[path = "../examples/common/books.rs"]
mod books;
mod support;

use support::events;

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Duration;

use books::{BookEvent, LastRead};
use bookshelf::kafka::{high_watermarks, KafkaConfig, KafkaProjection, KafkaStore};
use bookshelf::{
    codec, Envelope, EventId, EventStore, ExpectedVersion, Metadata, NewEvent, Position, StreamId, Version,
};
use chrono::{TimeZone, Utc};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::Message;

fn brokers() -> String {
    std::env::var("KAFKA_BROKERS")
        .ok()
        .filter(|b| !b.is_empty())
        .unwrap_or_else(|| panic!("the Kafka benches need a broker: run scripts/bench-kafka.sh, or set KAFKA_BROKERS"))
}

fn topic(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("bookshelf-bench-{name}-{nanos}")
}

/// The n-th envelope of the bench topic, as JSON: a read of one of 10,000
/// books, about 230 bytes.
fn envelope(n: u64) -> (String, String) {
    let book = n % 10_000;
    let at = Utc.timestamp_opt(1_700_000_000 + n as i64, 0).unwrap();
    let encoded = codec::encode(&BookEvent::BookRead {
        title: format!("Book {book}"),
        author: format!("Author {}", book % 97),
        read_at: at,
    })
    .unwrap();
    let stream = StreamId::for_aggregate("book", &book.to_string());
    let record = Envelope {
        event_id: EventId::new(),
        stream_id: stream.clone(),
        version: Version(n / 10_000 + 1),
        position: Position(0),
        recorded_at: at,
        event_type: encoded.event_type,
        schema_version: encoded.schema_version,
        metadata: Metadata::default(),
        payload: encoded.payload,
    };
    (stream.to_string(), record.to_json())
}

fn kafka(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let events = events();
    let projection_topic = topic("projection");
    let config = KafkaConfig::new(brokers(), &projection_topic)
        .partitions(3)
        .create_topic(true);
    let ends: BTreeMap<String, u64> = runtime.block_on(async {
        // Creates the topic.
        KafkaStore::open(config.clone()).await.unwrap();
        let producer: FutureProducer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", brokers())
            .set("linger.ms", "5")
            .set("enable.idempotence", "true")
            .create()
            .unwrap();
        let mut bytes = 0;
        let mut pending = Vec::new();
        for n in 0..events {
            let (key, body) = envelope(n);
            bytes += body.len();
            let partition = bookshelf_partition(&key);
            let mut record = FutureRecord::to(&projection_topic)
                .key(&key)
                .payload(&body)
                .partition(partition);
            loop {
                match producer.send_result(record) {
                    Ok(delivery) => {
                        pending.push(delivery);
                        break;
                    }
                    Err((_, returned)) => {
                        // The local queue is full: wait for what is in flight.
                        record = returned;
                        for delivery in pending.drain(..) {
                            delivery.await.unwrap().unwrap();
                        }
                    }
                }
            }
        }
        for delivery in pending {
            delivery.await.unwrap().unwrap();
        }
        producer.flush(Duration::from_secs(30)).unwrap();
        println!(
            "{events} records of {} bytes on average in {projection_topic}",
            bytes as u64 / events.max(1)
        );
        high_watermarks(&config, &[&projection_topic]).await.unwrap()
    });
    let total: u64 = ends.values().sum();
    assert_eq!(total, events, "high watermarks {ends:?}");

    let mut group = c.benchmark_group("kafka_projection");
    group.throughput(Throughput::Elements(events));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(60));
    group.bench_function("bare_consume", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let consumer: StreamConsumer = rdkafka::ClientConfig::new()
                    .set("bootstrap.servers", brokers())
                    .set("group.id", "bookshelf-bench-bare")
                    .set("enable.auto.commit", "false")
                    .create()
                    .unwrap();
                let mut assignment = rdkafka::TopicPartitionList::new();
                for partition in 0..3 {
                    assignment
                        .add_partition_offset(&projection_topic, partition, rdkafka::Offset::Beginning)
                        .unwrap();
                }
                consumer.assign(&assignment).unwrap();
                let (mut seen, mut bytes) = (0u64, 0usize);
                while seen < events {
                    let message = consumer.recv().await.unwrap();
                    bytes += message.payload().map_or(0, <[u8]>::len);
                    seen += 1;
                }
                black_box(bytes)
            })
        })
    });
    group.bench_function("projection", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let running = KafkaProjection::<LastRead>::new("last-read", config.clone())
                    .start()
                    .await
                    .unwrap();
                assert!(running.handle().wait_for(&ends).await);
                let books = running.handle().read(LastRead::books);
                running.stop().await.unwrap();
                black_box(books)
            })
        })
    });
    group.finish();

    let mut group = c.benchmark_group("kafka_append");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    let store = runtime.block_on(async {
        KafkaStore::open(
            KafkaConfig::new(brokers(), topic("append"))
                .partitions(3)
                .create_topic(true),
        )
        .await
        .unwrap()
    });
    let event = |n: u64| NewEvent {
        event_id: EventId::new(),
        event_type: "Counted".into(),
        schema_version: 1,
        metadata: Metadata::default(),
        payload: serde_json::value::RawValue::from_string(format!(r#"{{"n":{n}}}"#)).unwrap(),
    };
    group.throughput(Throughput::Elements(200));
    group.bench_function("one_event_per_append", |b| {
        let stream = StreamId::new("counter-single");
        b.iter(|| {
            runtime.block_on(async {
                for n in 0..200 {
                    store
                        .append(&stream, ExpectedVersion::Any, vec![event(n)])
                        .await
                        .unwrap();
                }
            })
        })
    });
    group.bench_function("eight_writers_one_event_each", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let writers: Vec<_> = (0..8)
                    .map(|w| {
                        let store = store.clone();
                        let stream = StreamId::new(format!("counter-w{w}"));
                        tokio::spawn(async move {
                            for n in 0..25 {
                                store
                                    .append(&stream, ExpectedVersion::Any, vec![event(n)])
                                    .await
                                    .unwrap();
                            }
                        })
                    })
                    .collect();
                for writer in writers {
                    writer.await.unwrap();
                }
            })
        })
    });
    group.throughput(Throughput::Elements(2_000));
    group.bench_function("hundred_events_per_append", |b| {
        let stream = StreamId::new("counter-batch");
        b.iter(|| {
            runtime.block_on(async {
                for batch in 0..20 {
                    let events = (0..100).map(|n| event(batch * 100 + n)).collect();
                    store.append(&stream, ExpectedVersion::Any, events).await.unwrap();
                }
            })
        })
    });
    group.finish();
}

/// The partition the store would pick for a stream, so that the bench topic
/// looks like one the store wrote.
fn bookshelf_partition(stream: &str) -> i32 {
    // Kafka's default partitioner over 3 partitions, through the store.
    bookshelf::kafka::partition_for(stream, 3)
}

criterion_group!(benches, kafka);
criterion_main!(benches);
