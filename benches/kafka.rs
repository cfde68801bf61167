//! Kafka benches, against the broker in `KAFKA_BROKERS` (scripts/test.sh and
//! scripts/bench-kafka.sh start tansu):
//!
//! * `kafka_projection/bare_consume`: a plain rdkafka loop that reads every
//!   record of the topic and touches its bytes, the ceiling;
//! * `kafka_projection/projection`: the "last read books" view projected from
//!   the same records by the projection runner over a `KafkaLog` (decode, fold, offsets);
//! * `kafka_append/*`: `KafkaStore::append` with acknowledgement: one event
//!   per append, 100 events per append, and one-event appends from 8 writers
//!   on 8 streams at once.
//! * `kafka_commands/*`: "mark read" commands through a `Repository` from 64
//!   concurrent clients, each on its own book, on a store that pipelines
//!   appends (the default) and on one that sends one append at a time per
//!   partition (`max_in_flight(1)`, the path before pipelining); after the
//!   criterion run, one more pass of each prints p50/p99/max latency.
//!
//! 1,000,000 events unless `BOOKSHELF_BENCH_EVENTS` says otherwise.

use bookshelf_services::books;
mod support;

use support::events;

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::Duration;

use books::{Book, BookCommand, BookEvent, Clock, LastRead};
use bookshelf::kafka::{high_watermarks, KafkaConfig, KafkaLog, KafkaStore};
use bookshelf::{
    codec, Envelope, EventId, EventStore, ExpectedVersion, Metadata, NewEvent, Position, Repository, StreamId, Version,
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
        // A topic as a batching producer other than Bookshelf's fills it:
        // no claims, so its records are events of epoch 0.
        create_topic(&projection_topic, 3).await;
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
                let running =
                    bookshelf::ProjectionRunner::<LastRead, _>::new("last-read", KafkaLog::new(config.clone()))
                        .unknown_events(bookshelf::UnknownEvents::DeadLetter)
                        .start();
                running.wait_for(&ends).await.unwrap();
                let books = running.read(LastRead::books);
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
    commands(c, &runtime);
}

/// How many clients send commands at once, and how many each sends per pass.
const CLIENTS: usize = 64;
const COMMANDS_PER_CLIENT: usize = 20;
/// How many passes the latency report after the criterion run covers.
const REPORT_PASSES: usize = 5;

/// A repository over a new 3-partition topic whose store lets `in_flight`
/// appends per partition wait for Kafka at once, with one book per client.
fn command_store(runtime: &tokio::runtime::Runtime, in_flight: usize) -> (Repository<Book, KafkaStore>, Vec<String>) {
    runtime.block_on(async {
        let store = KafkaStore::builder(
            KafkaConfig::new(brokers(), topic("commands"))
                .partitions(3)
                .create_topic(true),
        )
        .max_in_flight(in_flight)
        .open()
        .await
        .unwrap();
        let books = Repository::<Book, _>::new(store, Clock::system()).with_cache(10_000);
        let mut ids = Vec::new();
        for n in 0..CLIENTS {
            let id = format!("bench-{n}");
            let add = BookCommand::Add {
                title: format!("Book {n}"),
                author: "Anonymous".into(),
                isbn: "9780441013593".into(),
            };
            books.execute(&id, &add, Metadata::default()).await.unwrap();
            ids.push(id);
        }
        (books, ids)
    })
}

