//! # Bookshelf on SQLite
//!
//! The embedded, durable default of [Bookshelf](bookshelf_core): events,
//! snapshots and saved views in one SQLite file, with transactions and no
//! server, and views kept as SQL tables for read models larger than memory.
//! SQLite comes bundled: nothing to install.
//!
//! ```
//! use bookshelf_core::{EventStore, ExpectedVersion, Metadata, NewEvent, ProjectionRunner, StreamId, View, Envelope, DomainEvent};
//! use bookshelf_sqlite::SqliteStore;
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
//! # let dir = tempfile::tempdir()?;
//! let store = SqliteStore::open(dir.path().join("events.sqlite"))?;
//! let reads = ProjectionRunner::<Reads, _>::new("reads", store.clone())
//!     .persist_to(store.view_store("reads"))
//!     .start();
//! let read = NewEvent::encode(&BookEvent::BookRead { title: "Dune".into() }, Metadata::default())?;
//! let written = store.append(&StreamId::new("book-1"), ExpectedVersion::Any, vec![read]).await?;
//! reads.wait_for(written.last_position.next()).await?;
//! assert_eq!(reads.read(|r| r.0), 1);
//! reads.stop().await?; // the view and its checkpoint saved in the same file
//! # Ok(()) }
//! ```
//!
//! | item | what it is |
//! |---|---|
//! | [`SqliteStore`] | the event store: one global order, appends in write transactions |
//! | [`SqliteSnapshots`], [`SqliteViewStore`] | snapshots and saved views in the same file |
//! | [`SqliteDeadLetters`] | dead letters in the same file, numbered in the order set aside, listed by runner |
//! | [`table::TableFold`] | a view kept as SQL tables, its rows moved in the transaction of its checkpoint |

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod saved;
mod store;
pub mod table;

pub use saved::saved_checkpoints;
pub use store::{Durability, SqliteDeadLetters, SqliteSnapshots, SqliteStore, SqliteSubscription, SqliteViewStore};
