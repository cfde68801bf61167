//! The event store's concurrency and subscription guarantees, on the
//! in-memory store.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bookshelf_core::{
    EventStore, ExpectedVersion, InMemoryStore, Position, StoreError, StreamId, Subscription, Version,
};
use common::deposit;
use tokio::sync::Barrier;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn conflicting_appends_exactly_one_wins() {
    let store = InMemoryStore::new();
    for round in 0..200u64 {
        let stream = StreamId::new(format!("account-{round}"));
        let writers = 4;
        let barrier = Arc::new(Barrier::new(writers));
        let mut tasks = Vec::new();
        for writer in 0..writers {
            let (store, stream, barrier) = (store.clone(), stream.clone(), Arc::clone(&barrier));
            tasks.push(tokio::spawn(async move {
                barrier.wait().await;
                store
                    .append(
                        &stream,
                        ExpectedVersion::NoStream,
                        vec![deposit(writer as i64), deposit(1)],
                    )
                    .await
            }));
        }
        let mut wins = 0;
        let mut conflicts = 0;
        for task in tasks {
            match task.await.unwrap() {
                Ok(outcome) => {
                    wins += 1;
                    assert_eq!(outcome.version, Version(2));
                }
                Err(StoreError::Conflict { actual, expected, .. }) => {
                    conflicts += 1;
                    assert_eq!(actual, Version(2));
                    assert_eq!(expected, ExpectedVersion::NoStream);
                }
                Err(other) => panic!("unexpected error: {other}"),
            }
        }
        assert_eq!((wins, conflicts), (1, writers - 1), "round {round}");
        // The winner's two events are both there and nothing of the losers.
        let events = store.read_stream(&stream, Version(1)).await.unwrap();
        assert_eq!(events.len(), 2);
    }
}

/// Writers append to several streams while a subscriber that started in the
/// middle reads: it must see every event from its start exactly once, in
/// position order, and each stream's versions in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn subscription_hands_over_from_catch_up_to_live_without_gap_or_repeat() {
    let store = InMemoryStore::new();
    let streams = 8;
    let per_writer: usize = 500;
    // Something to catch up on first.
    for n in 0..100 {
        store
            .append(
                &StreamId::new(format!("account-{}", n % streams)),
                ExpectedVersion::Any,
                vec![deposit(1)],
            )
            .await
            .unwrap();
    }
    let start = Position(37);
    let mut subscription = store.subscribe(start).await.unwrap();

    let mut writers = Vec::new();
    for w in 0..streams {
        let store = store.clone();
        writers.push(tokio::spawn(async move {
            let stream = StreamId::new(format!("account-{w}"));
            for i in 0..per_writer {
                let batch = if i % 7 == 0 {
                    vec![deposit(1), deposit(2)]
                } else {
                    vec![deposit(1)]
                };
                store.append(&stream, ExpectedVersion::Any, batch).await.unwrap();
                if i % 50 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        }));
    }

    let reader = tokio::spawn(async move {
        let mut seen = Vec::new();
        let mut batch = Vec::new();
        let mut last_version: HashMap<StreamId, Version> = HashMap::new();
        let expected_total = 100 + streams * (per_writer + per_writer.div_ceil(7)) - 37;
        while seen.len() < expected_total {
            subscription.next_batch(&mut batch, 64).await.unwrap();
            for event in &batch {
                let last = last_version.entry(event.stream_id.clone()).or_default();
                assert!(
                    event.version > *last,
                    "stream {} went from {last} to {}",
                    event.stream_id,
                    event.version
                );
                *last = event.version;
                seen.push(event.position.0);
            }
        }
        seen
    });
    for writer in writers {
        writer.await.unwrap();
    }
    let seen = tokio::time::timeout(Duration::from_secs(30), reader)
        .await
        .unwrap()
        .unwrap();
    let head = store.head().await.unwrap().0;
    assert_eq!(
        seen,
        (37..head).collect::<Vec<_>>(),
        "every event from the start, once, in order"
    );
}

#[tokio::test]
async fn a_slow_subscriber_neither_blocks_appends_nor_buffers_them() {
    let store = InMemoryStore::new();
    let mut subscription = store.subscribe(Position::START).await.unwrap();
    let stream = StreamId::new("account-1");
    // The subscriber reads nothing while 10,000 events are appended: no append waits.
    tokio::time::timeout(Duration::from_secs(10), async {
        for _ in 0..10_000 {
            store
                .append(&stream, ExpectedVersion::Any, vec![deposit(1)])
                .await
                .unwrap();
        }
    })
    .await
    .expect("appends never wait for subscribers");
    let mut batch = Vec::new();
    subscription.next_batch(&mut batch, 100).await.unwrap();
    assert_eq!(batch.first().map(|e| e.position), Some(Position(0)));
    assert_eq!(batch.len(), 100);
    assert_eq!(subscription.position(), Position(100));
}
