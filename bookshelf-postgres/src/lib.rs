//! # Bookshelf on PostgreSQL
//!
//! [Bookshelf](bookshelf_core)'s event store, snapshots and saved views in
//! a PostgreSQL database, with one global log that readers follow from any
//! position and never see skip.
//!
//! ```
//! use bookshelf_core::{DomainEvent, Envelope, EventStore, ExpectedVersion, Metadata, NewEvent, ProjectionRunner, StreamId, View};
//! use bookshelf_postgres::PostgresStore;
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, Clone, Serialize, Deserialize)]
//! enum BookEvent { BookRead { title: String } }
//! impl DomainEvent for BookEvent {}
//!
//! #[derive(Default, Serialize, Deserialize)]
//! struct Reads(u64);
//! impl View for Reads {
//!     type Event = BookEvent;
//!     fn apply(&mut self, _: Envelope<BookEvent>) { self.0 += 1 }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let url = std::env::var("DATABASE_URL").map_err(|_| "DATABASE_URL names no PostgreSQL database: run scripts/postgres.sh start")?;
//! let store = PostgresStore::connect(&url).await?; // migrates the schema when needed
//! let reads = ProjectionRunner::<Reads, _>::new("doc-reads", store.clone())
//!     .persist_to(store.view_store("doc-reads"))
//!     .start();
//! let read = NewEvent::encode(&BookEvent::BookRead { title: "Dune".into() }, Metadata::default())?;
//! let written = store.append(&StreamId::new("doc-book-1"), ExpectedVersion::Any, vec![read]).await?;
//! reads.wait_for(written.last_position.next()).await?;
//! assert!(reads.read(|r| r.0) >= 1);
//! reads.stop().await?; // the view and its checkpoint saved in one row
//! # Ok(()) }
//! ```
//!
//! | item | what it is |
//! |---|---|
//! | [`PostgresStore`] | the event store: one global log, concurrent appends gathered into one statement |
//! | [`PostgresSnapshots`], [`PostgresViewStore`] | snapshots and saved views in the same database |
//! | [`PostgresDeadLetters`] | dead letters in the same database, numbered in the order set aside, listed by runner |
//! | [`table::TableFold`] | a view kept as SQL tables, its rows moved in the transaction of its checkpoint |
//! | [`migrate`], [`SCHEMA_VERSION`] | the versioned schema, brought up to date on connect or on its own |
//!
//! # Guarantees
//!
//! Besides those of every [`EventStore`](bookshelf_core::EventStore) (atomic
//! appends, optimistic concurrency, per-stream order):
//!
//! * **One global log, no skip, no stall.** Every event has a position,
//!   and a reader (a subscription, any runner) that has seen position `p`
//!   will never be shown an event below `p` later: it sees every committed
//!   event exactly once, in position order. A transaction that rolls back,
//!   or is abandoned, never holds a reader up. Positions rise in commit
//!   order but can have holes: a rolled-back append leaves its positions
//!   unused, and after a server crash the next positions may start up to 32
//!   further on (what a PostgreSQL sequence has logged ahead). A hole is
//!   never filled later.
//! * **Exactly one winner** among appends racing on a stream with the same
//!   expected version, whatever process or machine they come from.
//! * **Durable when answered.** An append is answered once its transaction
//!   has committed (with the server's `synchronous_commit`, on by default).
//!   When the connection fails while the append is on its way, the error
//!   says that its outcome is unknown: read the stream to learn it.
//! * **Columns, not blobs.** Each event is a row: position, stream,
//!   version, event id, type, schema version, when it was recorded
//!   (the server's clock), idempotency key, and its metadata and payload as
//!   `json`, for operators' queries.
//! * **Live delivery** wakes on `LISTEN/NOTIFY` (the store listens on a
//!   connection of its own from its first subscription on); when
//!   notifications are lost (the listening connection dropped and is being
//!   made again), a subscription at the end of the log still looks every
//!   [`POLL`].
//!
//! Not guaranteed: an order between events of different streams other than
//! the log's, and delivery while the server is unreachable (reads and
//! appends fail with [`StoreError::Backend`](bookshelf_core::StoreError)
//! naming the server, and succeed again once it is back).
//!
//! ## How: positions taken one transaction at a time
//!
//! The field's most reported bug in logs kept by a database is the reader
//! that skips: with positions from a sequence, a transaction that took
//! position 7 may commit after another that took 8, and a reader that read
//! 8 moves on past 7 for good (or, guarding against that, waits forever
//! for a 7 that was rolled back). Here every append first takes the log's
//! lock (a transaction-scoped advisory lock, keyed by the schema's position
//! sequence), then takes its positions from the sequence, and holds the
//! lock until its transaction ends: in the database function
//! `bookshelf_append`, or, for one event appended alone, in one plain
//! statement whose row is gated on the lock (which leaves the decision to
//! the function when it finds the stream moved meanwhile). So positions
//! are taken in commit order: once a transaction has taken position `p`,
//! no other can take a position until it has committed or rolled back. A
//! reader that sees position `q` therefore knows every transaction that
//! took a position below `q` has ended, and a hole below `q` stays a hole:
//! readers need no horizon and no gap detection, and never wait on a
//! hole. `WHERE position >= $1 ORDER BY position` is exact.
//! `tests/postgres.rs` tortures it (writers holding their transactions open
//! a random while, a quarter of them rolled back, readers restarted
//! mid-run); without the lock its appends collide and it fails.
//!
//! **The cost** is that appends to one log go one transaction at a time,
//! each holding the lock through its commit. While appends of a process
//! overlap, it gathers them into one statement and one commit (up to 256
//! appends), so the log's throughput grows with concurrency; an append
//! with no other in flight is sent at once from its caller's task, as one
//! plain statement when it is of one event. A lone writer pays on every
//! append for what a plain `INSERT` does not do: the lock, the
//! notification, and, unless the store already knows the stream's version
//! (its own last append to it reached the version the append expects), a
//! look-up of the stream's version. The store remembers the versions its
//! appends reached for up to 4,096 streams; another writer's append makes
//! that stale, and then the stream's unique version refuses the insert and
//! the function decides, one round trip more. With one client that is about
//! 0.87 of a plain `INSERT`'s rate, and more than the plain inserts from 64
//! clients (`BENCHMARKS.md` has the figures). A transaction of yours that
//! appends with [`PostgresStore::append_in`] holds every other writer until
//! it ends; one left idle is ended by the server after
//! [`IDLE_IN_TRANSACTION`] (every connection of the store sets
//! `idle_in_transaction_session_timeout`), which bounds how long a stalled
//! or abandoned writer can hold the others up. Readers are never held up.
//!
//! **Catching up**, a subscription reads the log with one streamed query
//! (up to 50,000 events, then another), turning rows into events in the
//! background while its reader uses the ones before; at the end of the log
//! it reads pages, one query per wake-up.
//!
//! What grows with the log is the database; the process holds a batch and
//! at most 2,560 events read ahead per subscription (eight chunks of 256
//! waiting, one being filled, one being handed out), and the versions of
//! at most 4,096 streams, whatever the log's length.
//!
//! ## Schema
//!
//! The tables are `bookshelf_events` (with the sequence `bookshelf_positions`), `bookshelf_snapshots`,
//! `bookshelf_views`, `bookshelf_checkpoints`, `bookshelf_dead_letters` and `bookshelf_schema` (the
//! version). [`PostgresStore::connect`] applies the migrations this build
//! has and the database lacks, in one transaction under an advisory lock,
//! so several instances can start at once; a database whose schema is
//! newer than this build is refused untouched. To keep several stores in
//! one database, give each a schema of its own ([`Options::schema`]).

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod append;
mod dead_letters;
mod saved;
mod schema;
mod server;
mod store;
pub mod table;

pub use dead_letters::PostgresDeadLetters;
pub use saved::{PostgresSnapshots, PostgresViewStore};
pub use schema::SCHEMA_VERSION;
pub use server::IDLE_IN_TRANSACTION;
pub use store::{Options, PostgresStore, PostgresSubscription, POLL};

pub use deadpool_postgres;
pub use tokio_postgres;

use bookshelf_core::StoreError;

/// Brings the tables of the database at `url` (in `schema`, when given, as
/// [`Options::schema`]) up to [`SCHEMA_VERSION`], and returns the version
/// they were at: what [`PostgresStore::connect`] does first, for a
/// deployment step of its own.
///
/// # Errors
/// When the server cannot be reached or refuses, or the schema is newer
/// than this build (then nothing is changed).
pub async fn migrate(url: &str, schema: Option<&str>) -> Result<i32, StoreError> {
    let server = server::Server::parse(url, schema)?;
    let (mut client, connection) = server
        .config()
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(|e| server.error("cannot connect", e))?;
    let driver = tokio::spawn(connection);
    let found = schema::migrate(&mut client, &server).await;
    drop(client);
    let _ = driver.await;
    found
}
