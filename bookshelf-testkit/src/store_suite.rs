//! The behaviour every event store must have. A store's own tests run all
//! of it with [`store_suite!`](macro@crate::store_suite): the in-memory store in
//! `bookshelf-core`, the SQLite store in `bookshelf-sqlite`, the PostgreSQL
//! store in `bookshelf-postgres`.

#![allow(missing_docs)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bookshelf_core::{
    EventStore, ExpectedVersion, Metadata, Position, Snapshot, SnapshotStore, StoreError, StreamId, Subscription,
    Version,
};
use tokio::sync::Barrier;

use crate::accounts::{deposit, raw_event};

pub async fn appends_assign_versions_and_positions_atomically<S: EventStore>(store: S) {
    let (a, b) = (StreamId::new("a-1"), StreamId::new("b-1"));
    let out = store
        .append(&a, ExpectedVersion::NoStream, vec![deposit(1), deposit(2)])
        .await
        .unwrap();
    assert_eq!(out.version, Version(2));
    assert_eq!((out.first_position, out.last_position), (Position(0), Position(1)));
    let out = store.append(&b, ExpectedVersion::Any, vec![deposit(3)]).await.unwrap();
    assert_eq!((out.version, out.first_position), (Version(1), Position(2)));
    let out = store
        .append(&a, ExpectedVersion::Exact(Version(2)), vec![deposit(4)])
        .await
        .unwrap();
    assert_eq!((out.version, out.first_position), (Version(3), Position(3)));

    let read = store.read_stream(&a, Version(2)).await.unwrap();
    assert_eq!(read.iter().map(|e| e.version.0).collect::<Vec<_>>(), vec![2, 3]);
    assert_eq!(read.iter().map(|e| e.position.0).collect::<Vec<_>>(), vec![1, 3]);
    assert_eq!(read[1].payload.get(), r#"{"amount":4}"#);
    assert_eq!(read[1].stream_id, a);
    assert_eq!(store.stream_version(&a).await.unwrap(), Version(3));
    assert_eq!(store.stream_version(&StreamId::new("c-1")).await.unwrap(), Version(0));
    assert_eq!(store.head().await.unwrap(), Position(4));
}

pub async fn streams_are_listed_with_their_versions_in_order<S: EventStore>(store: S) {
    assert!(store.streams().await.unwrap().is_empty());
    for (stream, events) in [("b-2", 2), ("a-10", 1), ("a-9", 3), ("b-2", 1)] {
        let batch = (0..events).map(deposit).collect();
        store
            .append(&StreamId::new(stream), ExpectedVersion::Any, batch)
            .await
            .unwrap();
    }
    let listed: Vec<(String, u64)> = store
        .streams()
        .await
        .unwrap()
        .into_iter()
        .map(|(stream, version)| (stream.as_str().to_owned(), version.0))
        .collect();
    let expected = [("a-10", 1), ("a-9", 3), ("b-2", 3)].map(|(s, v)| (s.to_owned(), v));
    assert_eq!(listed, expected);
}

pub async fn a_failed_append_stores_nothing<S: EventStore>(store: S) {
    let a = StreamId::new("a-1");
    let err = store
        .append(&a, ExpectedVersion::Exact(Version(1)), vec![deposit(1), deposit(2)])
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Conflict { actual: Version(0), .. }), "{err}");
    assert_eq!(store.head().await.unwrap(), Position(0));
    assert_eq!(store.stream_version(&a).await.unwrap(), Version(0));
    assert!(matches!(
        store.append(&a, ExpectedVersion::Any, vec![]).await,
        Err(StoreError::EmptyAppend(_))
    ));
    assert!(store.read_stream(&a, Version(1)).await.unwrap().is_empty());
}