/// One pass: `CLIENTS * COMMANDS_PER_CLIENT` operations from `CLIENTS`
/// concurrent clients, each taking the next as soon as its last one is done
/// (so a pass lasts as long as the work, not as the slowest client);
/// `client(n)` makes client n's operation. Returns each one's latency.
async fn timed_pass<Op, Fut>(client: impl Fn(usize) -> Op) -> Vec<Duration>
where
    Op: FnMut() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let left = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(CLIENTS * COMMANDS_PER_CLIENT));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|n| {
            let (mut op, left) = (client(n), std::sync::Arc::clone(&left));
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(COMMANDS_PER_CLIENT);
                while take_one(&left) {
                    let started = std::time::Instant::now();
                    op().await;
                    latencies.push(started.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut all = Vec::new();
    for client in clients {
        all.extend(client.await.unwrap());
    }
    all
}

/// A pass of "mark read" commands, each client on its own book.
async fn command_pass(books: &std::sync::Arc<Repository<Book, KafkaStore>>, ids: &[String]) -> Vec<Duration> {
    timed_pass(|n| {
        let (books, id) = (std::sync::Arc::clone(books), ids[n].clone());
        move || {
            let (books, id) = (std::sync::Arc::clone(&books), id.clone());
            async move {
                books
                    .execute(&id, &BookCommand::MarkRead, Metadata::default())
                    .await
                    .unwrap();
            }
        }
    })
    .await
}

fn commands(c: &mut Criterion, runtime: &tokio::runtime::Runtime) {
    let variants = [("pipelined", 1024), ("one_at_a_time", 1)];
    let stores: Vec<_> = variants
        .iter()
        .map(|&(name, in_flight)| {
            let (books, ids) = command_store(runtime, in_flight);
            (name, std::sync::Arc::new(books), ids)
        })
        .collect();
    let bare_topic = topic("bare-produce");
    runtime.block_on(create_topic(&bare_topic, 3));
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("enable.idempotence", "true")
        .set("linger.ms", "1")
        .create()
        .unwrap();
    // Latency first, on topics still small: tansu 0.6's in-memory engine
    // acknowledges more slowly as a partition grows (about 3 ms per record at
    // 10,000 records a partition, 15 ms at 150,000), which the criterion
    // run that follows would fold into these figures.
    for (name, books, ids) in &stores {
        let started = std::time::Instant::now();
        let mut latencies = runtime.block_on(async {
            let mut all = Vec::new();
            for _ in 0..REPORT_PASSES {
                all.extend(command_pass(books, ids).await);
            }
            all
        });
        report(name, &mut latencies, started.elapsed());
    }
    let started = std::time::Instant::now();
    let mut latencies = runtime.block_on(async {
        let mut all = Vec::new();
        for _ in 0..REPORT_PASSES {
            all.extend(bare_pass(&producer, &bare_topic).await);
        }
        all
    });
    report("bare_produce", &mut latencies, started.elapsed());

    let mut group = c.benchmark_group("kafka_commands");
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(5));
    group.throughput(Throughput::Elements((CLIENTS * COMMANDS_PER_CLIENT) as u64));
    for (name, books, ids) in &stores {
        group.bench_function(*name, |b| b.iter(|| runtime.block_on(command_pass(books, ids))));
    }
    group.bench_function("bare_produce", |b| {
        b.iter(|| runtime.block_on(bare_pass(&producer, &bare_topic)))
    });
    group.finish();
}

/// Takes one command of a pass's work, if any is left.
fn take_one(left: &std::sync::atomic::AtomicUsize) -> bool {
    use std::sync::atomic::Ordering;
    left.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
        .is_ok()
}

fn report(name: &str, latencies: &mut [Duration], took: Duration) {
    latencies.sort_unstable();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e3;
    println!(
        "kafka_commands/{name}: {} from {CLIENTS} clients, {:.0}/s, p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        latencies.len(),
        latencies.len() as f64 / took.as_secs_f64(),
        at(0.5),
        at(0.99),
        at(1.0)
    );
}

/// The broker's own ceiling for the same work: `CLIENTS` clients each
/// sending one ~230-byte record and awaiting its acknowledgement, over and
/// over, with a plain producer (no read-back, no version check).
async fn bare_pass(producer: &FutureProducer, topic: &str) -> Vec<Duration> {
    timed_pass(|n| {
        let (producer, topic) = (producer.clone(), topic.to_owned());
        let (key, body) = envelope(n as u64);
        let partition = bookshelf_partition(&key);
        move || {
            let (producer, topic, key, body) = (producer.clone(), topic.clone(), key.clone(), body.clone());
            async move {
                let record = FutureRecord::to(&topic).key(&key).payload(&body).partition(partition);
                producer.send(record, Duration::from_secs(30)).await.unwrap();
            }
        }
    })
    .await
}

async fn create_topic(name: &str, partitions: i32) {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    let admin: AdminClient<_> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap();
    let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    for result in admin.create_topics([&topic], &AdminOptions::new()).await.unwrap() {
        result.unwrap();
    }
}

/// The partition the store would pick for a stream, so that the bench topic
/// looks like one the store wrote.
fn bookshelf_partition(stream: &str) -> i32 {
    // Kafka's default partitioner over 3 partitions, through the store.
    bookshelf::kafka::partition_for(stream, 3)
}

criterion_group!(benches, kafka);
criterion_main!(benches);
