//! Measures what opening a `KafkaStore` costs, as a process of its own so
//! that its peak memory is its own:
//!
//! ```text
//! kafka_open fill     BROKERS TOPIC EVENTS BOOKS      fill a 3-partition topic with a batching producer
//! kafka_open open     BROKERS TOPIC STATE_FILE        open as the one writer; time until it owns every partition
//! kafka_open takeover BROKERS TOPIC STATE_FILE        follow as a member, then take every partition over
//! ```
//!
//! Each prints one line of `key=value` figures: seconds, the peak resident
//! memory (`VmHWM`) and the resident memory at the end (`VmRSS`), in KiB.
//! `scripts/kafka-open.sh` runs them on a 1,000,000-event topic, and
//! `tests/memory.rs` checks that the peak does not grow with the log.

use std::time::{Duration, Instant};

use bookshelf_core::{Envelope, EventId, EventStore, Metadata, Position, StreamId, Version};
use bookshelf_kafka::{partition_for, KafkaConfig, KafkaStore};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

fn usage() -> ! {
    eprintln!(
        "usage: kafka_open fill BROKERS TOPIC EVENTS BOOKS | open BROKERS TOPIC STATE | takeover BROKERS TOPIC STATE"
    );
    std::process::exit(2)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [mode, brokers, topic, rest @ ..] = args.as_slice() else {
        usage()
    };
    let config = KafkaConfig::new(brokers.as_str(), topic.as_str())
        .partitions(3)
        .create_topic(true);
    let started = Instant::now();
    match (mode.as_str(), rest) {
        ("fill", [events, books]) => {
            let (events, books): (u64, u64) = (events.parse()?, books.parse()?);
            fill(brokers, topic, events, books).await?;
            println!(
                "mode=fill events={events} books={books} seconds={:.2}",
                started.elapsed().as_secs_f64()
            );
        }
        ("open", [state]) => {
            let store = KafkaStore::builder(config)
                .member("open", "")
                .state_file(state)
                .open()
                .await?;
            let seconds = started.elapsed().as_secs_f64();
            let streams = store.stream_version(&StreamId::new("book-0")).await?;
            println!(
                "mode=open seconds={seconds:.2} peak_kib={} rss_kib={} book_0_version={streams}",
                status_kib("VmHWM:"),
                status_kib("VmRSS:")
            );
        }
        ("takeover", [state]) => {
            let (members, follow) = tokio::sync::watch::channel(vec!["someone-else".to_owned()]);
            let store = KafkaStore::builder(config)
                .member("taker", "")
                .members(follow)
                .state_file(state)
                .open()
                .await?;
            while !store.caught_up().0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let followed = started.elapsed().as_secs_f64();
            let moved = Instant::now();
            members.send_replace(vec!["taker".to_owned()]);
            while store.owners().iter().any(|o| !o.mine) {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            println!(
                "mode=takeover follow_seconds={followed:.2} takeover_seconds={:.3} peak_kib={} rss_kib={}",
                moved.elapsed().as_secs_f64(),
                status_kib("VmHWM:"),
                status_kib("VmRSS:")
            );
        }
        _ => usage(),
    }
    Ok(())
}

/// `events` reads of `books` books, as a producer that is not Bookshelf's
/// would write them: batched (`linger.ms` 20), keyed by stream on the
/// stream's partition, versions in order, no claims (epoch 0).
async fn fill(brokers: &str, topic: &str, events: u64, books: u64) -> Result<(), Box<dyn std::error::Error>> {
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "20")
        .set("enable.idempotence", "true")
        .create()?;
    let admin: rdkafka::admin::AdminClient<_> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let new = rdkafka::admin::NewTopic::new(topic, 3, rdkafka::admin::TopicReplication::Fixed(1));
    for result in admin
        .create_topics([&new], &rdkafka::admin::AdminOptions::new())
        .await?
    {
        result.map_err(|(topic, code)| format!("creating {topic}: {code}"))?;
    }
    let mut pending = Vec::new();
    for n in 0..events {
        let book = n % books.max(1);
        let stream = StreamId::for_aggregate("book", &book.to_string());
        let envelope = Envelope {
            event_id: EventId::new(),
            stream_id: stream.clone(),
            version: Version(n / books.max(1) + 1),
            position: Position(0),
            recorded_at: chrono::Utc::now(),
            event_type: "BookRead".into(),
            schema_version: 1,
            metadata: Metadata::default(),
            payload: serde_json::value::RawValue::from_string(format!(
                r#"{{"title":"Book {book}","author":"Author {}","read_at":"2026-11-23T00:00:00Z"}}"#,
                book % 97
            ))?,
        };
        let body = envelope.to_json();
        let mut record = FutureRecord::to(topic)
            .key(stream.as_str())
            .payload(&body)
            .partition(partition_for(stream.as_str(), 3));
        loop {
            match producer.send_result(record) {
                Ok(delivery) => {
                    pending.push(delivery);
                    break;
                }
                Err((_, returned)) => {
                    record = returned;
                    for delivery in pending.drain(..) {
                        delivery.await?.map_err(|(e, _)| e)?;
                    }
                }
            }
        }
        if pending.len() >= 50_000 {
            for delivery in pending.drain(..) {
                delivery.await?.map_err(|(e, _)| e)?;
            }
        }
    }
    for delivery in pending {
        delivery.await?.map_err(|(e, _)| e)?;
    }
    producer.flush(Duration::from_secs(30))?;
    Ok(())
}