pub async fn metadata_and_idempotency_keys_are_kept<S: EventStore>(store: S) {
    let a = StreamId::new("a-1");
    let mut keyed = deposit(5);
    keyed.metadata = Metadata::correlated("req-1").with(bookshelf_core::IDEMPOTENCY_KEY, "step-1");
    store.append(&a, ExpectedVersion::Any, vec![deposit(1)]).await.unwrap();
    store.append(&a, ExpectedVersion::Any, vec![keyed]).await.unwrap();
    assert_eq!(
        store.find_idempotency_key(&a, "step-1").await.unwrap(),
        Some(Version(2))
    );
    assert_eq!(store.find_idempotency_key(&a, "step-2").await.unwrap(), None);
    assert_eq!(
        store
            .find_idempotency_key(&StreamId::new("b-1"), "step-1")
            .await
            .unwrap(),
        None
    );
    let read = store.read_stream(&a, Version(2)).await.unwrap();
    assert_eq!(read[0].metadata.correlation_id.as_deref(), Some("req-1"));
    assert_eq!(read[0].event_type, "Deposited");
    let odd = raw_event("Renamed", 3, r#"{"name":"\u00e9t\u00e9 \"quoted\""}"#);
    store.append(&a, ExpectedVersion::Any, vec![odd]).await.unwrap();
    let read = store.read_stream(&a, Version(3)).await.unwrap();
    assert_eq!((read[0].schema_version, read[0].event_type.as_str()), (3, "Renamed"));
    let name: serde_json::Value = serde_json::from_str(read[0].payload.get()).unwrap();
    assert_eq!(name["name"], "été \"quoted\"");
}

pub async fn a_subscription_waits_at_the_end_and_wakes_on_append<S: EventStore>(store: S) {
    let mut subscription = store.subscribe(Position::START).await.unwrap();
    let mut batch = Vec::new();
    let waiting = tokio::time::timeout(Duration::from_millis(50), subscription.next_batch(&mut batch, 10)).await;
    assert!(waiting.is_err(), "an empty store must make the subscriber wait");
    store
        .append(&StreamId::new("a-1"), ExpectedVersion::Any, vec![deposit(1)])
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), subscription.next_batch(&mut batch, 10))
        .await
        .expect("the append wakes the subscriber")
        .unwrap();
    assert_eq!(batch.len(), 1);
    assert_eq!(subscription.position(), Position(1));
}

pub async fn conflicting_appends_exactly_one_wins<S: EventStore + Clone>(store: S) {
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
pub async fn subscription_hands_over_from_catch_up_to_live_without_gap_or_repeat<S: EventStore + Clone>(store: S) {
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

pub async fn a_slow_subscriber_neither_blocks_appends_nor_buffers_them<S: EventStore>(store: S) {
    let mut subscription = store.subscribe(Position::START).await.unwrap();
    let stream = StreamId::new("account-1");
    // The subscriber reads nothing while 10,000 events are appended: no
    // append waits for it (a store whose appends waited would hang here;
    // the bound leaves room for a database server's commits, about 0.7 ms
    // each in a debug build).
    tokio::time::timeout(Duration::from_secs(30), async {
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

pub async fn snapshots_keep_the_newest<T: SnapshotStore>(snapshots: T) {
    let stream = StreamId::new("a-1");
    assert!(snapshots.load(&stream).await.unwrap().is_none());
    let at = |version: u64, balance: i64| Snapshot {
        stream_id: stream.clone(),
        version: Version(version),
        state: serde_json::json!({ "balance": balance }),
        taken_at: chrono::Utc::now(),
    };
    snapshots.save(at(100, 7)).await.unwrap();
    snapshots.save(at(200, 9)).await.unwrap();
    let newest = snapshots.load(&stream).await.unwrap().expect("a snapshot");
    assert_eq!(
        (newest.version, newest.state["balance"].as_i64()),
        (Version(200), Some(9))
    );
    assert!(snapshots.load(&StreamId::new("b-1")).await.unwrap().is_none());
}

/// Runs every behaviour of [this module](mod@crate::store_suite) as a test of its own, each
/// on a new store made by `$make`, and the snapshot behaviour on snapshots
/// made by `$snapshots`. Each maker is an async closure returning
/// `(guard, store)`: the guard (a temporary directory, say) lives as long
/// as the test.
///
/// ```ignore
/// bookshelf_testkit::store_suite!(async || ((), InMemoryStore::new()), async || ((), InMemorySnapshots::new()));
/// ```
#[macro_export]
macro_rules! store_suite {
    ($make:expr, $snapshots:expr) => {
        $crate::store_suite!(@each $make;
            appends_assign_versions_and_positions_atomically,
            a_failed_append_stores_nothing,
            streams_are_listed_with_their_versions_in_order,
            metadata_and_idempotency_keys_are_kept,
            a_subscription_waits_at_the_end_and_wakes_on_append,
            conflicting_appends_exactly_one_wins,
            subscription_hands_over_from_catch_up_to_live_without_gap_or_repeat,
            a_slow_subscriber_neither_blocks_appends_nor_buffers_them,
        );

        #[tokio::test]
        async fn snapshots_keep_the_newest() {
            let (_guard, snapshots) = ($snapshots)().await;
            $crate::store_suite::snapshots_keep_the_newest(snapshots).await;
        }
    };
    (@each $make:expr; $($test:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $test() {
                let (_guard, store) = ($make)().await;
                $crate::store_suite::$test(store).await;
            }
        )*
    };
}
