//! The SQLite store beside the in-memory one, in one run: appends (one
//! event per append, and ten), commands through the `Repository`, and the
//! projection path (subscription + runner, the last-read view). SQLite runs
//! in write-ahead-log mode with `synchronous = NORMAL`
//! (`Durability::Process`: a commit survives the process dying; a power cut
//! may lose the last commits), and, for appends, with `synchronous = FULL`
//! (`Durability::PowerLoss`) too.
//!
//! Run with `cargo bench --bench stores`, then `scripts/bench-report.py
//! stores` for medians and ratios.

use bookshelf_services::books;
mod support;

use std::hint::black_box;

use books::{Book, BookEvent, Clock, LastRead};
use bookshelf::sqlite::{Durability, SqliteStore};
use bookshelf::{
    EventId, EventSource, EventStore, ExpectedVersion, InMemoryStore, InMemoryViewStore, Metadata, NewEvent, Position,
    ProjectionRunner, Repository, StreamId,
};
use chrono::{TimeZone, Utc};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

/// A new SQLite store in a directory of its own (kept as long as the store).
fn sqlite(durability: Durability) -> (SqliteStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open_with(dir.path().join("events.sqlite"), durability).unwrap();
    (store, dir)
}

/// A read of book `n % 1000`, as the books aggregate writes it.
fn read_event(n: u64) -> NewEvent {
    let encoded = bookshelf::codec::encode(&BookEvent::BookRead {
        title: format!("The Collected Works, Volume {}", n % 1000),
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
}

/// Appends `events` reads, `per_append` at a time, over 1,000 books.
async fn fill<S: EventStore>(store: &S, events: u64, per_append: u64) {
    let mut n = 0;
    while n < events {
        let stream = StreamId::for_aggregate("book", &(n / per_append % 1000).to_string());
        let batch = (n..(n + per_append).min(events)).map(read_event).collect();
        store.append(&stream, ExpectedVersion::Any, batch).await.unwrap();
        n += per_append;
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn appends(c: &mut Criterion) {
    const EVENTS: u64 = 2_000;
    let runtime = runtime();
    let mut group = c.benchmark_group("stores_append");
    group.throughput(Throughput::Elements(EVENTS));
    group.sample_size(10);
    for per_append in [1, 10] {
        group.bench_function(format!("memory_{per_append}_per_append"), |b| {
            b.iter_batched(
                InMemoryStore::new,
                |store| runtime.block_on(fill(&store, EVENTS, per_append)),
                BatchSize::PerIteration,
            )
        });
        for (name, durability) in [("sqlite", Durability::Process), ("sqlite_full", Durability::PowerLoss)] {
            group.bench_function(format!("{name}_{per_append}_per_append"), |b| {
                b.iter_batched(
                    || sqlite(durability),
                    |(store, dir)| {
                        runtime.block_on(fill(&store, EVENTS, per_append));
                        (store, dir)
                    },
                    BatchSize::PerIteration,
                )
            });
        }
    }
    group.finish();
}

fn commands(c: &mut Criterion) {
    const N: u64 = 500;
    let runtime = runtime();
    let mut group = c.benchmark_group("stores_commands");
    group.throughput(Throughput::Elements(3 * N));
    group.sample_size(10);
    group.bench_function("memory", |b| {
        b.iter_batched(
            || Repository::<Book, _>::new(InMemoryStore::new(), Clock::system()),
            |books| runtime.block_on(support::add_then_read_twice(&books, N)),
            BatchSize::PerIteration,
        )
    });
    group.bench_function("sqlite", |b| {
        b.iter_batched(
            || {
                let (store, dir) = sqlite(Durability::Process);
                (Repository::<Book, _>::new(store, Clock::system()), dir)
            },
            |(books, dir)| {
                runtime.block_on(support::add_then_read_twice(&books, N));
                (books, dir)
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

fn projection(c: &mut Criterion) {
    let events = (support::events() / 10).max(1_000);
    let runtime = runtime();
    let memory = InMemoryStore::new();
    let (sqlite, _dir) = sqlite(Durability::Process);
    runtime.block_on(async {
        fill(&memory, events, 100).await;
        fill(&sqlite, events, 100).await;
    });
    let mut group = c.benchmark_group("stores_projection");
    group.throughput(Throughput::Elements(events));
    group.sample_size(10);
    async fn project<S: EventSource>(store: S, events: u64) {
        let running = ProjectionRunner::<LastRead, _>::new("last-read", store)
            .persist_to(InMemoryViewStore::new())
            .start();
        running.handle().wait_for(Position(events)).await.unwrap();
        black_box(running.handle().read(LastRead::books));
        running.stop().await.unwrap();
    }
    group.bench_function("memory", |b| {
        b.iter(|| runtime.block_on(project(memory.clone(), events)))
    });
    group.bench_function("sqlite", |b| {
        b.iter(|| runtime.block_on(project(sqlite.clone(), events)))
    });
    group.finish();
}

criterion_group!(benches, appends, commands, projection);
criterion_main!(benches);
