//! Bookshelf on PostgreSQL beside its peer and its floors, in one run, on
//! the same server (`DATABASE_URL`; `scripts/bench-postgres.sh` starts a
//! throwaway one):
//!
//! * `postgres_commands_{1,8,64}`: the peers bench's workload (N books,
//!   each added then read nine times, a "last five read" view fed by every
//!   event) from 1, 8 and 64 concurrent clients, on Bookshelf's
//!   `PostgresStore` and on cqrs-es's postgres-es.
//! * `postgres_appends_{1,8,64}`: single-event appends from that many
//!   clients, beside the floor: the same rows inserted as plainly as the
//!   driver can (one autocommitted `INSERT` each), with tokio-postgres and
//!   with sqlx.
//! * `postgres_catch_up`: a view catching up on the log from its start,
//!   beside a plain `SELECT` of the same rows.
//!
//! Each iteration runs on a database of its own.

use bookshelf_services::books;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use books::{Book, BookCommand, BookError, BookEvent, Clock};
use bookshelf::postgres::{Options, PostgresStore};
use bookshelf::{
    Envelope, EventStore, ExpectedVersion, Metadata, NewEvent, ProjectionRunner, Repository, StreamId, View,
};
use bookshelf_testkit::postgres::fresh_database;
use cqrs_es::event_sink::EventSink;
use cqrs_es::{EventEnvelope, Query};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

/// The ids of the five books read last.
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

/// How many events a view has seen.
#[derive(Default)]
struct Count(u64);

impl View for Count {
    type Event = BookEvent;
    fn apply(&mut self, _: Envelope<BookEvent>) {
        self.0 += 1;
    }
}

/// The books aggregate, as cqrs-es takes it.
#[derive(Default, serde::Serialize, serde::Deserialize)]
struct PeerBook(Book);

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
struct PeerLastFive(Arc<Mutex<LastFive>>);

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

/// postgres-es's tables, as its `db/init.sql` makes them.
const PEER_TABLES: &str = "
CREATE TABLE events (
    aggregate_type text NOT NULL,
    aggregate_id text NOT NULL,
    sequence bigint CHECK (sequence >= 0) NOT NULL,
    event_type text NOT NULL,
    event_version text NOT NULL,
    payload json NOT NULL,
    metadata json NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id, sequence)
);
CREATE TABLE snapshots (
    aggregate_type text NOT NULL,
    aggregate_id text NOT NULL,
    last_sequence bigint CHECK (last_sequence >= 0) NOT NULL,
    current_snapshot bigint CHECK (current_snapshot >= 0) NOT NULL,
    payload json NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id, last_sequence)
);
";

/// The floor's table: the rows Bookshelf writes, with a plain sequence.
const FLOOR_TABLE: &str = "
CREATE SEQUENCE floor_positions;
CREATE TABLE floor_events (
    position bigint PRIMARY KEY,
    stream text NOT NULL,
    version bigint NOT NULL,
    event_id uuid NOT NULL,
    event_type text NOT NULL,
    schema_version int NOT NULL,
    recorded_at timestamptz NOT NULL,
    idempotency_key text,
    metadata json NOT NULL,
    payload json NOT NULL,
    UNIQUE (stream, version)
);
";

const FLOOR_INSERT: &str = "INSERT INTO floor_events (position, stream, version, event_id, event_type, schema_version, \
                            recorded_at, idempotency_key, metadata, payload) VALUES (nextval('floor_positions'), $1, $2, \
                            $3::text::uuid, $4, 1, now(), NULL, $5::text::json, $6::text::json)";

/// The sizes: clients, and books per run (smaller in the test command's
/// smoke run, which sets `BOOKSHELF_BENCH_EVENTS`).
fn smoke() -> bool {
    std::env::var_os("BOOKSHELF_BENCH_EVENTS").is_some()
}

fn clients() -> Vec<u64> {
    if smoke() {
        vec![1, 8]
    } else {
        vec![1, 8, 64]
    }
}

/// A tokio-postgres connection (its driver spawned) to `url`.
async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("a connection to the bench database");
    tokio::spawn(connection);
    client
}

/// Runs `clients` tasks at once, task `c` given its index, and waits for all.
async fn concurrently<F, Fut>(clients: u64, task: F)
where
    F: Fn(u64) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let tasks: Vec<_> = (0..clients).map(|c| tokio::spawn(task(c))).collect();
    for task in tasks {
        task.await.expect("a client ran to its end");
    }
}

