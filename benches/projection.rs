//! Projection throughput of the "last read books" view over 1,000,000 events
//! (`BOOKSHELF_BENCH_EVENTS` to change),
//! three ways, in one run so that their ratios can be read off:
//!
//! * (a) `fold_decoded`: folding already-decoded events, the ceiling;
//! * (b) `decode_json_and_fold`: decoding each event's JSON envelope, then folding;
//! * (c) `store_subscription_and_runner`: the full path, from the in-memory
//!   store's subscription through the projection runner (with the view and its
//!   checkpoint saved every 10,000 events);
//! * (d) `rebuild_beside_the_one_serving`: (c) as a new version of the view,
//!   built beside the version serving (`versions::Versions::rebuild`) and
//!   swapped in, the version it replaced then dropped: what a side-by-side
//!   rebuild costs beyond the catch-up itself.
//!
//! And command handling on the in-memory store: load + handle + append.
//!
//! Run with `cargo bench --bench projection`, then `scripts/bench-report.py`
//! for medians and ratios.

use bookshelf_services::books;
mod support;

use support::events;

use std::hint::black_box;
use std::time::Duration;

use books::{Book, BookEvent, Clock, LastRead};
use bookshelf::versions::{versioned, whole, Versions};
use bookshelf::{
    Envelope, EventCodec, EventId, EventStore, InMemoryStore, InMemoryViewStore, Metadata, Position, ProjectionRunner,
    RecordedEvent, Repository, StreamId, Version, View,
};
use chrono::{TimeZone, Utc};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

/// The bench envelope read with borrowed strings only: a floor for (b).
#[allow(dead_code)]
#[derive(serde::Deserialize)]
struct BorrowedEnvelope<'a> {
    event_id: &'a str,
    stream_id: &'a str,
    version: u64,
    position: u64,
    recorded_at: &'a str,
    event_type: &'a str,
    schema_version: u32,
    #[serde(borrow)]
    metadata: BorrowedMetadata<'a>,
    #[serde(borrow)]
    payload: BorrowedRead<'a>,
}

#[allow(dead_code)]
#[derive(serde::Deserialize)]
struct BorrowedMetadata<'a> {
    correlation_id: &'a str,
}

#[allow(dead_code)]
#[derive(serde::Deserialize)]
struct BorrowedRead<'a> {
    title: &'a str,
    author: &'a str,
    read_at: &'a str,
}
const BOOKS: u64 = 10_000;

/// The n-th event of the bench log: a read of one of 10,000 books, about 330
/// bytes as a JSON envelope.
fn recorded(n: u64) -> RecordedEvent {
    let book = n % BOOKS;
    let event = BookEvent::BookRead {
        title: format!("The Collected Works, Volume {book}"),
        author: format!("Author Number {}", book % 97),
        read_at: Utc.timestamp_opt(1_700_000_000 + n as i64, 0).unwrap(),
    };
    let encoded = bookshelf::codec::encode(&event).unwrap();
    Envelope {
        event_id: EventId::new(),
        stream_id: StreamId::for_aggregate("book", &book.to_string()),
        version: Version(n / BOOKS + 1),
        position: Position(n),
        recorded_at: Utc.timestamp_opt(1_700_000_000 + n as i64, 0).unwrap(),
        event_type: encoded.event_type,
        schema_version: encoded.schema_version,
        metadata: Metadata::correlated(format!("req-{n}")),
        payload: encoded.payload,
    }
}

fn projection(c: &mut Criterion) {
    let events = events();
    let records: Vec<RecordedEvent> = (0..events).map(recorded).collect();
    let json: Vec<String> = records.iter().map(RecordedEvent::to_json).collect();
    let codec = EventCodec::<BookEvent>::new();
    let decoded: Vec<Envelope<BookEvent>> = records.iter().map(|r| codec.decode_envelope(r).unwrap()).collect();
    let store = InMemoryStore::new();
    store.import(records);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    let mut group = c.benchmark_group("projection");
    group.throughput(Throughput::Elements(events));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(15));

    group.bench_function("a_fold_decoded", |b| {
        b.iter_batched(
            || decoded.clone(),
            |events| {
                let mut view = LastRead::default();
                for event in events {
                    view.apply(event);
                }
                black_box(view)
            },
            BatchSize::PerIteration,
        )
    });

    group.bench_function("b_decode_json_and_fold", |b| {
        b.iter(|| {
            let mut view = LastRead::default();
            for line in &json {
                view.apply(codec.decode_json(line).unwrap());
            }
            black_box(view)
        })
    });

    // Not targets: floors for (b) on this machine, for context. Merely
    // scanning the same JSON, and reading it into a struct of borrowed
    // strings (no allocation, no uuid or timestamp parsing, no fold).
    group.bench_function("floor_json_scan_only", |b| {
        b.iter(|| {
            for line in &json {
                black_box(serde_json::from_str::<serde::de::IgnoredAny>(line).unwrap());
            }
        })
    });
    group.bench_function("floor_json_borrowed_struct", |b| {
        b.iter(|| {
            for line in &json {
                black_box(serde_json::from_str::<BorrowedEnvelope<'_>>(line).unwrap());
            }
        })
    });

    group.bench_function("c_store_subscription_and_runner", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let running = ProjectionRunner::<LastRead, _>::new("last-read", store.clone())
                    .persist_to(InMemoryViewStore::new())
                    .start();
                let view = running.handle();
                view.wait_for(Position(events)).await.unwrap();
                let books = view.read(LastRead::books);
                running.stop().await.unwrap();
                black_box(books)
            })
        })
    });
    // The version serving, caught up once; each iteration builds the next
    // version beside it, swaps it in and drops the one it replaced.
    let serving = runtime.block_on(async {
        let first = ProjectionRunner::<LastRead, _>::new(versioned("last-read", 1), store.clone()).start();
        first.handle().wait_for(Position(events)).await.unwrap();
        Versions::new(1, first, whole)
    });
    let mut number = 1;
    group.bench_function("d_rebuild_beside_the_one_serving", |b| {
        b.iter(|| {
            number += 1;
            runtime.block_on(async {
                let next = ProjectionRunner::<LastRead, _>::new(versioned("last-read", number), store.clone())
                    .persist_to(InMemoryViewStore::new())
                    .start();
                serving.rebuild(number, next, whole).await.unwrap();
                serving.drop_previous().await.unwrap();
                black_box(serving.read(LastRead::books))
            })
        })
    });
    group.finish();
    runtime.block_on(serving.stop()).unwrap();
}

fn commands(c: &mut Criterion) {
    const N: u64 = 1_000;
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let mut group = c.benchmark_group("commands");
    // Each iteration adds N books, then reads each of them twice.
    group.throughput(Throughput::Elements(3 * N));
    group.sample_size(20);
    for (name, cache) in [
        ("add_then_read_twice", None),
        ("add_then_read_twice_cached", Some(N as usize)),
    ] {
        group.bench_function(name, |b| {
            b.iter_batched(
                || {
                    let books = Repository::<Book, _>::new(InMemoryStore::new(), Clock::system());
                    match cache {
                        Some(capacity) => books.with_cache(capacity),
                        None => books,
                    }
                },
                |books| {
                    runtime.block_on(async {
                        support::add_then_read_twice(&books, N).await;
                        black_box(books.store().head().await.unwrap())
                    })
                },
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

criterion_group!(benches, projection, commands);
criterion_main!(benches);
