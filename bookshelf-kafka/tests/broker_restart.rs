//! A broker that dies and comes back in the middle of a run loses nothing it
//! acknowledged, and a view over the topic waits for it. This test runs its own tansu (the binary `scripts/test.sh`
//! names in `TANSU_BIN`) with file storage, kills it while a writer appends,
//! and restarts it on the same port and file.

mod common;

use common::{counted, CounterEvent};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bookshelf_core::{Envelope, EventStore, ExpectedVersion, ProjectionRunner, StreamId, Version, View};
use bookshelf_kafka::{KafkaConfig, KafkaLog, KafkaStore};
use bookshelf_testkit::tansu::OwnBroker;

/// Two partitions of `topic` on `broker`, with a delivery timeout longer
/// than the outages here: librdkafka holds and retries what it could not
/// send. (An outage longer than this makes tansu 0.6.0 with sqlite storage
/// panic after the restart, "more or less than one row" in tansu-storage's
/// lite.rs, and stop serving: see the README.)
fn outlasting(broker: &OwnBroker, topic: &str) -> KafkaConfig {
    KafkaConfig::new(broker.address(), topic)
        .partitions(2)
        .create_topic(true)
        .timeout(Duration::from_secs(20))
        .set("message.timeout.ms", "8000")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restarted_midway_loses_nothing_it_acknowledged() {
    let mut broker = OwnBroker::start();
    let config = outlasting(&broker, "restart");
    let store = KafkaStore::open(config.clone()).await.unwrap();

    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let failed = Arc::new(Mutex::new(0u32));
    let writer = {
        let (store, acknowledged, failed) = (store.clone(), Arc::clone(&acknowledged), Arc::clone(&failed));
        tokio::spawn(async move {
            for n in 0..300u64 {
                let stream = StreamId::new(format!("counter-{}", n % 5));
                match store.append(&stream, ExpectedVersion::Any, vec![counted(n)]).await {
                    Ok(_) => acknowledged.lock().unwrap().push(n),
                    Err(_) => *failed.lock().unwrap() += 1,
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let start = Instant::now();
    while acknowledged.lock().unwrap().len() < 100 {
        assert!(start.elapsed() < Duration::from_secs(60), "the writer made no progress");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    broker.kill(); // SIGKILL, mid-run
                   // With the broker away, a read barrier cannot be passed: it says so
                   // within its bound rather than waiting for the broker.
    let began = Instant::now();
    let barrier = store
        .read_barrier(&StreamId::new("counter-0"), Duration::from_millis(700))
        .await;
    assert!(barrier.is_err(), "a barrier passed with the broker down");
    assert!(
        began.elapsed() < Duration::from_secs(2),
        "the barrier took {:?}",
        began.elapsed()
    );
    // The store hears nothing from the broker: its silence grows (what a
    // service's health check reads).
    while store.broker_silence() < Duration::from_millis(1200) {
        assert!(
            began.elapsed() < Duration::from_secs(4),
            "silence {:?}",
            store.broker_silence()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    broker.up();
    writer.await.unwrap();
    let acknowledged = acknowledged.lock().unwrap().clone();
    println!(
        "acknowledged {} appends, {} failed while the broker was down",
        acknowledged.len(),
        failed.lock().unwrap()
    );
    assert!(acknowledged.len() > 100, "the writer goes on after the restart");

    store
        .read_barrier(&StreamId::new("counter-0"), Duration::from_secs(10))
        .await
        .expect("a barrier passes once the broker is back");
    let back = Instant::now();
    while store.broker_silence() > Duration::from_secs(1) {
        assert!(back.elapsed() < Duration::from_secs(10), "the broker answers again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // A fresh store reads back everything that was acknowledged, in order.
    let reopened = KafkaStore::open(config.create_topic(false)).await.unwrap();
    let mut found = Vec::new();
    for s in 0..5 {
        let stream = StreamId::new(format!("counter-{s}"));
        let events = reopened.read_stream(&stream, Version(1)).await.unwrap();
        for (i, event) in events.iter().enumerate() {
            assert_eq!(event.version, Version(i as u64 + 1), "stream {stream} has no holes");
            let n: serde_json::Value = serde_json::from_str(event.payload.get()).unwrap();
            found.push(n["n"].as_u64().unwrap());
        }
    }
    let missing: Vec<u64> = acknowledged.iter().copied().filter(|n| !found.contains(n)).collect();
    assert!(missing.is_empty(), "acknowledged but lost: {missing:?}");
}

/// The `n` of every `Counted` event, in the order applied.
#[derive(Default)]
struct Seen(Vec<u64>);

impl View for Seen {
    type Event = CounterEvent;
    fn apply(&mut self, event: Envelope<CounterEvent>) {
        let CounterEvent::Counted { n } = event.payload;
        self.0.push(n);
    }
}

/// A view over the topic waits out a broker that goes away (here killed and
/// started again): it neither ends nor skips, and applies what comes after
/// the restart, each event once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_view_waits_out_the_broker_restart_and_takes_up_where_it_was() {
    let mut broker = OwnBroker::start();
    let config = outlasting(&broker, "restart-view");
    let store = KafkaStore::open(config.clone()).await.unwrap();
    let append = |range: std::ops::Range<u64>| {
        let store = store.clone();
        async move {
            for n in range {
                let stream = StreamId::new(format!("counter-{}", n % 5));
                store
                    .append(&stream, ExpectedVersion::Any, vec![counted(n)])
                    .await
                    .expect("appended");
            }
        }
    };
    append(0..50).await;
    let view = ProjectionRunner::<Seen, _>::new("seen", KafkaLog::new(config)).start();
    let seen = |n: usize| {
        let view = &view;
        async move {
            let start = Instant::now();
            while view.read(|v| v.0.len()) < n {
                assert!(start.elapsed() < Duration::from_secs(30), "the view took {n} events");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    seen(50).await;

    broker.kill();
    // Long enough for the client to find every broker down.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(10), view.ended())
            .await
            .is_err(),
        "the view ended while the broker was away"
    );
    broker.up();
    append(50..100).await;
    seen(100).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut applied = view.read(|v| v.0.clone());
    applied.sort_unstable();
    assert_eq!(applied, (0..100).collect::<Vec<_>>(), "each event once");
    view.stop().await.expect("the view stops cleanly");
}
