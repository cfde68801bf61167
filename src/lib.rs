//! # Bookshelf: event sourcing and CQRS for Rust
//!
//! This is the facade: it re-exports [`bookshelf_core`] (aggregates, views,
//! event stores, projections, discovery, and their in-memory
//! implementations), and, behind features, the adapters:
//!
//! * feature `sqlite` (on by default): [`sqlite`], the embedded event store,
//!   saved views and SQL table views in one file;
//! * feature `postgres`: [`postgres`], the event store with a global log
//!   that never skips, saved views and table views in a PostgreSQL database;
//! * feature `kafka`: [`kafka`], the event store and its log on Apache Kafka;
//! * feature `consul`: [`consul`], service discovery on HashiCorp Consul;
//! * feature `opentelemetry`: readers' spans join their event's trace, and
//!   `otlp` exports spans to an OpenTelemetry collector.
//!
//! Start with the [`bookshelf_core`] front page: it builds an aggregate, a view
//! and a store in forty lines.
//!
//! ```
//! use bookshelf::{EventStore, InMemoryStore, Position};
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), bookshelf::StoreError> {
//! let store = InMemoryStore::new();
//! assert_eq!(store.head().await?, Position::START);
//! # Ok(()) }
//! ```

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub use bookshelf_core::*;

/// Bookshelf on SQLite (feature `sqlite`, on by default).
#[cfg(feature = "sqlite")]
pub use bookshelf_sqlite as sqlite;

/// Bookshelf on PostgreSQL (feature `postgres`).
#[cfg(feature = "postgres")]
pub use bookshelf_postgres as postgres;

/// Bookshelf on Apache Kafka (feature `kafka`).
#[cfg(feature = "kafka")]
pub use bookshelf_kafka as kafka;

/// Service discovery on Consul (feature `consul`).
#[cfg(feature = "consul")]
pub use bookshelf_consul as consul;

#[cfg(feature = "opentelemetry")]
pub mod otlp;

/// The README's example, run as a doc test so that the front page cannot
/// drift from the code.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
