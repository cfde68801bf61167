//! # bookshelf-kafka: Bookshelf on Apache Kafka (in progress)
//!
//! This crate will run Bookshelf's [`EventStore`](bookshelf_core::EventStore)
//! and projections on Kafka through rdkafka: events keyed by stream id so that
//! each stream stays on one partition and in order, envelope metadata in Kafka
//! headers, the idempotent producer, projections whose partition offsets are
//! saved with the view's state, and poison records sent to a dead-letter topic.
//!
//! It holds no code yet; until it does, use the in-memory implementations of
//! [`bookshelf_core`].

#![forbid(unsafe_code)]
#![deny(missing_docs)]
