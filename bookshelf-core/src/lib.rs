//! # Bookshelf core: event sourcing and CQRS for Rust
//!
//! Bookshelf keeps what happened as the source of truth. **Aggregates** take
//! commands, check them against their state, and answer with events. An
//! **event store** keeps those events per stream, with optimistic concurrency.
//! **Views** fold the events into read models that answer queries, kept up to
//! date by a **projection runner** that subscribes to the store and saves its
//! checkpoint with the view's state. **Discovery** lets services find each
//! other.
//!
//! This crate holds the traits, the runtime, and in-memory implementations of
//! everything: enough to build and test a whole system in one process. It
//! compiles no C code. The `bookshelf-sqlite`, `bookshelf-kafka` and
//! `bookshelf-consul` crates run the same code on SQLite, Kafka and Consul.
//!
//! ## A bookshelf in forty lines
//!
//! ```
//! use bookshelf_core::{async_trait, Aggregate, DomainEvent, Envelope, EventStore};
//! use bookshelf_core::{InMemoryStore, Metadata, ProjectionRunner, Repository, View};
//! use serde::{Deserialize, Serialize};
//!
//! // The write side: a book that can be read once it is on the shelf.
//! #[derive(Default)]
//! struct Book { title: Option<String> }
//!
//! enum BookCommand { Add { title: String }, MarkRead }
//!
//! #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
//! enum BookEvent { BookAdded { title: String }, BookRead { title: String } }
//! impl DomainEvent for BookEvent {}
//!
//! #[derive(Debug, thiserror::Error)]
//! enum BookError {
//!     #[error("the book is already on the shelf")] AlreadyAdded,
//!     #[error("no such book")] Unknown,
//! }
//!
//! #[async_trait]
//! impl Aggregate for Book {
//!     const CATEGORY: &'static str = "book";
//!     type Command = BookCommand;
//!     type Event = BookEvent;
//!     type Error = BookError;
//!     type Services = ();
//!
//!     async fn handle(&self, command: &BookCommand, _: &()) -> Result<Vec<BookEvent>, BookError> {
//!         match (command, &self.title) {
//!             (BookCommand::Add { .. }, Some(_)) => Err(BookError::AlreadyAdded),
//!             (BookCommand::Add { title }, None) => Ok(vec![BookEvent::BookAdded { title: title.clone() }]),
//!             (BookCommand::MarkRead, None) => Err(BookError::Unknown),
//!             (BookCommand::MarkRead, Some(title)) => Ok(vec![BookEvent::BookRead { title: title.clone() }]),
//!         }
//!     }
//!
//!     fn apply(&mut self, event: &BookEvent) {
//!         if let BookEvent::BookAdded { title } = event {
//!             self.title = Some(title.clone());
//!         }
//!     }
//! }
//!
//! // The read side: the titles read, most recent first.
//! #[derive(Default)]
//! struct LastRead { titles: Vec<String> }
//!
//! impl View for LastRead {
//!     type Event = BookEvent;
//!     fn apply(&mut self, event: Envelope<BookEvent>) {
//!         if let BookEvent::BookRead { title } = event.payload {
//!             self.titles.insert(0, title);
//!             self.titles.truncate(5);
//!         }
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let store = InMemoryStore::new();
//! let books = Repository::<Book, _>::new(store.clone(), ());
//! let last_read = ProjectionRunner::<LastRead, _>::new("last-read", store.clone()).start();
//!
//! books.execute("1", &BookCommand::Add { title: "Dune".into() }, Metadata::default()).await?;
//! books.execute("1", &BookCommand::MarkRead, Metadata::correlated("req-1")).await?;
//! let refused = books.execute("2", &BookCommand::MarkRead, Metadata::default()).await;
//! assert!(refused.is_err());
//!
//! last_read.wait_for(store.head().await?).await?;
//! assert_eq!(last_read.read(|view| view.titles.clone()), ["Dune"]);
//! last_read.stop().await?;
//! # Ok(())
//! # }
//! ```
//!
//! ## Map
//!
//! | concept | module | main items |
//! |---|---|---|
//! | ids and the event envelope, its JSON form | [`envelope`] | [`StreamId`], [`Version`], [`Position`], [`Envelope`], [`RecordedEvent`] |
//! | domain events to JSON and back, upcasting | [`codec`] | [`DomainEvent`], [`EventCodec`], [`Upcasters`] |
//! | the write side | [`aggregate`], [`repository`], [`snapshot`] | [`Aggregate`], [`Repository`], [`RetryPolicy`], [`SnapshotStore`] |
//! | the event store | [`store`] | [`EventStore`], [`ExpectedVersion`], [`Subscription`], [`InMemoryStore`] |
//! | the read side: views in memory, saved with their checkpoint | [`view`], [`projection`] | [`View`], [`ProjectionRunner`], [`ViewStore`] |
//! | a new version of a view built beside the one answering, swapped in one step | [`versions`] | [`versions::Versions`] |
//! | following a log of one or many partitions from a checkpoint | [`source`] | [`EventSource`], [`Checkpoint`], [`Follower`] |
//! | the one follow loop of every reader, and its handle | [`runner`] | [`Runner`], [`Fold`], [`Handle`], [`Running`] |
//! | what readers set aside, and re-driving it once fixed | [`dead_letter`] | [`DeadLetters`], [`DeadLetter`], [`Redrive`], [`InMemoryDeadLetters`] |
//! | the one backoff of every retry loop | [`retry`] | [`RetryPolicy`] |
//! | long-running processes (sagas), compensation, idempotency keys | [`process`] | [`ProcessManager`], [`ProcessRunner`], [`CommandBus`], [`Repository::execute_once`] |
//! | change events with the state before and after | [`change`] | [`change::ChangeFeed`], [`change::Change`] |
//! | service discovery, client-side balancing | [`discovery`] | [`Discovery`], [`ServiceInstance`], [`InMemoryDiscovery`], [`Balancer`] |
//! | testing aggregates | [`testing`] | [`testing::AggregateTest`] |
//! | the metrics it records (Prometheus-ready) | [`telemetry`] | [`telemetry::COMMANDS`] and the rest |
//! | W3C trace context through requests, events and commands | [`trace`] | [`trace::TraceParent`], [`Metadata::following`] |
//! | fast RFC 3339 timestamps for serde | [`timestamp`] | [`timestamp::parse`] |
//!
//! ## Guarantees, in one place
//!
//! * Appends are atomic and checked against an [`ExpectedVersion`]: of two
//!   racing writers, exactly one wins; the other gets a conflict and nothing
//!   of it is stored ([`store`]).
//! * The [`InMemoryStore`]'s subscriptions deliver every event from their
//!   start position once, in one global order, with no gap between stored and
//!   live events, and hold no queue: a slow subscriber costs no memory.
//! * Every reader of a log (a view, tables, a process manager, a change
//!   feed) runs on one [`Runner`], which saves its checkpoint with its state,
//!   so that after a crash each event is reflected exactly once; undecodable
//!   events and unreadable records are dead-lettered, never dropped silently
//!   ([`runner`]).
//! * Nothing here panics on bad input: stored JSON, payloads and requests
//!   come back as typed errors.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod aggregate;
mod canonical;
pub mod change;
pub mod codec;
pub mod dead_letter;
pub mod discovery;
pub mod envelope;
pub mod process;
pub mod projection;
pub mod report;
pub mod repository;
pub mod retry;
pub mod runner;
pub mod snapshot;
pub mod source;
pub mod store;
pub mod telemetry;
pub mod testing;
pub mod timestamp;
pub mod trace;
pub mod versions;
pub mod view;

