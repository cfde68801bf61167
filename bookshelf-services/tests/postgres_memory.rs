//! The PostgreSQL store holds its events in the database, not in the
//! process: connecting and projecting the whole log raises the process's
//! peak memory by the same small amount for 160,000 events as for 40,000
//! (a subscription holds at most the page it hands out and the one it
//! reads ahead).
//!
//! Needs the PostgreSQL server that `DATABASE_URL` names (`scripts/test.sh`
//! starts one). Linux only: it reads the peak resident set size (`VmHWM`)
//! from `/proc/self/status`, after resetting it through
//! `/proc/self/clear_refs`.

#![cfg(target_os = "linux")]

mod peak;

use books::{BookEvent, LastRead};
use bookshelf::postgres::PostgresStore;
use bookshelf::{codec, EventId, EventStore, ExpectedVersion, Metadata, NewEvent, ProjectionRunner, StreamId};
use bookshelf_services::books;
use chrono::{TimeZone, Utc};
use peak::{reset_peak, status_kib};

/// A new database holding `events` reads of 5,000 books, 1,000 per append.
async fn database_with(events: u64) -> String {
    let url = bookshelf_testkit::postgres::fresh_database("memory").await;
    let store = PostgresStore::connect(&url).await.expect("a store");
    for first in (0..events).step_by(1_000) {
        let batch = (first..first + 1_000)
            .map(|n| {
                let encoded = codec::encode(&BookEvent::BookRead {
                    title: format!("The Collected Works, Volume {}", n % 5_000),
                    author: format!("Author Number {}", n % 97),
                    read_at: Utc.timestamp_opt(1_700_000_000 + n as i64, 0).unwrap(),
                })
                .expect("an event");
                NewEvent {
                    event_id: EventId::new(),
                    event_type: encoded.event_type,
                    schema_version: encoded.schema_version,
                    metadata: Metadata::correlated(format!("req-{n}")),
                    payload: encoded.payload,
                }
            })
            .collect();
        let stream = StreamId::for_aggregate("book", &(first / 1_000 % 5_000).to_string());
        store
            .append(&stream, ExpectedVersion::Any, batch)
            .await
            .expect("appended");
    }
    url
}

/// The growth of peak memory while connecting to `url` and projecting its
/// whole log, in KiB.
async fn connect_and_project_growth(url: &str) -> u64 {
    let before = status_kib("VmRSS:");
    reset_peak();
    let store = PostgresStore::connect(url).await.expect("a store");
    let head = store.head().await.expect("the head");
    let running = ProjectionRunner::<LastRead, _>::new("last-read", store.clone()).start();
    running.wait_for(head).await.expect("caught up");
    assert_eq!(running.read(LastRead::books).len(), LastRead::LIMIT);
    running.stop().await.expect("stopped");
    drop(store);
    status_kib("VmHWM:").saturating_sub(before)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_store_keeps_its_log_in_the_database_not_in_memory() {
    let small = database_with(40_000).await;
    let large = database_with(160_000).await;
    let small_growth = connect_and_project_growth(&small).await;
    let large_growth = connect_and_project_growth(&large).await;
    println!("peak growth connecting and projecting: 40k events {small_growth} KiB, 160k events {large_growth} KiB");
    assert!(
        large_growth < 16 * 1024,
        "connecting and projecting grew the peak by {large_growth} KiB"
    );
    assert!(
        large_growth < small_growth + 4 * 1024,
        "peak growth depends on the log's length: {small_growth} KiB for 40k, {large_growth} KiB for 160k"
    );
}
