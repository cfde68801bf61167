//! Kafka projections against a real broker (tansu, from `scripts/test.sh`):
//! poison records, resuming from saved offsets, and a projection process
//! killed in the middle of a topic.

mod common;

use common::{brokers, counted, dead_letters, fill_in_batches, projection, topic, CounterEvent, Tally};
use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bookshelf_core::{Envelope, EventStore, ExpectedVersion, InMemoryViewStore, StreamId, View};
use bookshelf_kafka::{headers, high_watermarks, KafkaConfig, KafkaStore};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

fn config(topic: &str) -> KafkaConfig {
    KafkaConfig::new(brokers(), topic).partitions(3).create_topic(true)
}

/// Appends `Counted { n }` for n in `range`, over 12 streams; returns the sum.
async fn fill(store: &KafkaStore, range: std::ops::Range<u64>) -> u64 {
    for n in range.clone() {
        let stream = StreamId::new(format!("counter-{}", n % 12));
        store
            .append(&stream, ExpectedVersion::Any, vec![counted(n)])
            .await
            .unwrap();
    }
    range.sum()
}

impl View for Tally {
    type Event = CounterEvent;
    fn apply(&mut self, event: Envelope<CounterEvent>) {
        self.take(&event);
    }
}

#[tokio::test]
async fn poison_records_go_to_the_dead_letter_topic_and_the_projection_goes_on() {
    let topic = topic("poison");
    let store = KafkaStore::open(config(&topic)).await.unwrap();
    let good = fill(&store, 0..30).await;
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .unwrap();
    let poison: [(&str, &[u8]); 4] = [
        ("counter-1", b"not json at all"),
        ("counter-2", br#"{"event_id":1}"#),
        ("counter-3", &[0xff, 0xfe]),
        (
            "counter-4",
            br#"{"event_id":"6f1c2f3e-7d0a-4a5b-9a55-0c7f2d3a4b5c","stream_id":"counter-4","version":99,
               "position":0,"recorded_at":"2026-11-22T17:00:00Z","event_type":"Exploded","schema_version":1,"payload":{}}"#,
        ),
    ];
    for (key, body) in poison {
        // On the key's own partition, under the current epoch: records that
        // pass the log's rule and fail only at decoding.
        let stream = StreamId::new(key);
        let epoch = store
            .owner_of(&stream)
            .expect("the one writer claimed every partition")
            .epoch;
        let headers = OwnedHeaders::new().insert(Header {
            key: headers::EPOCH,
            value: Some(epoch.to_string().as_bytes()),
        });
        let record = FutureRecord::to(&topic)
            .key(key)
            .payload(body)
            .partition(store.partition_of(&stream))
            .headers(headers);
        producer.send(record, Duration::from_secs(10)).await.unwrap();
    }
    let good = good + fill(&store, 30..40).await;

    let running = projection::<Tally>("tally", &config(&topic))
        .await
        .persist_to(InMemoryViewStore::new())
        .start();
    let ends = high_watermarks(&config(&topic), &[&topic]).await.unwrap();
    let reached = tokio::time::timeout(Duration::from_secs(30), running.wait_for(&ends)).await;
    reached
        .expect("the projection reaches the end despite poison, within 30 s")
        .expect("the projection still runs");
    running.handle().read(|tally| {
        assert_eq!(tally.count, 40);
        assert_eq!(tally.sum, good);
    });
    running.stop().await.unwrap();

    let mut reasons = BTreeMap::new();
    for (key, reason, source, projection) in dead_letters(&topic, 4).await {
        assert!(source.starts_with(&format!("{topic}/")));
        assert_eq!(projection, "tally");
        reasons.insert(key, reason);
    }
    assert!(reasons["counter-1"].contains("not an event envelope"), "{reasons:?}");
    assert!(reasons["counter-3"].contains("UTF-8"), "{reasons:?}");
    assert!(reasons["counter-4"].contains("unknown event type"), "{reasons:?}");
}

#[tokio::test]
async fn a_restarted_projection_resumes_from_its_saved_offsets() {
    let topic = topic("resume");
    let store = KafkaStore::open(config(&topic)).await.unwrap();
    let mut expected = fill(&store, 0..60).await;
    let saved = InMemoryViewStore::new();
    let start = || async {
        projection::<Tally>("tally", &config(&topic))
            .await
            .persist_to(saved.clone())
            .save_every(7)
            .start()
    };
    let running = start().await;
    let ends = high_watermarks(&config(&topic), &[&topic]).await.unwrap();
    running.wait_for(&ends).await.unwrap();
    running.stop().await.unwrap();

    expected += fill(&store, 60..100).await;
    let running = start().await;
    let ends = high_watermarks(&config(&topic), &[&topic]).await.unwrap();
    tokio::time::timeout(Duration::from_secs(30), running.wait_for(&ends))
        .await
        .expect("caught up within 30 s")
        .expect("the projection still runs");
    running.handle().read(|tally| {
        tally.assert_one_fold(100, expected, "after a restart");
    });
    running.stop().await.unwrap();

    // A rebuild replays everything into a fresh view.
    let rebuilt = projection::<Tally>("tally", &config(&topic))
        .await
        .persist_to(saved.clone())
        .rebuild()
        .start();
    rebuilt.wait_for(&ends).await.unwrap();
    assert_eq!(rebuilt.handle().read(|t| (t.count, t.sum)), (100, expected));
    rebuilt.stop().await.unwrap();
}

