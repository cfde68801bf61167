//! # bookshelf-kafka: Bookshelf on Apache Kafka (in progress)
//!
//! [`KafkaStore`] runs Bookshelf's [`EventStore`](bookshelf_core::EventStore)
//! on a Kafka topic through rdkafka: events keyed by stream id so that each
//! stream stays on one partition and in order, envelope fields in Kafka
//! headers as well as the JSON body, the idempotent producer with
//! `acks=all`, and expected versions checked by the topic's single writer.
//! Its guarantees and their limits are on [`KafkaStore`].
//!
//! Not written yet: projections over several partitions with their offsets
//! saved in the view's state, a dead-letter topic for poison records, and
//! the Kafka benches (see the project README).
//!
//! ```no_run
//! use bookshelf_core::{EventStore, ExpectedVersion, StreamId, Version};
//! use bookshelf_kafka::{KafkaConfig, KafkaStore};
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), bookshelf_core::StoreError> {
//! let store = KafkaStore::open(
//!     KafkaConfig::new("127.0.0.1:9092", "books").partitions(3).create_topic(true),
//! )
//! .await?;
//! let version = store.stream_version(&StreamId::new("book-1")).await?;
//! # let _ = version; Ok(()) }
//! ```

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod config;
mod partition;
mod projection;
mod store;

pub use config::KafkaConfig;
pub use partition::partition_for;
pub use projection::{dead_letter_headers, KafkaProjection, KafkaViewHandle, RunningKafkaProjection};
pub use store::{headers, high_watermarks, KafkaStore, KafkaSubscription};
