//! # bookshelf-kafka: Bookshelf on Apache Kafka
//!
//! * [`KafkaStore`] runs Bookshelf's [`EventStore`](bookshelf_core::EventStore)
//!   on a Kafka topic through rdkafka, for a service of any number of
//!   instances: one record per event, keyed by stream id so that a stream
//!   stays on one partition and in order, envelope fields in Kafka headers
//!   as well as the JSON body, one owner per partition fenced by claims in
//!   the log, and a local SQLite copy of what was read, so that loads never
//!   ask Kafka. Its guarantees and their limits are written on [`KafkaStore`].
//! * [`KafkaLog`] is a topic of any number of partitions as the core's
//!   [`EventSource`](bookshelf_core::EventSource): what every runner of the
//!   core follows on Kafka (views, process managers, change feeds), each
//!   partition's offset saved with the runner's state.
//! * [`KafkaDeadLetters`] sets what runners cannot read aside in a
//!   dead-letter topic.
//! * [`rule`] is the one rule every reader applies to decide which records
//!   are events of the log.
//!
//! ```no_run
//! use bookshelf_core::{EventStore, FileViewStore, ProjectionRunner, StreamId};
//! use bookshelf_kafka::{high_watermarks, members_from_discovery, KafkaConfig, KafkaDeadLetters, KafkaLog, KafkaStore};
//! # #[derive(Debug, Clone, serde::Serialize, serde::Deserialize)] enum BookEvent { BookRead { title: String } }
//! # impl bookshelf_core::DomainEvent for BookEvent {}
//! # #[derive(Default, serde::Serialize, serde::Deserialize)] struct Reads(u64);
//! # impl bookshelf_core::View for Reads { type Event = BookEvent; fn apply(&mut self, _: bookshelf_core::Envelope<BookEvent>) { self.0 += 1 } }
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let config = KafkaConfig::new("127.0.0.1:9092", "books").partitions(3).create_topic(true);
//!
//! // One instance of a service of several: the partitions are shared out
//! // among the healthy instances of "books" that discovery lists.
//! let discovery = bookshelf_core::InMemoryDiscovery::new();
//! let store = KafkaStore::builder(config.clone())
//!     .member("books-1", "http://127.0.0.1:8088")
//!     .members(members_from_discovery(discovery, "books", std::time::Duration::from_secs(1)))
//!     .state_file("data/books-1.sqlite")
//!     .open()
//!     .await?;
//! let book = StreamId::new("book-1");
//! if !store.owns(&book) {
//!     // Send the command to the owner, which its claim names.
//!     println!("book-1 is served by {:?}", store.owner_of(&book).map(|c| c.address));
//! }
//!
//! // A view, resuming from the offsets saved with its state.
//! let reads = ProjectionRunner::<Reads, _>::new("reads", KafkaLog::new(config.clone()))
//!     .persist_to(FileViewStore::new("reads.json"))
//!     .dead_letters(KafkaDeadLetters::open(&config).await?)
//!     .start();
//! reads.wait_for(&high_watermarks(&config, &["books"]).await?).await?;
//! println!("{} reads", reads.read(|r| r.0));
//! reads.stop().await?; // saves state and offsets
//! # Ok(()) }
//! ```
//!
//! ## Several writers on one topic
//!
//! Kafka transactions could fence a second writer, but not every broker
//! has them (tansu, which the tests run on, has none), so the store's
//! safety comes from the log itself:
//!
//! * **Ownership.** Each partition has one owner: the instance that
//!   rendezvous hashing ([`rendezvous_owner`]) picks among the instance ids
//!   discovery lists ([`members_from_discovery`]), or, for a store opened
//!   with [`KafkaStore::open`], the store itself. When instances come or go,
//!   only the partitions of those that came or went move.
//! * **Claims and epochs.** A new owner reads the partition to its end,
//!   writes a claim record with a higher epoch than any before it, and
//!   starts writing once it has read its own claim back. Every event it
//!   writes carries that epoch (header `bookshelf.epoch`).
//! * **The reader rule** ([`rule`]): in each partition, an event counts only
//!   if its epoch is that of the last valid claim before it. Every reader
//!   applies it: the store's own follower, [`KafkaLog`] (hence every runner
//!   of the core: views, process managers, change feeds) and
//!   [`KafkaSubscription`]. The verdict depends only on the log's order,
//!   so all readers agree on which events exist.
//! * **Answers.** An append is answered when its records are known to be
//!   events of the log: at once on their acknowledgement when every record
//!   since the owner's claim is its own (no other claim can stand between),
//!   otherwise when the follower has read them. An owner that lost its
//!   partition (paused, cut off, slow) never has an event accepted: what it
//!   still writes lands after the new owner's claim, every reader passes it
//!   over, and its caller gets an error
//!   ([`StoreError::Fenced`](bookshelf_core::StoreError::Fenced), or
//!   [`StoreError::NotOwner`](bookshelf_core::StoreError::NotOwner) once it
//!   has read the claim): nothing was stored, and the append may be sent
//!   again to the owner.
//!
//! What each fault does:
//!
//! | fault | what happens |
//! |---|---|
//! | an instance dies (SIGKILL) | discovery stops listing it (its TTL check lapses); the survivors claim its partitions, each after reading it to the end; commands for its books wait or are refused (503) meanwhile |
//! | an owner is paused and resumes (SIGSTOP, GC, a network cut) | it is taken over as if dead; when it resumes, what it writes under its old epoch is passed over, and each such append is refused; it steps down when it reads the new claim |
//! | an instance is cut off from the broker (its discovery agent still reachable) | the store's probe (every 0.5 s) hears nothing and [`KafkaStore::broker_silence`] grows; a service whose health check reads it (the `books` and `lending` services and the change feed fail their Consul check after half the check's TTL, at least 1 s) leaves discovery, and the others claim its partitions; its appends meanwhile end with their outcome unknown when the service's bound runs out (nothing acknowledged is lost: what lands before the new claim counts, what lands after is passed over) |
//! | two instances both believe they own a partition (discovery lists disagree) | both claim; the later claim wins; the other steps down and claims again only after `claim_backoff`, while discovery still names it |
//! | a send fails, or its acknowledgement is lost | the owner claims its partition again before writing more; whatever of the failed send lands after that claim is passed over; appends still waiting are answered by what the follower reads |
//! | the broker goes away and comes back (restarted, or every instance cut off) | appends fail or end with their outcome unknown meanwhile (librdkafka holds and retries what it could not send, up to its `message.timeout.ms`); every reader (the store's followers, `KafkaLog` and so every runner) waits, and goes on from where it was once the broker answers |
//! | the local state file is lost | it is rebuilt from the topic (a replay of the partition) |
//! | a record breaks the protocol (no stream key, on the wrong partition, a claim that does not parse) | reported with topic, partition, offset and the reason, and passed over; every runner dead-letters it |
//!
//! Not guaranteed: an append of several events is several records, so a
//! failure midway can leave the first ones in the log although the append
//! reports an error (one-event appends are all or nothing); a command whose
//! instance dies after writing and before answering has an unknown outcome
//! (the gateway answers 502, and the command may be in the log); reads are
//! as fresh as what the store has read, unless they wait behind
//! [`KafkaStore::read_barrier`], after which they show every event
//! acknowledged before it began; and a record
//! written outside Bookshelf after a partition was first claimed carries no
//! epoch and is passed over as stale.
//!
//! The tests run against tansu, a Kafka-compatible broker; what it does and
//! does not support, and how this crate works around it, is in the project
//! README.

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod barrier;
pub mod cloudevents;
mod config;
mod dead_letters;
mod local;
mod ownership;
mod partition;
mod reader;
pub mod rule;
mod source;
mod store;

pub use config::KafkaConfig;
pub use dead_letters::{dead_letter_headers, redrive_headers, KafkaDeadLetters};
pub use ownership::{members_from_discovery, rendezvous_owner};
pub use partition::partition_for;
pub use source::KafkaLog;
pub use store::{headers, high_watermarks, KafkaStore, KafkaStoreBuilder, KafkaSubscription, Member, PartitionOwner};