fn commands(c: &mut Criterion, runtime: &tokio::runtime::Runtime) {
    let books: u64 = if smoke() { 16 } else { 256 };
    for clients in clients() {
        let mut group = c.benchmark_group(format!("postgres_commands_{clients}"));
        group.throughput(Throughput::Elements(10 * books));
        group.sample_size(10);
        // Client c handles books c, c + clients, ...: added, then read nine times.
        let mine = move |c: u64| (0..books).filter(move |id| id % clients == c);
        group.bench_function("postgres_es", |b| {
            b.iter_batched(
                || {
                    runtime.block_on(async {
                        let url = fresh_database("bench_peer").await;
                        connect(&url)
                            .await
                            .batch_execute(PEER_TABLES)
                            .await
                            .expect("the peer's tables");
                        let pool = sqlx::postgres::PgPoolOptions::new()
                            .max_connections(clients as u32)
                            .connect(&url)
                            .await
                            .expect("a sqlx pool");
                        let view = Arc::new(Mutex::new(LastFive::default()));
                        let query: Box<dyn Query<PeerBook>> = Box::new(PeerLastFive(Arc::clone(&view)));
                        (
                            Arc::new(postgres_es::postgres_cqrs(pool, vec![query], Clock::system())),
                            view,
                        )
                    })
                },
                |(cqrs, view)| {
                    runtime.block_on(concurrently(clients, |c| {
                        let cqrs = Arc::clone(&cqrs);
                        async move {
                            for id in mine(c) {
                                cqrs.execute(&id.to_string(), add(id)).await.expect("added");
                            }
                            for _ in 0..9 {
                                for id in mine(c) {
                                    cqrs.execute(&id.to_string(), BookCommand::MarkRead)
                                        .await
                                        .expect("read");
                                }
                            }
                        }
                    }));
                    assert_eq!(view.lock().unwrap().0.len(), 5.min(books as usize));
                },
                BatchSize::PerIteration,
            )
        });
        group.bench_function("bookshelf", |b| {
            b.iter_batched(
                || {
                    runtime.block_on(async {
                        let url = fresh_database("bench_bookshelf").await;
                        PostgresStore::connect_with(&url, Options::new().pool_size(clients as usize + 2))
                            .await
                            .expect("a store")
                    })
                },
                |store| {
                    runtime.block_on(async {
                        let repository = Arc::new(
                            Repository::<Book, _>::new(store.clone(), Clock::system()).with_cache(books as usize),
                        );
                        let view = ProjectionRunner::<LastFive, _>::new("last-five", store.clone()).start();
                        concurrently(clients, |c| {
                            let repository = Arc::clone(&repository);
                            async move {
                                for id in mine(c) {
                                    repository
                                        .execute(&id.to_string(), &add(id), Metadata::default())
                                        .await
                                        .expect("added");
                                }
                                for _ in 0..9 {
                                    for id in mine(c) {
                                        repository
                                            .execute(&id.to_string(), &BookCommand::MarkRead, Metadata::default())
                                            .await
                                            .expect("read");
                                    }
                                }
                            }
                        })
                        .await;
                        // The view caught up with every command.
                        view.wait_for(store.head().await.expect("the head"))
                            .await
                            .expect("caught up");
                        assert_eq!(view.read(|v| v.0.len()), 5.min(books as usize));
                        view.stop().await.expect("stopped");
                    })
                },
                BatchSize::PerIteration,
            )
        });
        group.finish();
    }
}

/// A book read, as Bookshelf appends it (its envelope is what the floors
/// insert too).
fn read_event() -> NewEvent {
    let read = BookEvent::BookRead {
        title: "Dune".into(),
        author: "Frank Herbert".into(),
        read_at: chrono::Utc::now(),
    };
    NewEvent::encode(&read, Metadata::default()).expect("an event")
}

