//! Reading from inside record batches, on a topic written by a plain
//! producer that batches (hundreds of records per batch), against tansu
//! (from `scripts/test.sh`), which answers a fetch that starts inside a
//! batch with the batches after it. Every reader must read around it: the
//! process runner resumed from checkpoints inside batches, and the store
//! catching up from a local state that stopped inside a batch.

mod common;

use std::time::{Duration, Instant};

use bookshelf_core::process::ProcessRunner;
use bookshelf_core::{EventStore, InMemoryViewStore, StreamId, Version, ViewStore};
use bookshelf_kafka::{high_watermarks, KafkaConfig, KafkaLog, KafkaStore};
use common::{brokers, fill_in_batches, topic, Nowhere, Tally};

fn config(topic: &str) -> KafkaConfig {
    KafkaConfig::new(brokers(), topic).partitions(3)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_runner_stopped_inside_record_batches_resumes_without_skipping() {
    let topic = topic("runner-batches");
    let records = 3_000;
    let sum = fill_in_batches(&topic, records).await;
    let ends = high_watermarks(&config(&topic), &[&topic]).await.unwrap();
    assert_eq!(ends.values().sum::<u64>(), records);
    let saved = InMemoryViewStore::new();
    // The records before the saved checkpoint, summed over the partitions.
    let at = || async {
        let Some(checkpoint) = saved.load().await.unwrap() else {
            return 0;
        };
        checkpoint
            .offsets
            .iter()
            .filter(|(key, _)| !key.contains(':'))
            .map(|(_, next)| next)
            .sum::<u64>()
    };
    let mut restarts = 0;
    loop {
        let before = at().await;
        let running = ProcessRunner::<Tally, _, _>::new("tally", KafkaLog::new(config(&topic)), Nowhere)
            .persist_to(saved.clone())
            .start();
        // Stop once it has taken a few hundred more records: the runner
        // saves after every batch, so the checkpoints fall inside the
        // producer's batches.
        let taken = |running: &bookshelf_core::Running<bookshelf_core::ViewState<Tally>>| {
            running.progress().values().map(|p| p.position).sum::<u64>()
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while taken(&running) < (before + 400).min(records) {
            assert!(
                Instant::now() < deadline,
                "the runner makes progress after restart {restarts}"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        running.stop().await.unwrap();
        if at().await >= records {
            break;
        }
        restarts += 1;
        assert!(restarts < 200, "the runner reaches the end");
    }
    let running = ProcessRunner::<Tally, _, _>::new("tally", KafkaLog::new(config(&topic)), Nowhere)
        .persist_to(saved.clone())
        .start();
    running.wait_for(&ends).await.unwrap();
    let progress = running.progress();
    assert_eq!(progress.len(), 3, "{progress:?}");
    assert!(progress.values().all(|p| p.lag() == Some(0)), "{progress:?}");
    running.read(|tally| tally.assert_one_fold(records, sum, &format!("after {restarts} restarts")));
    running.stop().await.unwrap();
    assert!(
        restarts >= 3,
        "the test stopped the runner inside batches only {restarts} times"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_catching_up_from_inside_a_record_batch_loads_every_stream_whole() {
    let topic = topic("store-batches");
    let records = 3_000;
    fill_in_batches(&topic, records).await;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.sqlite");
    // A store that only follows (it is not among the members, so it never
    // claims), with its state in a file.
    let follower = || {
        KafkaStore::builder(config(&topic))
            .members(tokio::sync::watch::channel(vec!["somebody-else".to_owned()]).1)
            .state_file(&state)
            .open()
    };
    let caught_up = |store: KafkaStore| async move {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !store.caught_up().0 {
            assert!(Instant::now() < deadline, "the store catches up");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        store
    };
    let store = caught_up(follower().await.unwrap()).await;
    drop(store);
    // As if the follower had died midway: each partition's saved position
    // moved back into the middle of a batch, what followed forgotten.
    {
        let db = rusqlite::Connection::open(&state).unwrap();
        for (partition, back) in [(0, 137), (1, 301), (2, 59)] {
            db.execute(
                "UPDATE partitions SET next_offset = next_offset - ?2 WHERE partition = ?1",
                [partition, back],
            )
            .unwrap();
            db.execute(
                "DELETE FROM events WHERE partition = ?1 AND offset >= \
                 (SELECT next_offset FROM partitions WHERE partition = ?1)",
                [partition],
            )
            .unwrap();
        }
    }
    let store = caught_up(follower().await.unwrap()).await;
    for n in 0..30 {
        let stream = StreamId::new(format!("counter-{n}"));
        let events = store.read_stream(&stream, Version(1)).await.unwrap();
        let versions: Vec<u64> = events.iter().map(|e| e.version.0).collect();
        assert_eq!(versions, (1..=records / 30).collect::<Vec<_>>(), "{stream}");
        // A load from a version inside the stream starts there.
        let tail = store.read_stream(&stream, Version(50)).await.unwrap();
        assert_eq!(tail.first().map(|e| e.version), Some(Version(50)), "{stream}");
    }
}
