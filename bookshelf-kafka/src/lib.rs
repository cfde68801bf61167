//! # bookshelf-kafka: Bookshelf on Apache Kafka
//!
//! * [`KafkaStore`] runs Bookshelf's [`EventStore`](bookshelf_core::EventStore)
//!   on a Kafka topic through rdkafka: one record per event, keyed by stream
//!   id so that a stream stays on one partition and in order, envelope fields
//!   in Kafka headers as well as the JSON body, the idempotent producer with
//!   `acks=all`, and expected versions checked by the topic's single writer.
//!   Its guarantees and their limits are written on [`KafkaStore`].
//! * [`KafkaProjection`] keeps a [`View`](bookshelf_core::View) up to date
//!   from one or more topics of any number of partitions, saving each
//!   partition's offset with the view's state, and sets poison records aside
//!   in a dead-letter topic.
//!
//! ```no_run
//! use bookshelf_core::{Envelope, EventStore, ExpectedVersion, FileViewStore, StreamId, View};
//! use bookshelf_kafka::{high_watermarks, KafkaConfig, KafkaProjection, KafkaStore};
//! # #[derive(Debug, Clone, serde::Serialize, serde::Deserialize)] enum BookEvent { BookRead { title: String } }
//! # impl bookshelf_core::DomainEvent for BookEvent {}
//! # #[derive(Default, serde::Serialize, serde::Deserialize)] struct Reads(u64);
//! # impl View for Reads { type Event = BookEvent; fn apply(&mut self, _: Envelope<BookEvent>) { self.0 += 1 } }
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let config = KafkaConfig::new("127.0.0.1:9092", "books").partitions(3).create_topic(true);
//!
//! // The writer: one process per topic.
//! let store = KafkaStore::open(config.clone()).await?;
//! let version = store.stream_version(&StreamId::new("book-1")).await?;
//!
//! // A view, resuming from the offsets saved with its state.
//! let reads = KafkaProjection::<Reads>::new("reads", config.clone())
//!     .persist_to(FileViewStore::new("reads.json"))
//!     .start()
//!     .await?;
//! reads.handle().wait_for(&high_watermarks(&config, &["books"]).await?).await;
//! println!("{} reads", reads.handle().read(|r| r.0));
//! reads.stop().await?; // saves state and offsets
//! # let _ = version; Ok(()) }
//! ```
//!
//! The tests run against tansu, a Kafka-compatible broker; what it does and
//! does not support, and how this crate works around it, is in the project
//! README.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod config;
mod local;
mod ownership;
mod partition;
mod projection;
mod reader;
pub mod rule;
mod store;

pub use config::KafkaConfig;
pub use ownership::{members_from_discovery, rendezvous_owner};
pub use partition::partition_for;
pub use projection::{dead_letter_headers, KafkaProjection, KafkaViewHandle, RunningKafkaProjection};
pub use store::{
    headers, high_watermarks, Fenced, KafkaStore, KafkaStoreBuilder, KafkaSubscription, Member, NotOwner,
    PartitionOwner,
};
