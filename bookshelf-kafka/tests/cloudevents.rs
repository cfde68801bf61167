//! CloudEvents on Kafka (tansu, from `scripts/test.sh`), with a client that
//! is not Bookshelf's: confluent-kafka from PyPI (`tests/py/`), which
//! `scripts/test.sh` installs and names in `BOOKSHELF_PYTHON`.
//!
//! * Every record the store writes carries the CloudEvents binary-mode
//!   headers, mapped from its envelope.
//! * CloudEvents that the other client writes, in binary and structured
//!   mode, are events for a view and a process runner when their type is
//!   one they know; data that is not JSON is set aside; the store keeps
//!   them in no stream and goes on writing.

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use bookshelf_core::process::ProcessRunner;
use bookshelf_core::{EventStore, ExpectedVersion, StreamId, UnknownEvents, Version, View};
use bookshelf_kafka::{high_watermarks, KafkaConfig, KafkaLog, KafkaStore};
use common::{brokers, counted, dead_letters, projection, topic, Nowhere, Tally};

fn python(command: &str, topic: &str) -> String {
    let python = std::env::var("BOOKSHELF_PYTHON").unwrap_or_else(|_| {
        panic!("this test needs confluent-kafka from PyPI: run scripts/test.sh, which installs it, or set BOOKSHELF_PYTHON")
    });
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/py/cloudevents_client.py");
    let output = Command::new(python)
        .args([script, command, &brokers(), topic])
        .output()
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "the other client failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// A view of the tally, as a view.
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
struct Viewed(Tally);

impl View for Viewed {
    type Event = common::CounterEvent;
    fn apply(&mut self, event: bookshelf_core::Envelope<common::CounterEvent>) {
        self.0.take(&event);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudevents_go_both_ways() {
    let topic = topic("cloudevents");
    let config = KafkaConfig::new(brokers(), topic.as_str())
        .partitions(3)
        .create_topic(true);
    let store = KafkaStore::open(config.clone()).await.unwrap();
    for n in 1..=3 {
        let stream = StreamId::new(format!("counter-{n}"));
        store
            .append(&stream, ExpectedVersion::NoStream, vec![counted(n)])
            .await
            .unwrap();
    }
    assert_eq!(python("produce", &topic).trim(), "produced 5");
    // The store goes on writing after the other producer's records.
    store
        .append(
            &StreamId::new("counter-1"),
            ExpectedVersion::Exact(Version(1)),
            vec![counted(4)],
        )
        .await
        .unwrap();

    // What Bookshelf wrote, read by the other client.
    let written: Vec<BTreeMap<String, String>> = python("inspect", &topic)
        .lines()
        .map(|line| serde_json::from_str(line).expect("a JSON line"))
        .collect();
    assert_eq!(written.len(), 4, "{written:?}");
    for headers in &written {
        assert_eq!(headers["ce_specversion"], "1.0");
        assert_eq!(headers["ce_id"], headers["bookshelf.event_id"]);
        assert_eq!(headers["ce_type"], headers["bookshelf.event_type"]);
        assert_eq!(headers["ce_subject"], headers["bookshelf.stream_id"]);
        assert_eq!(headers["ce_source"], format!("/bookshelf/{topic}"));
        assert_eq!(headers["content-type"], "application/json");
        assert!(
            chrono::DateTime::parse_from_rfc3339(&headers["ce_time"]).is_ok(),
            "{headers:?}"
        );
    }

    // A view takes both kinds; the unknown type is skipped, the text set aside.
    let ends = high_watermarks(&config, &[&topic]).await.unwrap();
    let view = projection::<Viewed>("tally", &config.clone())
        .await
        .unknown_events(UnknownEvents::Skip)
        .start();
    view.wait_for(&ends).await.unwrap();
    let tally = view.handle().read(|v| v.0.clone());
    view.stop().await.unwrap();
    assert_eq!((tally.count, tally.sum), (7, 1 + 2 + 3 + 4 + 10 + 20 + 30), "{tally:?}");
    assert_eq!(tally.seen["counter-1"], [1, 2]);
    assert_eq!(tally.seen["counter-x"], [0], "a foreign event has no stream version");
    assert_eq!(tally.seen["counter-y"], [0]);
    assert_eq!(tally.seen["cloudevents"], [0], "no subject and no key");
    let letters = dead_letters(&topic, 1).await;
    assert!(letters[0].1.contains("text/plain"), "{letters:?}");

    // A process runner over the topic sees the same events.
    let runner = ProcessRunner::<Tally, _, _>::new("tally", KafkaLog::new(config.clone()), Nowhere).start();
    runner.wait_for(&ends).await.unwrap();
    runner.read(|t| assert_eq!((t.count, t.sum), (tally.count, tally.sum)));
    runner.stop().await.unwrap();

    // The store keeps them in no stream.
    let follower = KafkaStore::builder(config)
        .members(tokio::sync::watch::channel(vec!["nobody".to_owned()]).1)
        .open()
        .await
        .unwrap();
    let start = Instant::now();
    while !follower.caught_up().0 {
        assert!(start.elapsed() < Duration::from_secs(30));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(follower
        .read_stream(&StreamId::new("counter-x"), Version(1))
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        follower.stream_version(&StreamId::new("counter-1")).await.unwrap(),
        Version(2)
    );
}
