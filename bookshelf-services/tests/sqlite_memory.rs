//! The SQLite store holds its events on disk, not in memory: opening a file
//! and projecting its whole log raises the process's peak memory by the
//! same small amount for 160,000 events as for 40,000.
//!
//! Linux only: it reads the peak resident set size (`VmHWM`) from
//! `/proc/self/status`, after resetting it through `/proc/self/clear_refs`.

#![cfg(target_os = "linux")]

mod peak;

use books::{BookEvent, LastRead};
use bookshelf::sqlite::SqliteStore;
use bookshelf::{
    codec, EventId, EventStore, ExpectedVersion, InMemoryViewStore, Metadata, NewEvent, ProjectionRunner, StreamId,
};
use bookshelf_services::books;
use chrono::{TimeZone, Utc};
use peak::{reset_peak, status_kib};

/// A file of `events` reads of 5,000 books, 100 per append.
async fn file_with(dir: &std::path::Path, events: u64) -> std::path::PathBuf {
    let path = dir.join(format!("events-{events}.sqlite"));
    let store = SqliteStore::open(&path).unwrap();
    for first in (0..events).step_by(100) {
        let batch = (first..first + 100)
            .map(|n| {
                let encoded = codec::encode(&BookEvent::BookRead {
                    title: format!("The Collected Works, Volume {}", n % 5_000),
                    author: format!("Author Number {}", n % 97),
                    read_at: Utc.timestamp_opt(1_700_000_000 + n as i64, 0).unwrap(),
                })
                .unwrap();
                NewEvent {
                    event_id: EventId::new(),
                    event_type: encoded.event_type,
                    schema_version: encoded.schema_version,
                    metadata: Metadata::correlated(format!("req-{n}")),
                    payload: encoded.payload,
                }
            })
            .collect();
        let stream = StreamId::for_aggregate("book", &(first / 100 % 5_000).to_string());
        store.append(&stream, ExpectedVersion::Any, batch).await.unwrap();
    }
    path
}

/// The growth of peak memory while opening `path` and projecting its whole
/// log, in KiB.
async fn open_and_project_growth(path: &std::path::Path) -> u64 {
    let before = status_kib("VmRSS:");
    reset_peak();
    let store = SqliteStore::open(path).unwrap();
    let head = store.head().await.unwrap();
    let running = ProjectionRunner::<LastRead, _>::new("last-read", store.clone())
        .persist_to(InMemoryViewStore::new())
        .start();
    running.handle().wait_for(head).await.unwrap();
    assert_eq!(running.handle().read(LastRead::books).len(), LastRead::LIMIT);
    running.stop().await.unwrap();
    drop(store);
    status_kib("VmHWM:").saturating_sub(before)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_store_keeps_its_log_on_disk_not_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    let small = file_with(dir.path(), 40_000).await;
    let large = file_with(dir.path(), 160_000).await;
    let small_growth = open_and_project_growth(&small).await;
    let large_growth = open_and_project_growth(&large).await;
    let file_kib = std::fs::metadata(&large).unwrap().len() / 1024;
    println!(
        "peak growth opening and projecting: 40k events {small_growth} KiB, 160k events {large_growth} KiB \
         (the 160k file: {file_kib} KiB)"
    );
    assert!(
        large_growth < 16 * 1024,
        "opening and projecting grew the peak by {large_growth} KiB"
    );
    assert!(
        large_growth < small_growth + 4 * 1024,
        "peak growth depends on the log's length: {small_growth} KiB for 40k, {large_growth} KiB for 160k"
    );
}
