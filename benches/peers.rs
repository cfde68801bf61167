//! Commands beside a peer, in one run: the same workload on cqrs-es 0.5
//! (its `MemStore`, with a query) and on Bookshelf (`InMemoryStore`,
//! `Repository`, and a `ProjectionRunner` that the iteration waits for).
//!
//! Workload: N books (1,000 and 10,000; `BOOKSHELF_PEER_BOOKS` for one
//! other size), each added, then read nine times: 10 N commands, and a
//! "last five read" view fed by every event. The same domain code (the
//! books aggregate of the examples) decides every command on both sides.
//!
//! `peers_sqlite_N` runs the same workload on SQLite files: cqrs-es's
//! sqlite-es beside Bookshelf's `SqliteStore`, both in WAL mode with
//! `synchronous = NORMAL`.
//!
//! cqrs-es's `MemStore` prints a line per load and per commit; run with
//! stdout sent to /dev/null, as `scripts/peers.sh` does, and read the
//! medians with `scripts/bench-report.py peers`.

use bookshelf_services::books;

use std::collections::VecDeque;
use std::sync::Mutex;

use books::{Book, BookCommand, BookError, BookEvent, Clock};
use bookshelf::{Envelope, EventStore, InMemoryStore, ProjectionRunner, Repository, View};
use cqrs_es::event_sink::EventSink;
use cqrs_es::mem_store::MemStore;
use cqrs_es::{CqrsFramework, EventEnvelope, Query};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

/// The view both sides keep: the ids of the five books read last.
#[derive(Default)]
struct LastFive(VecDeque<String>);

impl LastFive {
    fn read(&mut self, id: &str) {
        self.0.retain(|known| known != id);
        self.0.push_front(id.to_owned());
        self.0.truncate(5);
    }
}

impl View for LastFive {
    type Event = BookEvent;
    fn apply(&mut self, event: Envelope<BookEvent>) {
        if let BookEvent::BookRead { .. } = event.payload {
            self.read(event.stream_id.entity_id());
        }
    }
}

/// The books aggregate, as cqrs-es takes it.
#[derive(Default, serde::Serialize, serde::Deserialize)]
struct PeerBook(Book);

/// The book events as cqrs-es takes them: the same events, the same JSON
/// (a newtype only because the trait and the type are both foreign here).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
struct PeerEvent(BookEvent);

impl cqrs_es::DomainEvent for PeerEvent {
    fn event_type(&self) -> String {
        match &self.0 {
            BookEvent::BookAdded { .. } => "BookAdded",
            BookEvent::BookRead { .. } => "BookRead",
            BookEvent::BookRated { .. } => "BookRated",
            BookEvent::BookRemoved => "BookRemoved",
        }
        .to_owned()
    }
    fn event_version(&self) -> String {
        "1".to_owned()
    }
}

impl cqrs_es::Aggregate for PeerBook {
    const TYPE: &'static str = "book";
    type Command = BookCommand;
    type Event = PeerEvent;
    type Error = BookError;
    type Services = Clock;

