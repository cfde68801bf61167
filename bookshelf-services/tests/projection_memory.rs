//! A projection holds the view, not the events: running the "last read" view
//! over the in-memory store's log raises the process's peak memory by the
//! same small amount whether the log holds 100,000 events or 400,000.
//!
//! Linux only: it reads the peak resident set size (`VmHWM`) from
//! `/proc/self/status`, after resetting it through `/proc/self/clear_refs`.

#![cfg(target_os = "linux")]

mod peak;

use books::{BookEvent, LastRead};
use bookshelf::{
    codec, EventId, EventStore, InMemoryStore, InMemoryViewStore, Metadata, Position, ProjectionRunner, RecordedEvent,
    StreamId, Version,
};
use bookshelf_services::books;
use chrono::{TimeZone, Utc};
use peak::{reset_peak, status_kib};

fn store_with(events: u64) -> InMemoryStore {
    let store = InMemoryStore::new();
    store.import((0..events).map(|n| {
        let book = n % 5_000;
        let encoded = codec::encode(&BookEvent::BookRead {
            title: format!("The Collected Works, Volume {book}"),
            author: format!("Author Number {}", book % 97),
            read_at: Utc.timestamp_opt(1_700_000_000 + n as i64, 0).unwrap(),
        })
        .unwrap();
        RecordedEvent {
            event_id: EventId::new(),
            stream_id: StreamId::for_aggregate("book", &book.to_string()),
            version: Version::INITIAL,
            position: Position::START,
            recorded_at: Utc::now(),
            event_type: encoded.event_type,
            schema_version: encoded.schema_version,
            metadata: Metadata::correlated(format!("req-{n}")),
            payload: encoded.payload,
        }
    }));
    store
}

/// The growth of peak memory while projecting the whole log, in KiB.
async fn projection_peak_growth(store: &InMemoryStore) -> u64 {
    let head = store.head().await.unwrap();
    let before = status_kib("VmRSS:");
    reset_peak();
    let running = ProjectionRunner::<LastRead, _>::new("last-read", store.clone())
        .persist_to(InMemoryViewStore::new())
        .start();
    running.handle().wait_for(head).await.unwrap();
    assert_eq!(running.handle().read(LastRead::books).len(), LastRead::LIMIT);
    running.stop().await.unwrap();
    status_kib("VmHWM:").saturating_sub(before)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projecting_holds_the_view_not_the_events() {
    let small = store_with(100_000);
    let small_growth = projection_peak_growth(&small).await;
    drop(small);
    let large = store_with(400_000);
    let large_growth = projection_peak_growth(&large).await;
    println!("peak growth while projecting: 100k events {small_growth} KiB, 400k events {large_growth} KiB");
    // The store alone holds well over 100 MiB at 400k events; the projection
    // must add only a few MiB, and not more for four times the events.
    assert!(
        large_growth < 16 * 1024,
        "projection grew the peak by {large_growth} KiB"
    );
    assert!(
        large_growth < small_growth + 4 * 1024,
        "peak growth depends on the log's length: {small_growth} KiB for 100k, {large_growth} KiB for 400k"
    );
}