pub use aggregate::Aggregate;
pub use async_trait::async_trait;
pub use codec::{DecodeError, DomainEvent, EncodeError, EventCodec, Upcasters};
pub use dead_letter::{
    DeadLetter, DeadLetters, InMemoryDeadLetters, KeptDeadLetter, Poison, RecordColumns, Redrive, Redriven,
};
pub use discovery::{Balancer, Discovery, DiscoveryError, Health, InMemoryDiscovery, Picked, ServiceInstance, Watch};
pub use envelope::{Envelope, EventId, EventType, Metadata, NewEvent, Position, RecordedEvent, StreamId, Version};
pub use process::{CommandBus, Dispatch, DispatchError, ProcessFold, ProcessManager, ProcessRunner};
pub use projection::{
    FileViewStore, InMemoryViewStore, ProjectionError, ProjectionRunner, RestoredView, StoredView, ViewFold,
    ViewPersistence, ViewStore, ViewStoreError,
};
pub use report::{reports, PartitionReport, RunnerReport, RunnerState};
pub use repository::{CommandError, Committed, Loaded, Repository, IDEMPOTENCY_KEY};
pub use retry::RetryPolicy;
pub use runner::{Batch, Decoded, Ended, Fold, Handle, Runner, Running, UnknownEvents, Until, ViewState};
pub use snapshot::{InMemorySnapshots, Snapshot, SnapshotStore};
pub use source::{
    Checkpoint, EventSource, Followed, Follower, GlobalLog, Mark, PartitionProgress, RawRecord, Record, SavedCheckpoint,
};
pub use store::{AppendOutcome, EventStore, ExpectedVersion, InMemoryStore, StoreError, Subscription};
pub use view::View;