fn appends(c: &mut Criterion, runtime: &tokio::runtime::Runtime) {
    let total: u64 = if smoke() { 256 } else { 4096 };
    // The fields of a row as Bookshelf writes them: a new event id for
    // each, the event's type, metadata and payload.
    let event = read_event();
    let row = Arc::new((
        event.event_type.as_str().to_owned(),
        serde_json::to_string(&event.metadata).expect("metadata"),
        event.payload.get().to_owned(),
    ));
    for clients in clients() {
        let per_client = total / clients;
        let mut group = c.benchmark_group(format!("postgres_appends_{clients}"));
        group.throughput(Throughput::Elements(per_client * clients));
        group.sample_size(10);
        group.bench_function("floor_tokio_postgres", |b| {
            b.iter_batched(
                || {
                    runtime.block_on(async {
                        let url = fresh_database("bench_floor").await;
                        connect(&url)
                            .await
                            .batch_execute(FLOOR_TABLE)
                            .await
                            .expect("the floor's table");
                        let config: tokio_postgres::Config = url.parse().expect("a URL");
                        let manager = deadpool_postgres::Manager::new(config, tokio_postgres::NoTls);
                        deadpool_postgres::Pool::builder(manager)
                            .max_size(clients as usize)
                            .build()
                            .expect("a pool")
                    })
                },
                |pool| {
                    runtime.block_on(concurrently(clients, |c| {
                        let (pool, row) = (pool.clone(), Arc::clone(&row));
                        async move {
                            let client = pool.get().await.expect("a connection");
                            let insert = client.prepare_cached(FLOOR_INSERT).await.expect("prepared");
                            let stream = format!("book-{c}");
                            let (event_type, metadata, payload) = &*row;
                            for version in 1..=per_client as i64 {
                                let id = uuid::Uuid::new_v4().to_string();
                                client
                                    .execute(&insert, &[&stream, &version, &id, event_type, metadata, payload])
                                    .await
                                    .expect("inserted");
                            }
                        }
                    }))
                },
                BatchSize::PerIteration,
            )
        });
        group.bench_function("floor_sqlx", |b| {
            b.iter_batched(
                || {
                    runtime.block_on(async {
                        let url = fresh_database("bench_floor").await;
                        connect(&url)
                            .await
                            .batch_execute(FLOOR_TABLE)
                            .await
                            .expect("the floor's table");
                        sqlx::postgres::PgPoolOptions::new()
                            .max_connections(clients as u32)
                            .connect(&url)
                            .await
                            .expect("a sqlx pool")
                    })
                },
                |pool| {
                    runtime.block_on(concurrently(clients, |c| {
                        let (pool, row) = (pool.clone(), Arc::clone(&row));
                        async move {
                            let stream = format!("book-{c}");
                            let (event_type, metadata, payload) = &*row;
                            for version in 1..=per_client as i64 {
                                sqlx::query(FLOOR_INSERT)
                                    .bind(&stream)
                                    .bind(version)
                                    .bind(uuid::Uuid::new_v4().to_string())
                                    .bind(event_type)
                                    .bind(metadata)
                                    .bind(payload)
                                    .execute(&pool)
                                    .await
                                    .expect("inserted");
                            }
                        }
                    }))
                },
                BatchSize::PerIteration,
            )
        });
        group.bench_function("bookshelf", |b| {
            b.iter_batched(
                || {
                    runtime.block_on(async {
                        let url = fresh_database("bench_appends").await;
                        PostgresStore::connect_with(&url, Options::new().pool_size(clients as usize + 2))
                            .await
                            .expect("a store")
                    })
                },
                |store| {
                    runtime.block_on(concurrently(clients, |c| {
                        let store = store.clone();
                        async move {
                            let stream = StreamId::new(format!("book-{c}"));
                            for _ in 0..per_client {
                                store
                                    .append(&stream, ExpectedVersion::Any, vec![read_event()])
                                    .await
                                    .expect("appended");
                            }
                        }
                    }))
                },
                BatchSize::PerIteration,
            )
        });
        group.finish();
    }
}

fn catch_up(c: &mut Criterion, runtime: &tokio::runtime::Runtime) {
    let events: u64 = if smoke() { 2_000 } else { 100_000 };
    // One log, written once: 1,000 events an append.
    let (url, store) = runtime.block_on(async {
        let url = fresh_database("bench_catch_up").await;
        let store = PostgresStore::connect(&url).await.expect("a store");
        let mut written = 0;
        while written < events {
            let n = 1_000.min(events - written);
            let batch = (0..n).map(|_| read_event()).collect();
            store
                .append(&StreamId::new(format!("book-{written}")), ExpectedVersion::Any, batch)
                .await
                .expect("appended");
            written += n;
        }
        (url, store)
    });
    let mut group = c.benchmark_group("postgres_catch_up");
    group.throughput(Throughput::Elements(events));
    group.sample_size(10);
    group.bench_function("plain_select", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let client = connect(&url).await;
                let rows = client
                    .query_raw(
                        "SELECT position, stream, version, event_id, event_type, schema_version, recorded_at, \
                         metadata::text, payload::text FROM bookshelf_events ORDER BY position",
                        &[] as &[&str],
                    )
                    .await
                    .expect("the rows");
                futures_util::pin_mut!(rows);
                let (mut count, mut bytes) = (0u64, 0usize);
                while let Some(row) = futures_util::StreamExt::next(&mut rows).await {
                    // Every column taken as the driver gives it, nothing decoded.
                    let row = row.expect("a row");
                    let (_, stream, _): (i64, &str, i64) = (row.get(0), row.get(1), row.get(2));
                    let (_, event_type, _): (uuid::Uuid, &str, i32) = (row.get(3), row.get(4), row.get(5));
                    let _: chrono::DateTime<chrono::Utc> = row.get(6);
                    let (metadata, payload): (&str, &str) = (row.get(7), row.get(8));
                    bytes += stream.len() + event_type.len() + metadata.len() + payload.len();
                    count += 1;
                }
                assert_eq!(count, events);
                bytes
            })
        })
    });
    group.bench_function("bookshelf_view", |b| {
        b.iter(|| {
            runtime.block_on(async {
                let view = ProjectionRunner::<Count, _>::new("count", store.clone()).start();
                view.wait_for(bookshelf::Position(events)).await.expect("caught up");
                assert_eq!(view.read(|v| v.0), events);
                view.stop().await.expect("stopped");
            })
        })
    });
    group.finish();
}

fn postgres(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    commands(c, &runtime);
    appends(c, &runtime);
    catch_up(c, &runtime);
}

criterion_group!(benches, postgres);
criterion_main!(benches);