    async fn handle(&mut self, command: BookCommand, clock: &Clock, sink: &EventSink<Self>) -> Result<(), BookError> {
        for event in bookshelf::Aggregate::handle(&self.0, &command, clock).await? {
            sink.write(PeerEvent(event), self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: PeerEvent) {
        bookshelf::Aggregate::apply(&mut self.0, &event.0);
    }
}

/// The view on cqrs-es: a query, called as each command commits.
struct PeerLastFive(Mutex<LastFive>);

#[bookshelf::async_trait]
impl Query<PeerBook> for PeerLastFive {
    async fn dispatch(&self, aggregate_id: &str, events: &[EventEnvelope<PeerBook>]) {
        let mut view = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for event in events {
            if let BookEvent::BookRead { .. } = event.payload.0 {
                view.read(aggregate_id);
            }
        }
    }
}

fn add(id: u64) -> BookCommand {
    BookCommand::Add {
        title: format!("Book {id}"),
        author: "Somebody".into(),
        isbn: "9780441013593".into(),
    }
}

/// The sizes to run: `BOOKSHELF_PEER_BOOKS`, or 20 books in the test
/// command's smoke run (which sets `BOOKSHELF_BENCH_EVENTS`), or 1,000 and
/// 10,000.
fn sizes() -> Vec<u64> {
    if let Some(n) = std::env::var("BOOKSHELF_PEER_BOOKS").ok().and_then(|n| n.parse().ok()) {
        return vec![n];
    }
    if std::env::var_os("BOOKSHELF_BENCH_EVENTS").is_some() {
        return vec![20];
    }
    vec![1_000, 10_000]
}

fn peers(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    for books in sizes() {
        let mut group = c.benchmark_group(format!("peers_{books}"));
        group.throughput(Throughput::Elements(10 * books));
        group.sample_size(10);
        group.bench_function("cqrs_es", |b| {
            b.iter_batched(
                || {
                    let view = std::sync::Arc::new(PeerLastFive(Mutex::new(LastFive::default())));
                    let query: Box<dyn Query<PeerBook>> = Box::new(SharedQuery(std::sync::Arc::clone(&view)));
                    (
                        CqrsFramework::new(MemStore::<PeerBook>::default(), vec![query], Clock::system()),
                        view,
                    )
                },
                |(cqrs, view)| {
                    runtime.block_on(async {
                        for id in 0..books {
                            cqrs.execute(&id.to_string(), add(id)).await.unwrap();
                        }
                        for _ in 0..9 {
                            for id in 0..books {
                                cqrs.execute(&id.to_string(), BookCommand::MarkRead).await.unwrap();
                            }
                        }
                    });
                    // The view is up to date as the last command returns.
                    assert_eq!(view.0.lock().unwrap().0.len(), 5);
                },
                BatchSize::PerIteration,
            )
        });
        for (name, cache) in [("bookshelf", None), ("bookshelf_cached", Some(books as usize))] {
            group.bench_function(name, |b| {
                b.iter_batched(
                    InMemoryStore::new,
                    |store| {
                        runtime.block_on(async {
                            let mut repository = Repository::<Book, _>::new(store.clone(), Clock::system());
                            if let Some(capacity) = cache {
                                repository = repository.with_cache(capacity);
                            }
                            let view = ProjectionRunner::<LastFive, _>::new("last-five", store.clone()).start();
                            for id in 0..books {
                                repository
                                    .execute(&id.to_string(), &add(id), Default::default())
                                    .await
                                    .unwrap();
                            }
                            for _ in 0..9 {
                                for id in 0..books {
                                    let id = id.to_string();
                                    repository
                                        .execute(&id, &BookCommand::MarkRead, Default::default())
                                        .await
                                        .unwrap();
                                }
                            }
                            // The view caught up with every command.
                            view.handle().wait_for(store.head().await.unwrap()).await.unwrap();
                            assert_eq!(view.handle().read(|v| v.0.len()), 5);
                            view.stop().await.unwrap();
                        })
                    },
                    BatchSize::PerIteration,
                )
            });
        }
        group.finish();
    }
}

/// sqlite-es's tables, as its migration makes them.
const SQLITE_PEER_TABLES: &str = "
CREATE TABLE events (
  aggregate_type text NOT NULL,
  aggregate_id text NOT NULL,
  sequence integer CHECK (sequence >= 0) NOT NULL,
  event_type text NOT NULL,
  event_version text NOT NULL,
  payload text NOT NULL,
  metadata text NOT NULL,
  PRIMARY KEY (aggregate_type, aggregate_id, sequence)
) STRICT;
CREATE TABLE snapshots (
  aggregate_type text NOT NULL,
  aggregate_id text NOT NULL,
  last_sequence integer CHECK (last_sequence >= 0) NOT NULL,
  current_snapshot integer CHECK (current_snapshot >= 0) NOT NULL,
  payload text NOT NULL,
  PRIMARY KEY (aggregate_type, aggregate_id, last_sequence)
) STRICT;
";

/// The workload on SQLite files: sqlite-es beside `SqliteStore`.
fn peers_sqlite(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let books: u64 = if std::env::var_os("BOOKSHELF_BENCH_EVENTS").is_some() {
        20
    } else {
        1_000
    };
    let mut group = c.benchmark_group(format!("peers_sqlite_{books}"));
    group.throughput(Throughput::Elements(10 * books));
    group.sample_size(10);
    group.bench_function("sqlite_es", |b| {
        b.iter_batched(
            || {
                let dir = tempfile::tempdir().unwrap();
                let url = format!("sqlite://{}", dir.path().join("events.db").display());
                runtime.block_on(async {
                    let pool = sqlite_es::default_sqlite_pool(&url).await;
                    sqlx::raw_sql(SQLITE_PEER_TABLES).execute(&pool).await.unwrap();
                    let view = std::sync::Arc::new(PeerLastFive(Mutex::new(LastFive::default())));
                    let query: Box<dyn Query<PeerBook>> = Box::new(SharedQuery(std::sync::Arc::clone(&view)));
                    (dir, sqlite_es::sqlite_cqrs(pool, vec![query], Clock::system()), view)
                })
            },
            |(_dir, cqrs, view)| {
                runtime.block_on(async {
                    for id in 0..books {
                        cqrs.execute(&id.to_string(), add(id)).await.unwrap();
                    }
                    for _ in 0..9 {
                        for id in 0..books {
                            cqrs.execute(&id.to_string(), BookCommand::MarkRead).await.unwrap();
                        }
                    }
                });
                assert_eq!(view.0.lock().unwrap().0.len(), 5);
            },
            BatchSize::PerIteration,
        )
    });
    group.bench_function("bookshelf", |b| {
        b.iter_batched(
            || {
                let dir = tempfile::tempdir().unwrap();
                let store = bookshelf::sqlite::SqliteStore::open(dir.path().join("events.sqlite")).unwrap();
                (dir, store)
            },
            |(_dir, store)| {
                runtime.block_on(async {
                    let repository =
                        Repository::<Book, _>::new(store.clone(), Clock::system()).with_cache(books as usize);
                    let view = ProjectionRunner::<LastFive, _>::new("last-five", store.clone()).start();
                    for id in 0..books {
                        repository
                            .execute(&id.to_string(), &add(id), Default::default())
                            .await
                            .unwrap();
                    }
                    for _ in 0..9 {
                        for id in 0..books {
                            repository
                                .execute(&id.to_string(), &BookCommand::MarkRead, Default::default())
                                .await
                                .unwrap();
                        }
                    }
                    view.handle().wait_for(store.head().await.unwrap()).await.unwrap();
                    assert_eq!(view.handle().read(|v| v.0.len()), 5);
                    view.stop().await.unwrap();
                })
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

/// A query shared with the bench, which reads the view after the run.
struct SharedQuery(std::sync::Arc<PeerLastFive>);

#[bookshelf::async_trait]
impl Query<PeerBook> for SharedQuery {
    async fn dispatch(&self, aggregate_id: &str, events: &[EventEnvelope<PeerBook>]) {
        self.0.dispatch(aggregate_id, events).await;
    }
}

criterion_group!(benches, peers, peers_sqlite);
criterion_main!(benches);