/// The projector example, as a process of its own.
fn projector(topic: &str, state: &Path, pace_micros: u64) -> Child {
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .and_then(|d| d.parent())
        .unwrap()
        .join("examples")
        .join("kafka_projector");
    assert!(
        bin.exists(),
        "{} is missing: build the examples first (scripts/test.sh does)",
        bin.display()
    );
    Command::new(bin)
        .args([
            brokers().as_str(),
            topic,
            state.to_str().unwrap(),
            &pace_micros.to_string(),
        ])
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

fn saved_tally(state: &Path) -> Option<serde_json::Value> {
    let text = std::fs::read_to_string(state).ok()?;
    let stored: serde_json::Value = serde_json::from_str(&text).ok()?;
    Some(stored["state"].clone())
}

#[tokio::test]
async fn a_projection_process_killed_midway_ends_with_every_event_applied_once() {
    let topic = topic("kill");
    let store = KafkaStore::open(config(&topic)).await.unwrap();
    let events = 1_200;
    let sum = fill(&store, 0..events).await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("tally.json");

    // Kill it three times, each time further into the topic.
    for (round, at_least) in [(1, 150), (2, 500), (3, 850)] {
        let mut child = projector(&topic, &state, 1_000);
        let start = Instant::now();
        loop {
            let count = saved_tally(&state).and_then(|t| t["count"].as_u64()).unwrap_or(0);
            assert!(count < events, "round {round}: finished before it could be killed");
            if count >= at_least {
                break;
            }
            assert!(start.elapsed() < Duration::from_secs(60), "round {round}: no progress");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        child.kill().unwrap(); // SIGKILL: no final save
        child.wait().unwrap();
    }

    let mut child = projector(&topic, &state, 0);
    let start = Instant::now();
    let tally = loop {
        if let Some(tally) = saved_tally(&state).filter(|t| t["count"].as_u64() >= Some(events)) {
            break tally;
        }
        assert!(start.elapsed() < Duration::from_secs(60), "the last run did not finish");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    assert!(
        child.wait().unwrap().success(),
        "the projector stops cleanly on SIGTERM"
    );

    assert_eq!(tally["count"], events, "every event once: none lost, none twice");
    assert_eq!(tally["sum"], sum);
    assert_eq!(tally["out_of_order"], 0);
}

/// Whether the offsets saved in `saved` reach `ends`.
async fn running_reached(saved: &InMemoryViewStore, ends: &BTreeMap<String, u64>) -> bool {
    use bookshelf_core::ViewStore;
    let Some(view) = saved.load().await.unwrap() else {
        return false;
    };
    ends.iter()
        .all(|(key, end)| view.offsets.get(key).is_some_and(|at| at >= end))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projection_stopped_inside_record_batches_resumes_without_skipping() {
    // Checkpoints every 7 records and restarts after every few hundred fall
    // inside the producer's batches; tansu answers a fetch from inside a
    // batch with the next batch, which the reader must read around.
    let topic = topic("batches");
    let records = 3_000;
    let sum = fill_in_batches(&topic, records).await;
    let ends = high_watermarks(&config(&topic), &[&topic]).await.unwrap();
    assert_eq!(ends.values().sum::<u64>(), records);
    let saved = InMemoryViewStore::new();
    let mut restarts = 0;
    loop {
        let running = projection::<Tally>("tally", &config(&topic))
            .await
            .persist_to(saved.clone())
            .save_every(7)
            .batch_size(13)
            .start();
        // Stop once it has taken a few hundred more records (or reached the end).
        let taken = || running.progress().values().map(|p| p.position).sum::<u64>();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while running.checkpoint().is_none() {
            assert!(std::time::Instant::now() < deadline, "the projection restores its view");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let before = taken();
        while taken() < (before + 500).min(records) {
            assert!(
                std::time::Instant::now() < deadline,
                "the projection makes progress after restart {restarts}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        running.stop().await.unwrap();
        if running_reached(&saved, &ends).await {
            break;
        }
        restarts += 1;
        assert!(restarts < 200, "the projection reaches the end");
    }
    let running = projection::<Tally>("tally", &config(&topic))
        .await
        .persist_to(saved.clone())
        .start();
    running.wait_for(&ends).await.unwrap();
    let progress = running.handle().progress();
    assert_eq!(progress.len(), 3, "{progress:?}");
    assert!(progress.values().all(|p| p.lag() == Some(0)), "{progress:?}");
    running.handle().read(|tally| {
        tally.assert_one_fold(records, sum, &format!("after {restarts} restarts"));
    });
    running.stop().await.unwrap();
    assert!(
        restarts >= 3,
        "the test stopped the projection midway several times ({restarts})"
    );
}
